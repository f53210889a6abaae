"""POST /webhooks: what the platform is answered, and what the router keeps (README.md).

202 means durably stored (accepted, duplicate or unroutable); every refusal is in the error
envelope; and when the event cannot be made durable the answer is 429 with Retry-After,
because the platform retries nothing else.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from router.http.app import create_app
from router.http.context import HISTORY, LEDGER
from router.storage.ledger import Ledger
from tests.conftest import make_settings
from tests.payloads import (
    APP_INSTALL,
    COMPANY_ID,
    CONTACT_UPDATE,
    LOCATION_ID,
    encode,
    platform_event,
)

JSON = {"Content-Type": "application/json"}


async def post(
    client: TestClient,
    body: dict[str, Any] | bytes,
    path: str = "/webhooks",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    data = encode(body) if isinstance(body, dict) else body
    resp = await client.post(path, data=data, headers={**JSON, **(headers or {})})
    return resp.status, await resp.json(), dict(resp.headers)


def assert_error(status: int, body: dict[str, Any], expected: int, code: str) -> None:
    assert status == expected, body
    assert list(body) == ["errors"]
    assert body["errors"], body
    for item in body["errors"]:
        assert isinstance(item["message"], str) and item["message"]
        assert item["extensions"]["code"] == code


async def stored_event(
    client: TestClient, admin_headers: dict[str, str], event_id: str
) -> dict[str, Any]:
    resp = await client.get(f"/v1/events/{event_id}", headers=admin_headers)
    assert resp.status == 200
    return await resp.json()


# ---------------------------------------------------------------- accepted


async def test_routable_event_is_accepted_with_its_event_id(client: TestClient) -> None:
    status, body, _ = await post(client, platform_event("ContactCreate"))
    assert status == 202
    assert body["status"] == "accepted"
    assert body["type"] == "ContactCreate"
    assert body["event_id"].startswith("evt_")


async def test_accepted_event_is_stored_with_its_routing_fields(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    payload = platform_event("ContactCreate", companyId=COMPANY_ID)
    _, body, _ = await post(client, payload)
    event = await stored_event(client, admin_headers, body["event_id"])
    assert event["id"] == body["event_id"]
    assert event["type"] == "ContactCreate"
    assert event["payload_type"] == "ContactCreate"
    assert event["status"] == "accepted"
    assert event["location_id"] == LOCATION_ID
    assert event["company_id"] == COMPANY_ID
    assert event["webhook_id"] == payload["webhookId"]
    assert event["received_at"].endswith("Z")
    assert event["payload"] == payload


async def test_json_content_type_with_charset_is_accepted(client: TestClient) -> None:
    headers = {"Content-Type": "application/json; charset=utf-8"}
    status, body, _ = await post(client, platform_event("NoteCreate"), headers=headers)
    assert (status, body["status"]) == (202, "accepted")


async def test_payload_type_alias_is_routed_by_its_event_name(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    status, body, _ = await post(client, platform_event("ConversationUnreadWebhook"))
    assert (status, body["status"], body["type"]) == (202, "accepted", "ConversationUnreadWebhook")
    event = await stored_event(client, admin_headers, body["event_id"])
    assert event["payload_type"] == "ConversationUnreadUpdate"


# ---------------------------------------------------------------- raw body


async def test_raw_body_is_stored_byte_for_byte(
    client: TestClient, app: web.Application, admin_headers: dict[str, str]
) -> None:
    raw = (
        b'{  "zeta" : 1,\n\t"type":"ContactCreate" ,"locationId":"' + LOCATION_ID.encode() + b'",'
        b'"name":"Z\\u00fcrich \\ud83d\\ude00","alpha":[ 1.50, 2e3 ,true ],'
        b'"\\u0074ext":"caf\xc3\xa9",  "n": -0.0e-0 }  \r\n'
    )
    status, body, _ = await post(client, raw)
    assert (status, body["status"]) == (202, "accepted")
    stored = await app[HISTORY].event(body["event_id"])
    assert stored is not None
    assert stored["body"] == raw
    event = await stored_event(client, admin_headers, body["event_id"])
    assert event["payload"] == json.loads(raw)
    assert list(event["payload"]) == ["zeta", "type", "locationId", "name", "alpha", "text", "n"]


async def test_stored_payload_keeps_integers_beyond_64_bits(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    raw = b'{"type": "OpportunityCreate", "monetaryValue": 123456789012345678901234567890}'
    _, body, _ = await post(client, raw)
    event = await stored_event(client, admin_headers, body["event_id"])
    assert event["payload"]["monetaryValue"] == 123456789012345678901234567890


# ---------------------------------------------------------------- duplicates


async def test_repeated_webhook_id_is_a_duplicate_of_the_first_event(client: TestClient) -> None:
    first = platform_event("ContactCreate")
    _, original, _ = await post(client, first)
    status, again, _ = await post(client, first)
    assert status == 202
    assert again == {
        "event_id": original["event_id"],
        "type": "ContactCreate",
        "status": "duplicate",
    }


async def test_duplicate_is_recognised_by_webhook_id_even_if_the_body_differs(
    client: TestClient,
) -> None:
    _, original, _ = await post(client, platform_event("TaskCreate", webhook_id="wh-fixed-1"))
    _, again, _ = await post(client, platform_event("TaskCreate", webhook_id="wh-fixed-1"))
    assert (again["status"], again["event_id"]) == ("duplicate", original["event_id"])


async def test_repeated_webhook_id_header_is_a_duplicate(client: TestClient) -> None:
    payload = platform_event("NoteCreate", envelope=False)
    headers = {"webhook-id": "msg_2mN8qTzW5xLp"}
    _, original, _ = await post(client, payload, headers=headers)
    status, again, _ = await post(client, payload, headers=headers)
    assert original["status"] == "accepted"
    assert (status, again["status"], again["event_id"]) == (
        202,
        "duplicate",
        original["event_id"],
    )


async def test_same_body_without_any_webhook_id_is_two_events(client: TestClient) -> None:
    payload = platform_event("NoteCreate", envelope=False)
    _, first, _ = await post(client, payload)
    _, second, _ = await post(client, payload)
    assert first["status"] == second["status"] == "accepted"
    assert first["event_id"] != second["event_id"]


async def test_distinct_webhook_ids_are_distinct_events(client: TestClient) -> None:
    _, first, _ = await post(client, platform_event("ContactCreate"))
    _, second, _ = await post(client, platform_event("ContactCreate"))
    assert first["status"] == second["status"] == "accepted"
    assert first["event_id"] != second["event_id"]


# ---------------------------------------------------------------- unroutable


@pytest.mark.parametrize(
    ("payload", "event"),
    [(CONTACT_UPDATE, "ContactUpdate"), (APP_INSTALL, "INSTALL")],
    ids=["ContactUpdate", "INSTALL"],
)
async def test_event_without_a_scope_is_stored_as_unroutable(
    client: TestClient, admin_headers: dict[str, str], payload: dict[str, Any], event: str
) -> None:
    status, body, _ = await post(client, {**payload, "webhookId": f"wh-{event}"})
    assert (status, body["status"], body["type"]) == (202, "unroutable", event)
    stored = await stored_event(client, admin_headers, body["event_id"])
    assert stored["status"] == "unroutable"
    assert stored["deliveries"] == []


async def test_unroutable_events_are_counted(client: TestClient) -> None:
    for _ in range(2):
        await post(client, CONTACT_UPDATE)
    await post(client, platform_event("ContactCreate"))
    resp = await client.get("/metrics")
    counted = [
        float(line.rsplit(" ", 1)[1])
        for line in (await resp.text()).splitlines()
        if line.startswith("router_events_received_total{") and 'status="unroutable"' in line
    ]
    assert sum(counted) == 2


async def test_provider_message_type_posted_to_plain_webhooks_is_unroutable(
    client: TestClient,
) -> None:
    payload = platform_event("ConversationProviderOutboundMessage")
    status, body, _ = await post(client, payload)
    assert (status, body["status"], body["type"]) == (202, "unroutable", "SMS")


# ---------------------------------------------------------------- /webhooks/{event_type}


async def test_path_names_the_event_when_the_payload_type_does_not(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    payload = platform_event("ConversationProviderOutboundMessage")
    path = "/webhooks/ConversationProviderOutboundMessage"
    status, body, _ = await post(client, payload, path=path)
    assert (status, body["status"]) == (202, "accepted")
    assert body["type"] == "ConversationProviderOutboundMessage"
    stored = await stored_event(client, admin_headers, body["event_id"])
    assert (stored["type"], stored["payload_type"]) == (
        "ConversationProviderOutboundMessage",
        "SMS",
    )


async def test_path_named_event_needs_no_type_in_the_payload(client: TestClient) -> None:
    payload = platform_event("ContactCreate")
    del payload["type"]
    status, body, _ = await post(client, payload, path="/webhooks/ContactCreate")
    assert (status, body["status"], body["type"]) == (202, "accepted", "ContactCreate")


async def test_path_naming_an_event_without_a_scope_is_unroutable(client: TestClient) -> None:
    payload = {"locationId": LOCATION_ID, "invoiceNumber": "INV-7731", "total": 120}
    status, body, _ = await post(client, payload, path="/webhooks/InvoiceCreate")
    assert (status, body["status"], body["type"]) == (202, "unroutable", "InvoiceCreate")


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"",
        b'{"type": "ContactCreate"',
        b"\xff\xfe\x00",
        b'{"type": "ContactCreate", "monetaryValue": NaN}',
    ],
    ids=["garbage", "empty", "truncated", "binary", "nan"],
)
async def test_body_that_is_not_json_is_400(client: TestClient, raw: bytes) -> None:
    status, body, _ = await post(client, raw)
    assert_error(status, body, 400, "BAD_REQUEST")


@pytest.mark.parametrize(
    "raw",
    [
        '{"type": "ContactCreate", "locationId": "x"}'.encode("utf-16"),
        b'{"type": "ContactCreate", "name": "\xed\xa0\x80"}',
    ],
    ids=["utf-16", "encoded-surrogate"],
)
async def test_body_that_is_not_utf8_is_400(client: TestClient, raw: bytes) -> None:
    # RFC 8259 s8.1: JSON between systems is UTF-8. A body accepted here could never be
    # signed for delivery (the signature is over the UTF-8 text).
    status, body, _ = await post(client, raw)
    assert_error(status, body, 400, "BAD_REQUEST")


@pytest.mark.parametrize(
    "raw",
    [b'[{"type": "ContactCreate"}]', b'"ContactCreate"', b"42", b"null"],
    ids=["array", "string", "number", "null"],
)
async def test_json_that_is_not_an_object_is_400(client: TestClient, raw: bytes) -> None:
    status, body, _ = await post(client, raw)
    assert_error(status, body, 400, "BAD_REQUEST")


async def test_body_over_the_limit_is_413(
    aiohttp_client: Any, redis: Redis, key_prefix: str
) -> None:
    client = await aiohttp_client(
        create_app(make_settings(key_prefix, max_body_bytes=256), redis=redis)
    )
    payload = platform_event("NoteCreate", body="x" * 300)
    status, body, _ = await post(client, payload)
    assert_error(status, body, 413, "PAYLOAD_TOO_LARGE")


async def test_chunked_body_over_the_limit_is_413(
    aiohttp_client: Any, redis: Redis, key_prefix: str
) -> None:
    client = await aiohttp_client(
        create_app(make_settings(key_prefix, max_body_bytes=256), redis=redis)
    )
    raw = encode(platform_event("NoteCreate", body="x" * 300))

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(raw), 64):
            yield raw[i : i + 64]

    resp = await client.post("/webhooks", data=chunks(), headers=JSON)
    assert "Content-Length" not in resp.request_info.headers
    assert_error(resp.status, await resp.json(), 413, "PAYLOAD_TOO_LARGE")


async def test_body_at_the_limit_is_accepted(
    aiohttp_client: Any, redis: Redis, key_prefix: str
) -> None:
    raw = encode(platform_event("NoteCreate"))
    client = await aiohttp_client(
        create_app(make_settings(key_prefix, max_body_bytes=len(raw)), redis=redis)
    )
    status, body, _ = await post(client, raw)
    assert (status, body["status"]) == (202, "accepted")


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
async def test_body_that_is_not_declared_json_is_415(client: TestClient, content_type: str) -> None:
    status, body, _ = await post(
        client, platform_event("ContactCreate"), headers={"Content-Type": content_type}
    )
    assert_error(status, body, 415, "UNSUPPORTED_MEDIA_TYPE")


async def test_payload_without_type_is_422_naming_the_field(client: TestClient) -> None:
    payload = platform_event("ContactCreate")
    del payload["type"]
    status, body, _ = await post(client, payload)
    assert_error(status, body, 422, "VALIDATION_FAILED")
    assert [item["extensions"]["field"] for item in body["errors"]] == ["type"]


@pytest.mark.parametrize("value", [7, None, True, ["ContactCreate"], {"name": "x"}, ""])
async def test_type_that_is_not_a_nonempty_string_is_422(client: TestClient, value: Any) -> None:
    status, body, _ = await post(client, platform_event("ContactCreate", type=value))
    assert_error(status, body, 422, "VALIDATION_FAILED")
    assert [item["extensions"]["field"] for item in body["errors"]] == ["type"]


# ---------------------------------------------------------------- cannot be made durable


async def test_redis_unreachable_is_429_with_retry_after(
    aiohttp_client: Any, key_prefix: str
) -> None:
    down = Redis.from_url("redis://127.0.0.1:1", socket_connect_timeout=0.2)
    try:
        client = await aiohttp_client(create_app(make_settings(key_prefix), redis=down))
        status, body, headers = await post(client, platform_event("ContactCreate"))
    finally:
        await down.aclose()
    assert_error(status, body, 429, "TOO_MANY_REQUESTS")
    assert int(headers["Retry-After"]) > 0


@pytest.mark.parametrize(
    "reply",
    [
        "OOM command not allowed when used memory > 'maxmemory'.",
        "READONLY You can't write against a read only replica.",
        "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist",
    ],
)
async def test_redis_refusing_writes_is_429_with_retry_after(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, reply: str
) -> None:
    async def refused(self: Ledger, event: object) -> None:
        raise ResponseError(reply)

    monkeypatch.setattr(Ledger, "accept", refused)
    status, body, headers = await post(client, platform_event("ContactCreate"))
    assert_error(status, body, 429, "TOO_MANY_REQUESTS")
    assert int(headers["Retry-After"]) > 0


def _backlogged_app(redis: Redis, key_prefix: str, share: int) -> web.Application:
    """An app whose every partition holds at most `share` undispatched events (the backlog
    bound is split evenly over the partitions)."""
    plain = create_app(make_settings(key_prefix), redis=redis)
    partitions = plain[LEDGER].keys.partitions
    return create_app(make_settings(key_prefix, max_backlog=share * partitions), redis=redis)


def _webhook_ids_of_one_partition(app: web.Application, n: int) -> list[str]:
    """Webhook ids whose events all land in partition 0."""
    keys = app[LEDGER].keys
    found: list[str] = []
    while len(found) < n:
        candidate = f"wh_{uuid.uuid4().hex}"
        if keys.partition_for(candidate) == 0:
            found.append(candidate)
    return found


async def test_backlog_over_the_limit_is_429_with_retry_after(
    aiohttp_client: Any, redis: Redis, key_prefix: str
) -> None:
    app = _backlogged_app(redis, key_prefix, share=2)
    client = await aiohttp_client(app)
    ids = _webhook_ids_of_one_partition(app, 3)
    for webhook_id in ids[:2]:
        status, body, _ = await post(client, platform_event("ContactCreate", webhook_id=webhook_id))
        assert (status, body["status"]) == (202, "accepted")
    status, body, headers = await post(client, platform_event("ContactCreate", webhook_id=ids[2]))
    assert_error(status, body, 429, "TOO_MANY_REQUESTS")
    assert int(headers["Retry-After"]) > 0


async def test_event_refused_for_backlog_is_not_remembered_as_seen(
    aiohttp_client: Any, redis: Redis, key_prefix: str
) -> None:
    app = _backlogged_app(redis, key_prefix, share=1)
    client = await aiohttp_client(app)
    first, second = _webhook_ids_of_one_partition(app, 2)
    await post(client, platform_event("ContactCreate", webhook_id=first))
    refused = platform_event("ContactCreate", webhook_id=second)
    status, _, _ = await post(client, refused)
    assert status == 429
    # The platform retries the same webhookId later; it must not be taken for a duplicate.
    await redis.delete(client.app[LEDGER].keys.events_stream(0))
    status, body, _ = await post(client, refused)
    assert (status, body["status"]) == (202, "accepted")
