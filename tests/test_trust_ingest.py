"""Ingest facing the real platform and a hostile internet (issue 13, ingest side).

Each class of hole has several members tried here: the platform's Ed25519-only signing with
the shipped key and overlapping keys; refusals that are counted, logged (rate-limited) and
visible in health; replays with no envelope fields; one request's malformed header failing
others; request data reaching logs or answered outside the envelope; events that loop back
from a router; accepted events that cannot be read back faithfully.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from redis.asyncio import Redis

from router.http.app import create_app
from router.http.server import RouterRunner
from router.http.verification import HighLevelVerifier, Refusal, RefusalMonitor, build_verifier
from router.logs import safe_traceback
from router.settings import SettingsError, load_settings
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.payloads import encode, platform_event
from tests.test_verification import (
    ED_KEY,
    INGEST_SECRET,
    OTHER_ED_KEY,
    RSA_KEY,
    ghl_signature,
    public_pem,
    standard_headers,
    wh_signature,
)

JSON = {"Content-Type": "application/json"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def post(client: TestClient, body: bytes, headers: dict[str, str] | None = None) -> Any:
    resp = await client.post("/webhooks", data=body, headers={**JSON, **(headers or {})})
    return resp.status, await resp.json()


async def highlevel_client(aiohttp_client: Any, redis: Redis, key_prefix: str, **kw: Any) -> Any:
    settings = make_settings(key_prefix, verify="highlevel", **kw)
    return await aiohttp_client(create_app(settings, redis=redis))


# ---------------------------------------------------------------- Ed25519, the shipped key


def test_default_highlevel_verification_uses_the_shipped_ed25519_key(key_prefix: str) -> None:
    verifier = build_verifier(make_settings(key_prefix, verify="highlevel"))
    assert isinstance(verifier, HighLevelVerifier)
    shipped = resources.files("router.data").joinpath("highlevel-ed25519-public-key.pem")
    expected = serialization.load_pem_public_key(shipped.read_bytes())
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert [k.public_bytes(*raw) for k in verifier.ed25519] == [expected.public_bytes(*raw)]
    assert len(verifier.rsa) == 1  # the legacy header still has its published key


def test_the_shipped_key_is_the_platforms_published_one() -> None:
    shipped = resources.files("router.data").joinpath("highlevel-ed25519-public-key.pem")
    assert "MCowBQYDK2VwAyEAi2HR1srL4o18O8BRa7gVJY7G7bupbN3H9AwJrHCDiOg=" in shipped.read_text()


async def test_default_configuration_refuses_a_body_not_signed_by_the_platform(
    aiohttp_client: Any, redis: Redis, key_prefix: str
) -> None:
    client = await highlevel_client(aiohttp_client, redis, key_prefix)
    body = encode(platform_event("ContactCreate"))
    status, answer = await post(client, body, ghl_signature(body, OTHER_ED_KEY))
    assert status == 401, answer


async def test_event_signed_only_with_x_ghl_signature_is_accepted(
    aiohttp_client: Any, redis: Redis, key_prefix: str
) -> None:
    client = await highlevel_client(
        aiohttp_client, redis, key_prefix, highlevel_ed25519_key=public_pem(ED_KEY)
    )
    body = encode(platform_event("ContactCreate", envelope=False))
    status, answer = await post(client, body, ghl_signature(body))
    assert (status, answer["status"]) == (202, "accepted")


@pytest.mark.parametrize("layout", ["concatenated", "comma-separated", "paths", "one-file"])
async def test_either_key_of_an_overlapping_rotation_is_accepted(
    aiohttp_client: Any, redis: Redis, key_prefix: str, tmp_path: Path, layout: str
) -> None:
    old, new = public_pem(ED_KEY), public_pem(OTHER_ED_KEY)
    (tmp_path / "old.pem").write_text(old)
    (tmp_path / "new.pem").write_text(new)
    (tmp_path / "both.pem").write_text(old + new)
    value = {
        "concatenated": old + new,
        "comma-separated": old + "," + new,
        "paths": f"{tmp_path / 'old.pem'}, {tmp_path / 'new.pem'}",
        "one-file": str(tmp_path / "both.pem"),
    }[layout]
    client = await highlevel_client(aiohttp_client, redis, key_prefix, highlevel_ed25519_key=value)
    for key in (ED_KEY, OTHER_ED_KEY):
        body = encode(platform_event("ContactCreate"))
        status, answer = await post(client, body, ghl_signature(body, key))
        assert status == 202, answer
    stranger = Ed25519PrivateKey.generate()
    body = encode(platform_event("ContactCreate"))
    assert (await post(client, body, ghl_signature(body, stranger)))[0] == 401


async def test_a_valid_ed25519_signature_is_enough_beside_a_wrong_rsa_one(
    aiohttp_client: Any, redis: Redis, key_prefix: str
) -> None:
    client = await highlevel_client(
        aiohttp_client, redis, key_prefix, highlevel_ed25519_key=public_pem(ED_KEY)
    )
    body = encode(platform_event("ContactCreate"))
    headers = {**ghl_signature(body), **wh_signature(body)}  # the RSA key is the default one
    assert (await post(client, body, headers))[0] == 202


async def test_a_valid_rsa_signature_is_accepted_when_the_ed25519_scheme_is_off(
    aiohttp_client: Any, redis: Redis, key_prefix: str
) -> None:
    client = await highlevel_client(
        aiohttp_client,
        redis,
        key_prefix,
        highlevel_ed25519_key="none",
        highlevel_rsa_key=public_pem(RSA_KEY),
    )
    body = encode(platform_event("ContactCreate"))
    headers = {**ghl_signature(body), **wh_signature(body)}
    assert (await post(client, body, headers))[0] == 202


@pytest.mark.parametrize(
    ("ed", "rsa", "named"),
    [
        ("not a key", None, "ROUTER_HIGHLEVEL_ED25519_KEY"),
        ("/nonexistent/key.pem", None, "ROUTER_HIGHLEVEL_ED25519_KEY"),
        (None, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "RSA_KEY"),
        (public_pem(RSA_KEY), None, "ROUTER_HIGHLEVEL_ED25519_KEY"),  # wrong kind of key
        ("none", "none", "ROUTER_HIGHLEVEL_ED25519_KEY"),
    ],
)
def test_unusable_keys_stop_start_up_naming_the_setting(
    key_prefix: str, ed: str | None, rsa: str | None, named: str
) -> None:
    settings = make_settings(
        key_prefix, verify="highlevel", highlevel_ed25519_key=ed, highlevel_rsa_key=rsa
    )
    with pytest.raises(SettingsError, match=named):
        build_verifier(settings)


# ---------------------------------------------------------------- refusals are loud


async def _metric(client: TestClient, reason: str) -> float:
    text = await (await client.get("/metrics")).text()
    match = re.search(rf'router_events_refused_total\{{reason="{reason}"\}} (\S+)', text)
    return float(match.group(1)) if match else 0.0


async def test_refusals_are_counted_by_reason_in_metrics(
    aiohttp_client: Any, redis: Redis, key_prefix: str
) -> None:
    client = await highlevel_client(
        aiohttp_client, redis, key_prefix, highlevel_ed25519_key=public_pem(ED_KEY)
    )
    body = encode(platform_event("ContactCreate"))
    await post(client, body)
    await post(client, body, ghl_signature(body, OTHER_ED_KEY))
    await post(client, body, {"x-ghl-signature": "not base64!"})
    await post(client, b"[1]", ghl_signature(b"[1]"))
    assert await _metric(client, "signature_missing") == 1
    assert await _metric(client, "signature_invalid") == 2
    assert await _metric(client, "malformed") == 1


async def test_health_says_ingest_is_failing_when_most_recent_events_are_refused(
    aiohttp_client: Any, redis: Redis, key_prefix: str
) -> None:
    client = await highlevel_client(aiohttp_client, redis, key_prefix)  # the shipped key
    for _ in range(6):
        body = encode(platform_event("ContactCreate"))
        assert (await post(client, body, ghl_signature(body)))[0] == 401
    for path in ("/healthz", "/readyz"):
        resp = await client.get(path)
        health = await resp.json()
        assert resp.status == 200  # forged floods must not take instances out of rotation
        assert health["status"] == "degraded"
        assert health["checks"]["ingest"]["status"] == "failing"
        assert "signature_invalid: 6" in health["checks"]["ingest"]["detail"]


async def test_health_is_ok_when_refusals_are_a_minority(
    aiohttp_client: Any, redis: Redis, key_prefix: str
) -> None:
    client = await highlevel_client(
        aiohttp_client, redis, key_prefix, highlevel_ed25519_key=public_pem(ED_KEY)
    )
    for _ in range(10):
        body = encode(platform_event("ContactCreate"))
        assert (await post(client, body, ghl_signature(body)))[0] == 202
    for _ in range(6):
        body = encode(platform_event("ContactCreate"))
        assert (await post(client, body))[0] == 401
    health = await (await client.get("/healthz")).json()
    assert health == {"status": "ok", "checks": {"ingest": {"status": "ok", "detail": None}}}


def test_the_monitor_counts_every_outcome_in_its_window() -> None:
    monitor = RefusalMonitor(window=60)
    for _ in range(7):
        monitor.accepted()
    for reason in ["signature_invalid"] * 3 + ["malformed"] * 2:
        monitor.refused(Refusal(reason, "x"))
    state = monitor.state()
    assert (state.accepted, state.refused, state.failing) == (7, 5, False)
    assert state.reasons == {"signature_invalid": 3, "malformed": 2}
    for _ in range(3):
        monitor.refused(Refusal("timestamp_stale", "x"))
    assert monitor.state().failing  # 8 refused against 7 accepted


def test_accepted_events_older_than_the_window_no_longer_count() -> None:
    monitor = RefusalMonitor(window=1)
    for _ in range(20):
        monitor.accepted()
    for _ in range(6):
        monitor.refused(Refusal("signature_invalid", "x"))
    assert not monitor.state().failing
    time.sleep(1.1)
    for _ in range(6):
        monitor.refused(Refusal("signature_invalid", "x"))
    state = monitor.state()
    assert (state.accepted, state.refused, state.failing) == (0, 6, True)


def test_refusals_older_than_the_window_no_longer_count() -> None:
    monitor = RefusalMonitor(window=1)
    for _ in range(10):
        monitor.refused(Refusal("signature_invalid", "x"))
    assert monitor.state().failing
    time.sleep(1.1)
    assert not monitor.state().failing


async def test_refusals_are_logged_at_most_once_per_period_without_request_data(
    aiohttp_client: Any, redis: Redis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    client = await highlevel_client(aiohttp_client, redis, key_prefix)
    signatures = []
    for _ in range(30):
        body = encode(platform_event("ContactCreate", secretField="s3cr3t-body-fragment"))
        headers = ghl_signature(body, OTHER_ED_KEY)
        signatures.append(headers["x-ghl-signature"])
        await post(client, body, headers)
    lines = [r for r in caplog.records if r.name == "router.verification"]
    assert len(lines) == 1
    assert "refused 1" in lines[0].getMessage()  # the first is reported at once
    text = caplog.text
    assert "s3cr3t-body-fragment" not in text
    assert not [s for s in signatures if s in text]


# ---------------------------------------------------------------- replays without envelope


@pytest.mark.parametrize("scheme", ["highlevel", "standard"])
async def test_a_replayed_signed_body_without_webhook_id_or_timestamp_is_a_duplicate(
    aiohttp_client: Any, redis: Redis, key_prefix: str, scheme: str
) -> None:
    settings = make_settings(
        key_prefix,
        verify=scheme,
        highlevel_ed25519_key=public_pem(ED_KEY),
        ingest_secret=INGEST_SECRET,
    )
    client = await aiohttp_client(create_app(settings, redis=redis))
    body = encode(platform_event("ContactCreate", envelope=False))

    def signed(msg_id: str) -> dict[str, str]:
        if scheme == "highlevel":
            return ghl_signature(body)
        return standard_headers(body, msg_id=msg_id)

    first = await post(client, body, signed("msg_a"))
    # For Standard Webhooks an attacker can re-sign nothing, but the sender's own retry
    # carries a new message id; the body is what was signed either way.
    again = await post(client, body, signed("msg_b"))
    assert first[0] == again[0] == 202
    assert (first[1]["status"], again[1]["status"]) == ("accepted", "duplicate")
    assert again[1]["event_id"] == first[1]["event_id"]


async def test_a_different_signed_body_is_not_a_duplicate(
    aiohttp_client: Any, redis: Redis, key_prefix: str
) -> None:
    client = await highlevel_client(
        aiohttp_client, redis, key_prefix, highlevel_ed25519_key=public_pem(ED_KEY)
    )
    one = encode(platform_event("ContactCreate", envelope=False, id="c1"))
    two = encode(platform_event("ContactCreate", envelope=False, id="c2"))
    answers = [await post(client, b, ghl_signature(b)) for b in (one, two)]
    assert [a[1]["status"] for a in answers] == ["accepted", "accepted"]


async def test_without_verification_identical_bodies_are_separate_events(
    client: TestClient,
) -> None:
    body = encode(platform_event("ContactCreate", envelope=False))
    answers = [await post(client, body) for _ in range(2)]
    assert [a[1]["status"] for a in answers] == ["accepted", "accepted"]


# ---------------------------------------------------------------- one request, one outcome


async def _raw_request(port: int, head: bytes, body: bytes = b"") -> tuple[int, bytes, bytes]:
    """Send raw bytes as one HTTP/1.1 request; (status, headers, body) of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head_part, _, rest = raw.partition(b"\r\n\r\n")
    status = int(head_part.split(b" ", 2)[1])
    return status, head_part, rest


def _post_head(path: str, body: bytes, *extra: bytes) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1".encode(),
        b"Host: 127.0.0.1",
        b"Content-Type: application/json",
        f"Content-Length: {len(body)}".encode(),
        b"Connection: close",
        *extra,
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


@pytest.fixture
async def enveloped(redis: Redis, key_prefix: str) -> AsyncIterator[int]:
    """The app served by the runner `serve` uses, on a free port."""
    runner = RouterRunner(
        create_app(make_settings(key_prefix), redis=redis), access_log=None, handle_signals=False
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


BAD_HEADERS = [
    pytest.param(b"webhook-id: \xff\xfe-not-utf8", id="webhook-id-not-utf8"),
    pytest.param(b"webhook-id: caf\xc3\xa9", id="webhook-id-non-ascii"),
    pytest.param(b"webhook-id: " + b"a" * 600, id="webhook-id-too-long"),
    pytest.param(b"webhook-id: a\x01b", id="webhook-id-control"),
]


@pytest.mark.parametrize("header", BAD_HEADERS)
async def test_a_malformed_webhook_id_header_is_a_400_for_that_request(
    enveloped: int, header: bytes
) -> None:
    body = encode(platform_event("ContactCreate"))
    status, head, answer = await _raw_request(
        enveloped, _post_head("/webhooks", body, header), body
    )
    assert status == 400, answer
    assert b"application/json" in head
    assert json.loads(answer)["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


async def test_malformed_headers_do_not_fail_the_events_batched_with_them(
    client: TestClient,
) -> None:
    port = client.server.port

    # Each a header the HTTP layer or ingest reads: an undecodable webhook id, an `Expect`
    # aiohttp answers before any middleware, a body encoding that cannot be decoded.
    bad_headers = [
        (b"webhook-id: \xff", 400),
        (b"Expect: \xff\xfe", 417),
        (b"Expect: 200-ok", 417),
        (b"Content-Encoding: gzip", 400),
        (b"Content-Encoding: deflate", 400),
    ]

    async def bad(i: int) -> tuple[int, int]:
        header, expected = bad_headers[i % len(bad_headers)]
        body = b"not-deflated " + str(i).encode()
        head = _post_head("/webhooks", body, header)
        return (await _raw_request(port, head, body))[0], expected

    async def good() -> tuple[int, int]:
        return (await post(client, encode(platform_event("ContactCreate"))))[0], 202

    results = await asyncio.gather(*(bad(i) if i % 3 == 0 else good() for i in range(90)))
    assert [status for status, _ in results] == [expected for _, expected in results]


@pytest.mark.parametrize(
    ("path", "header", "expected"),
    [
        ("/webhooks", b"x-ghl-signature: \xff\xfe", 401),
        ("/webhooks", b"Content-Type: application/\xffjson", 415),
        ("/v1/subscribers", b"Authorization: Bearer \xff\xfe\xfd", 401),
    ],
)
async def test_undecodable_header_values_are_a_4xx_never_a_5xx(
    aiohttp_client: Any, redis: Redis, key_prefix: str, path: str, header: bytes, expected: int
) -> None:
    settings = make_settings(key_prefix, verify="highlevel")
    client = await aiohttp_client(create_app(settings, redis=redis))
    body = encode(platform_event("ContactCreate"))
    head = _post_head(path, body, header)
    if header.startswith(b"Content-Type"):
        head = head.replace(b"Content-Type: application/json\r\n", b"", 1)
    status, _, answer = await _raw_request(client.server.port, head, body)
    assert status == expected, answer


# ---------------------------------------------------------------- loops


# Every header only a router's delivery carries, in the spellings gateways turn them into.
ROUTER_MARKS = [
    {"X-Router-Event-Id": "evt_01abc"},
    {"X-Router-Event-Id": "anything"},
    {"x-router-event-id": "evt_01abc"},
    {"X_Router_Event_Id": "evt_01abc"},
    {"X-ROUTER-EVENT": "ContactCreate"},
    {"X-Router-Attempt": "1"},
    {"x_router_attempt": "3"},
    {"User-Agent": "webhook-router/0.1"},
    {"User-Agent": "Webhook-Router/9.9 (relayed)"},
]


async def test_an_event_delivered_by_a_router_is_refused_with_410(client: TestClient) -> None:
    body = encode(platform_event("ContactCreate"))
    for headers in ROUTER_MARKS:
        status, answer = await post(client, body, headers)
        assert status == 410, headers
        assert answer["errors"][0]["extensions"]["code"] == "LOOP_DETECTED"
    resp = await client.get("/metrics")
    assert (
        f'router_events_refused_total{{reason="loop"}} {len(ROUTER_MARKS)}.0' in await resp.text()
    )
    # Neighbours of the marks are not marks.
    for headers in ({"X-Router": "1"}, {"X-Router-Event-Ids": "1"}, {"User-Agent": "router/1"}):
        status, _ = await post(client, encode(platform_event("ContactCreate")), headers)
        assert status == 202, headers


async def test_a_subscriber_pointed_at_this_routers_ingest_does_not_amplify(
    aiohttp_client: Any, redis: Redis, key_prefix: str
) -> None:
    settings = make_settings(key_prefix, retry_schedule=(0.1, 0.1))
    client = await aiohttp_client(create_app(settings, redis=redis, run_workers=True))
    url = f"http://127.0.0.1:{client.server.port}/webhooks"  # not this process's ROUTER_PORT
    resp = await client.post(
        "/v1/subscribers",
        json={"name": "loop", "url": url, "scopes": ["contacts.readonly"]},
        headers=ADMIN,
    )
    assert resp.status == 201, await resp.text()
    sub = await resp.json()
    first = (await post(client, encode(platform_event("ContactCreate"))))[1]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        event = await (await client.get(f"/v1/events/{first['event_id']}", headers=ADMIN)).json()
        if event["deliveries"] and event["deliveries"][0]["status"] == "dead":
            break
        await asyncio.sleep(0.1)
    (delivery,) = event["deliveries"]
    assert delivery["status"] == "dead"
    assert delivery["last_status_code"] == 410
    current = await (await client.get(f"/v1/subscribers/{sub['id']}", headers=ADMIN)).json()
    assert current["status"] == "disabled"
    await asyncio.sleep(0.5)
    assert 'reason="loop"} 1.0' in await (await client.get("/metrics")).text()
    stream = await redis.xlen(f"{{{key_prefix}}}:events")
    assert stream <= 1


# ---------------------------------------------------------------- faithful read-back


FAITHFUL = [
    pytest.param(b'{"type":"ContactCreate","n":123456789012345678901234567890}', id="bigint"),
    pytest.param(b'{"type":"ContactCreate","n":-0.0,"m":1.50}', id="number-spelling"),
    pytest.param(b'{"type":"ContactCreate","a":1,"a":2}', id="duplicate-keys"),
    pytest.param(b'{"type":"ContactCreate","x":1e-999999}', id="underflow"),
    pytest.param('{"type":"ContactCreate","s":"\u00e9\U0001f600\\u00e9"}'.encode(), id="unicode"),
    pytest.param(b'{"type":"ContactCreate","d":' + b"[" * 100 + b"]" * 100 + b"}", id="depth-100"),
]


@pytest.mark.parametrize("body", FAITHFUL)
async def test_an_accepted_event_reads_back_byte_for_byte(client: TestClient, body: bytes) -> None:
    status, answer = await post(client, body)
    assert status == 202, answer
    resp = await client.get(f"/v1/events/{answer['event_id']}", headers=ADMIN)
    assert resp.status == 200
    raw = await resp.read()
    assert raw.endswith(b',"payload":' + body + b"}")
    assert json.loads(raw)["id"] == answer["event_id"]


UNREPRESENTABLE = [
    pytest.param(b'{"type":"ContactCreate","x":1e999}', id="overflow"),
    pytest.param(b'{"type":"ContactCreate","x":-1e999}', id="negative-overflow"),
    pytest.param(b'{"type":"ContactCreate","x":"\\ud800"}', id="lone-high-surrogate"),
    pytest.param(b'{"type":"ContactCreate","x":"a\\udc00b"}', id="lone-low-surrogate"),
    pytest.param(b'{"type":"ContactCreate","\\ud83d":1}', id="surrogate-in-a-key"),
    pytest.param(b'{"type":"ContactCreate","d":' + b"[" * 900 + b"]" * 900 + b"}", id="depth-900"),
    pytest.param(
        b'{"type":"ContactCreate","d":' + b'{"a":' * 200 + b"1" + b"}" * 200 + b"}", id="depth-200"
    ),
]


@pytest.mark.parametrize("body", UNREPRESENTABLE)
async def test_an_event_that_could_not_read_back_faithfully_is_refused(
    client: TestClient, body: bytes
) -> None:
    status, answer = await post(client, body)
    assert status == 400, answer
    assert answer["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


@pytest.mark.parametrize(
    ("field", "value"),
    [("type", "X" * 10_000), ("locationId", "L" * 2000), ("webhookId", "w" * 600)],
)
async def test_an_oversized_routing_field_is_a_422_naming_it(
    client: TestClient, field: str, value: str
) -> None:
    payload = platform_event("ContactCreate")
    payload[field] = value
    status, answer = await post(client, encode(payload))
    assert status == 422, answer
    assert answer["errors"][0]["extensions"]["field"] == field


# ---------------------------------------------------------------- nothing of a request in logs


def test_a_logged_traceback_withholds_what_an_exception_quotes() -> None:
    token = "-".join(("sekret", "token"))  # built at run time: tracebacks quote source lines
    try:
        try:
            f"Authorization: Bearer {token}\udc80".encode("ascii")
        except UnicodeError as inner:
            raise RuntimeError(f"wrapped {token}") from inner
    except RuntimeError as exc:
        text = safe_traceback((type(exc), exc, exc.__traceback__))
    assert token not in text
    assert "UnicodeEncodeError" in text and "RuntimeError" in text
    assert "test_trust_ingest.py" in text


def test_a_logged_traceback_keeps_the_text_of_connection_errors() -> None:
    try:
        raise ConnectionRefusedError(111, "Connection refused")
    except OSError as exc:
        assert "Connection refused" in safe_traceback((type(exc), exc, exc.__traceback__))


MALFORMED = [
    pytest.param(b"GET /v1/subscribers HTTP/1.1\r\nAuthorization Bearer {t}\r\n\r\n", id="colon"),
    pytest.param(
        b"GET /v1/sub\x00scribers HTTP/1.1\r\nAuthorization: Bearer {t}\r\n\r\n", id="nul"
    ),
    pytest.param(b"POST /webhooks HTTP/9.9\r\nAuthorization: Bearer {t}\r\n\r\n", id="version"),
    pytest.param(b"GET / HTTP/1.1\r\nX-A: " + b"v" * 9000 + b"\r\nAuth: {t}\r\n\r\n", id="long"),
    pytest.param(
        b"POST /webhooks HTTP/1.1\r\nAuthorization: Bearer {t}\r\nContent-Length: 5\r\n"
        b"Content-Length: 6\r\n\r\nBODYFRAG",
        id="two-lengths",
    ),
    pytest.param(
        b"POST /webhooks HTTP/1.1\r\nTransfer-Encoding: chunked\r\nAuthorization: Bearer {t}"
        b"\r\n\r\nzz\r\nBODYFRAG\r\n",
        id="bad-chunk",
    ),
    # aiohttp answers `Expect` before any middleware, by default in text/plain quoting it,
    # and with a 500 when it is not UTF-8; the route's own or an unknown route.
    pytest.param(
        b"POST /webhooks HTTP/1.1\r\nHost: x\r\nExpect: BODYFRAG {t}\r\nContent-Length: 2\r\n"
        b"Connection: close\r\n\r\n{}",
        id="expect-unknown",
    ),
    pytest.param(
        b"POST /v1/subscribers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n"
        b"Expect: \xffBODYFRAG\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        id="expect-not-utf8",
    ),
    pytest.param(
        b"POST /no-such-route HTTP/1.1\r\nHost: x\r\nExpect: BODYFRAG {t}\r\nContent-Length: 2\r\n"
        b"Connection: close\r\n\r\n{}",
        id="expect-unknown-route",
    ),
    pytest.param(
        b"PUT /no-such-route HTTP/1.1\r\nHost: x\r\nExpect: \xfe{t}\r\nContent-Length: 2\r\n"
        b"Connection: close\r\n\r\n{}",
        id="expect-not-utf8-unknown-route",
    ),
    # A body aiohttp cannot decode surfaces when the handler reads it, not while parsing.
    pytest.param(
        b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Encoding: gzip\r\nAuthorization: Bearer {t}\r\nContent-Length: 8\r\n"
        b"Connection: close\r\n\r\nBODYFRAG",
        id="gzip-corrupt",
    ),
    pytest.param(
        b"POST /v1/api-keys HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Encoding: deflate\r\nAuthorization: Bearer {t}\r\nContent-Length: 8\r\n"
        b"Connection: close\r\n\r\nBODYFRAG",
        id="deflate-corrupt",
    ),
]


@pytest.mark.parametrize("request_bytes", MALFORMED)
async def test_a_malformed_request_is_answered_in_the_envelope_and_logged_without_its_bytes(
    enveloped: int, request_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    raw = request_bytes.replace(b"{t}", ADMIN_TOKEN.encode())
    status, head, body = await _raw_request(enveloped, raw)
    assert 400 <= status < 500
    assert b"application/json" in head.lower()
    assert json.loads(body)["errors"][0]["extensions"]["code"]
    assert ADMIN_TOKEN.encode() not in body and b"BODYFRAG" not in body
    logged = caplog.text + "".join(f"{r.getMessage()}{r.args!r}" for r in caplog.records)
    assert ADMIN_TOKEN not in logged
    assert "BODYFRAG" not in logged


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _router() -> list[str]:
    script = Path(sys.executable).parent / "webhook-router"
    return [str(script)] if script.exists() else [sys.executable, "-m", "router"]


async def test_the_real_server_logs_nothing_of_malformed_requests() -> None:
    port = _free_port()
    env = {**os.environ, "ROUTER_PORT": str(port), "ROUTER_ADMIN_TOKEN": ADMIN_TOKEN}
    env.pop("REDIS_URL", None)
    env["ROUTER_LOG_LEVEL"] = "debug"
    proc = subprocess.Popen(
        [*_router(), "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                await _raw_request(port, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
                break
            except OSError:
                assert time.monotonic() < deadline, "serve did not start"
                await asyncio.sleep(0.1)
        for param in MALFORMED:
            raw = param.values[0].replace(b"{t}", ADMIN_TOKEN.encode())
            status, head, _ = await _raw_request(port, raw)
            assert 400 <= status < 500 and b"application/json" in head.lower()
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=20)
    assert b"refused a malformed HTTP request" in output
    assert ADMIN_TOKEN.encode() not in output
    assert b"BODYFRAG" not in output
    # A record that fails to format is printed raw by `logging` (its arguments included).
    assert b"Logging error" not in output
    assert b'"level":"error"' not in output


# ---------------------------------------------------------------- the admin token


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "must not be empty"),
        ("a", "at least 16"),
        ("short-token", "at least 16"),
        ("  padded-token-0123456789  ", "spaces"),
        ("tab\tinside-token-0123456789", "control"),
        # Clients send non-ASCII header bytes differently (or not at all).
        ("token-with-\u00e9-0123456789", "visible ASCII"),
        ("token with inner spaces 0123", "visible ASCII"),
        ("token-\u200b-zero-width-0123456", "control"),
        ("t" * 4097, "at most 4096"),
    ],
)
def test_a_weak_or_empty_admin_token_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", value)
    with pytest.raises(SettingsError, match=f"ROUTER_ADMIN_TOKEN: .*{problem}"):
        load_settings()


def test_a_weak_admin_token_stops_serve_with_one_line() -> None:
    env = {**os.environ, "ROUTER_ADMIN_TOKEN": "a"}
    done = subprocess.run([*_router(), "serve"], env=env, capture_output=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.decode().strip().splitlines() == [
        "error: ROUTER_ADMIN_TOKEN: must be at least 16 characters long"
    ]


async def test_an_operator_request_while_the_store_is_down_is_503_with_retry_after(
    aiohttp_client: Any, key_prefix: str
) -> None:
    dead = Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.2)  # nothing there
    client = await aiohttp_client(create_app(make_settings(key_prefix), redis=dead))
    resp = await client.get("/v1/subscribers", headers=ADMIN)
    assert resp.status == 503
    assert int(resp.headers["Retry-After"]) > 0
    assert (await resp.json())["errors"][0]["extensions"]["code"] == "UNAVAILABLE"
    ingest = await client.post("/webhooks", json=platform_event("ContactCreate"))
    assert ingest.status == 429  # the platform retries only 429
