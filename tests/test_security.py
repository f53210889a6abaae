"""Security properties: the SSRF guard (also at delivery time, against DNS rebinding),
constant-time comparisons, no secret in any log line, request size limits, slow clients, and
replayed signed requests.

(Tokens stored only as hashes: tests/test_api_keys.py. Every route refusing missing, unknown,
revoked and out-of-scope tokens: tests/test_auth.py. A replay with the same webhookId is
delivered once: tests/test_verification.py.)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from redis.asyncio import Redis

import router.http.verification
from router.core.targets import address_refusal
from router.http.app import create_app
from router.http.context import SETTINGS
from router.pipeline.targets import GuardedResolver, TargetRefused, url_refusal
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.payloads import encode, platform_event
from tests.receivers import Receiver

# ---------------------------------------------------------------- SSRF: literal addresses

REFUSED_ADDRESSES = [
    # loopback
    "127.0.0.1",
    "127.255.255.254",
    "::1",
    # private
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.0.1",
    "192.168.255.255",
    "fc00::1",
    "fd12:3456:789a::1",
    "fd00:ec2::254",  # AWS IPv6 instance metadata
    # link-local, including the cloud metadata address
    "169.254.0.1",
    "169.254.169.254",
    "fe80::1",
    "fe80::1%eth0",
    # multicast
    "224.0.0.1",
    "239.255.255.250",
    "ff02::1",
    # unspecified
    "0.0.0.0",
    "::",
    # IPv4-mapped and 6to4 IPv6 forms of internal IPv4 addresses
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:192.168.1.1",
    "2002:7f00:1::",
    # NAT64 and IPv4-compatible forms
    "64:ff9b::7f00:1",
    "::127.0.0.1",
    # reserved / broadcast / "this network"
    "240.0.0.1",
    "255.255.255.255",
    "0.1.2.3",
]

PUBLIC_ADDRESSES = ["8.8.8.8", "93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"]


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
def test_internal_address_is_refused(address: str) -> None:
    assert address_refusal(address) is not None


@pytest.mark.parametrize("address", PUBLIC_ADDRESSES)
def test_public_address_is_allowed(address: str) -> None:
    assert address_refusal(address) is None


@pytest.mark.parametrize("address", ["100.64.0.1", "100.100.100.200", "100.127.255.254"])
def test_shared_address_space_is_refused(address: str) -> None:
    assert address_refusal(address) is not None


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
async def test_url_with_internal_literal_host_is_refused(address: str) -> None:
    host = f"[{address}]" if ":" in address else address
    assert await url_refusal(f"https://{host}:8443/hook", allow_private=False) is not None


# IPv6 forms embedding a dotted quad are not the address's one spelling: refused even when
# private targets are allowed (tests/test_trust_urls.py).
CANONICAL_REFUSED_ADDRESSES = [a for a in REFUSED_ADDRESSES if not ("." in a and ":" in a)]


@pytest.mark.parametrize("address", CANONICAL_REFUSED_ADDRESSES)
async def test_url_with_internal_literal_host_is_allowed_with_allow_private(address: str) -> None:
    host = f"[{address.split('%')[0]}]" if ":" in address else address
    assert await url_refusal(f"https://{host}/hook", allow_private=True) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost/hook",
        "http://127.1/hook",
        "http://2130706433/hook",
        "http://0x7f000001/hook",
        "http://017700000001/hook",
    ],
)
async def test_alternative_spellings_of_loopback_are_refused(url: str) -> None:
    assert await url_refusal(url, allow_private=False) is not None


# ---------------------------------------------------------------- SSRF: names and rebinding


class FakeDns:
    """`socket.getaddrinfo` that answers for names ending in `.rebind.test` with whatever
    `address` is set to now, and defers to the real resolver for everything else."""

    def __init__(self, real: Callable[..., Any], address: str) -> None:
        self.real = real
        self.address = address
        self.lookups: list[str] = []

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if not (isinstance(name, str) and name.endswith(".rebind.test")):
            return self.real(host, port, *args, **kwargs)
        self.lookups.append(name)
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        sockaddr: tuple[Any, ...] = (self.address, int(port or 0))
        if family == socket.AF_INET6:
            sockaddr = (self.address, int(port or 0), 0, 0)
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)]


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    dns = FakeDns(socket.getaddrinfo, "93.184.216.34")
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    return dns


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "169.254.169.254", "::1"])
async def test_name_resolving_to_an_internal_address_is_refused_at_registration(
    fake_dns: FakeDns, address: str
) -> None:
    fake_dns.address = address
    reason = await url_refusal("https://hook.rebind.test/x", allow_private=False)
    assert reason is not None and address.split("%")[0] in reason


async def test_name_resolving_to_a_public_address_is_allowed_at_registration(
    fake_dns: FakeDns,
) -> None:
    assert await url_refusal("https://hook.rebind.test/x", allow_private=False) is None


async def test_guarded_resolver_refuses_a_name_that_now_resolves_internally(
    fake_dns: FakeDns,
) -> None:
    resolver = GuardedResolver(allow_private=False)
    try:
        assert (await resolver.resolve("hook.rebind.test", 443))[0]["host"] == "93.184.216.34"
        fake_dns.address = "127.0.0.1"
        with pytest.raises(TargetRefused):
            await resolver.resolve("hook.rebind.test", 443)
    finally:
        await resolver.close()


async def _delivery_of(client: TestClient, sub_id: str, deadline: float = 10.0) -> dict[str, Any]:
    """The subscriber's one delivery, once it has had at least one attempt."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    stop = time.monotonic() + deadline
    while time.monotonic() < stop:
        listed = await client.get(f"/v1/deliveries?subscriber_id={sub_id}", headers=headers)
        items = (await listed.json())["items"]
        if items and items[0]["attempt_count"] >= 1:
            detail = await client.get(f"/v1/deliveries/{items[0]['id']}", headers=headers)
            return await detail.json()
        await asyncio.sleep(0.1)
    raise AssertionError(f"no attempted delivery for {sub_id} within {deadline}s")


@contextlib.asynccontextmanager
async def _rebinding_run(
    aiohttp_client: Any, redis: Redis, key_prefix: str, fake_dns: FakeDns, allow_private: bool
) -> AsyncIterator[tuple[Receiver, dict[str, Any]]]:
    """A subscriber registered while its host is public, then re-pointed at loopback: the
    receiver on loopback, and the delivery once attempted."""
    settings = make_settings(
        key_prefix, allow_private_targets=allow_private, retry_schedule=(30.0,)
    )
    client = await aiohttp_client(create_app(settings, redis=redis, run_workers=True))
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with Receiver() as receiver:
        port = receiver.base_url.rsplit(":", 1)[1]
        fake_dns.address = "93.184.216.34"  # public while the operator registers it
        created = await client.post(
            "/v1/subscribers",
            json={
                "name": "rebinder",
                "url": f"http://hook.rebind.test:{port}/hook",
                "scopes": ["contacts.readonly"],
            },
            headers=headers,
        )
        assert created.status == 201, await created.text()
        fake_dns.address = "127.0.0.1"  # ... and re-pointed at the router's own host after
        accepted = await client.post("/webhooks", json=platform_event("ContactCreate"))
        assert accepted.status == 202
        yield receiver, await _delivery_of(client, (await created.json())["id"])


async def test_dns_rebinding_to_loopback_is_refused_at_delivery(
    aiohttp_client: Any, redis: Redis, key_prefix: str, fake_dns: FakeDns
) -> None:
    async with _rebinding_run(aiohttp_client, redis, key_prefix, fake_dns, allow_private=False) as (
        receiver,
        delivery,
    ):
        assert delivery["status"] != "succeeded"
        assert delivery["attempts"][0]["status_code"] is None
        await asyncio.sleep(0.3)
        assert receiver.requests() == []


async def test_dns_rebinding_refusal_names_the_refused_target(
    aiohttp_client: Any, redis: Redis, key_prefix: str, fake_dns: FakeDns
) -> None:
    async with _rebinding_run(aiohttp_client, redis, key_prefix, fake_dns, allow_private=False) as (
        _,
        delivery,
    ):
        error = delivery["attempts"][0]["error"]
        assert "refused target" in error and "127.0.0.1" in error


async def test_dns_rebinding_to_loopback_is_delivered_with_allow_private_targets(
    aiohttp_client: Any, redis: Redis, key_prefix: str, fake_dns: FakeDns
) -> None:
    async with _rebinding_run(aiohttp_client, redis, key_prefix, fake_dns, allow_private=True) as (
        receiver,
        delivery,
    ):
        assert delivery["status"] == "succeeded"
        assert len(receiver.requests("/hook")) == 1


# ---------------------------------------------------------------- constant-time comparison


@pytest.fixture
def compare_spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """Every call of `hmac.compare_digest` (router.auth and standardwebhooks look it up on
    the module at call time, so replacing the module attribute sees them)."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    return calls


@pytest.mark.parametrize("token", [ADMIN_TOKEN, ADMIN_TOKEN[:-1] + "X", "short"])
async def test_admin_token_is_compared_in_constant_time(
    client: TestClient, compare_spy: list[tuple[bytes, bytes]], token: str
) -> None:
    await client.get("/v1/subscribers", headers={"Authorization": f"Bearer {token}"})
    assert (token.encode(), ADMIN_TOKEN.encode()) in compare_spy


async def test_standard_webhooks_signature_is_compared_in_constant_time(
    aiohttp_client: Any,
    redis: Redis,
    key_prefix: str,
    compare_spy: list[tuple[bytes, bytes]],
) -> None:
    from standardwebhooks import Webhook

    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    settings = make_settings(key_prefix, verify="standard", ingest_secret=secret)
    client = await aiohttp_client(create_app(settings, redis=redis))
    body = encode(platform_event("ContactCreate"))
    now = int(time.time())
    signature = Webhook(secret).sign("msg_ct", router_time(now), body.decode())
    headers = {
        "Content-Type": "application/json",
        "webhook-id": "msg_ct",
        "webhook-timestamp": str(now),
        "webhook-signature": signature,
    }
    resp = await client.post("/webhooks", data=body, headers=headers)
    assert resp.status == 202
    assert compare_spy, "the signature was not compared with hmac.compare_digest"


def router_time(seconds: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, tz=UTC)


# ---------------------------------------------------------------- nothing secret in logs


def _secret_needles(secret: str) -> list[str]:
    """A whsec_ secret, its base64 part, and its raw key in base64url form."""
    b64 = secret.removeprefix("whsec_")
    raw = base64.b64decode(b64)
    return [secret, b64, base64.urlsafe_b64encode(raw).decode().rstrip("="), raw.hex()]


async def test_full_run_logs_no_token_secret_or_signature(
    aiohttp_client: Any, redis: Redis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(key_prefix, retry_schedule=(0.2, 0.2))
    client = await aiohttp_client(create_app(settings, redis=redis, run_workers=True))
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    needles: list[str] = [ADMIN_TOKEN]
    async with Receiver() as receiver:
        receiver.program("/flaky", 500)
        key = await (
            await client.post(
                "/v1/api-keys", json={"name": "ops", "scopes": ["read_subscribers"]}, headers=admin
            )
        ).json()
        needles.append(key["token"])
        await client.get("/v1/subscribers", headers={"Authorization": f"Bearer {key['token']}"})
        wrong = "wrk_" + "Z" * 43
        needles.append(wrong)
        await client.get("/v1/subscribers", headers={"Authorization": f"Bearer {wrong}"})
        subs = []
        for path in ("/ok", "/flaky"):
            created = await client.post(
                "/v1/subscribers",
                json={"name": path, "url": receiver.url(path), "scopes": ["contacts.readonly"]},
                headers=admin,
            )
            sub = await created.json()
            needles.extend(_secret_needles(sub["secret"]))
            subs.append(sub)
        for _ in range(3):
            posted = await client.post("/webhooks", json=platform_event("ContactCreate"))
            assert posted.status == 202
        await receiver.wait_for("/ok", 3)
        await receiver.wait_for("/flaky", 4)  # one failure, then retried to success
        for sub in subs:
            rotated = await (
                await client.post(f"/v1/subscribers/{sub['id']}/secret/rotate", headers=admin)
            ).json()
            needles.extend(_secret_needles(rotated["secret"]))
        await client.post("/webhooks", json=platform_event("ContactCreate"))
        await receiver.wait_for("/ok", 4)
        regenerated = await (
            await client.post(f"/v1/api-keys/{key['id']}/regenerate", headers=admin)
        ).json()
        needles.append(regenerated["token"])
        for hit in receiver.requests():
            signature = hit.header("webhook-signature") or ""
            needles.append(signature)
            needles.extend(part.split(",", 1)[1] for part in signature.split())
    assert caplog.records, "expected the run to log something"
    # Messages, their arguments, and the formatted text with any tracebacks.
    text = "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records) + caplog.text
    leaked = [n for n in needles if n and n in text]
    assert leaked == []


# ---------------------------------------------------------------- size limits


async def test_operator_body_over_the_limit_is_413_in_the_envelope(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    limit = client.app[SETTINGS].max_body_bytes
    body = b'{"name": "' + b"x" * (limit + 1) + b'"}'
    resp = await client.post(
        "/v1/subscribers",
        data=body,
        headers={**admin_headers, "Content-Type": "application/json"},
    )
    assert resp.status == 413
    assert (await resp.json())["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"


@pytest.mark.parametrize("path", ["/webhooks", "/v1/subscribers", "/healthz"])
async def test_hundred_kilobyte_header_is_a_4xx(client: TestClient, path: str) -> None:
    resp = await client.get(path, headers={"X-Padding": "a" * 100_000})
    assert 400 <= resp.status < 500


async def test_ten_thousand_headers_are_a_4xx(client: TestClient) -> None:
    headers = [(f"X-H{i}", "v") for i in range(10_000)]
    resp = await client.get("/healthz", headers=headers)
    assert 400 <= resp.status < 500


# ---------------------------------------------------------------- slow clients

KEEPALIVE = 2.0  # the server's own bound on a connection that has not completed a request


@dataclass(frozen=True)
class Listening:
    host: str
    port: int


@pytest.fixture
async def slow_target(redis: Redis, key_prefix: str) -> AsyncIterator[Listening]:
    """The app on a real port, served as `web.run_app` serves it but with aiohttp's deadline
    for a connection that has not completed a request (`keepalive_timeout`, 75 s under
    `run_app`) shortened for the test."""
    runner = web.AppRunner(
        create_app(make_settings(key_prefix, client_timeout=KEEPALIVE), redis=redis),
        keepalive_timeout=KEEPALIVE,
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield Listening("127.0.0.1", runner.addresses[0][1])
    finally:
        await runner.cleanup()


async def _trickle(host: str, port: int, head: bytes, tail: bytes, budget: float) -> float | None:
    """Send `head` at once, then `tail` one byte every 0.25 s; the seconds after which the
    server closed the connection, or None if it was still open after `budget` seconds."""
    reader, writer = await asyncio.open_connection(host, port)
    started = time.monotonic()
    try:
        writer.write(head)
        await writer.drain()
        for byte in tail:
            if time.monotonic() - started > budget:
                return None
            writer.write(bytes([byte]))
            try:
                await writer.drain()
            except ConnectionError:
                return time.monotonic() - started
            try:
                data = await asyncio.wait_for(reader.read(65536), 0.25)
            except TimeoutError:
                continue
            if data == b"" or data.startswith(b"HTTP/1.1 4"):
                return time.monotonic() - started
        return None
    finally:
        writer.close()


async def test_slow_loris_headers_are_cut_off(slow_target: Listening) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    tail = b"X-Slow: " + b"a" * 400 + b"\r\n\r\n"
    closed_after = await _trickle(slow_target.host, slow_target.port, head, tail, 4 * KEEPALIVE)
    assert closed_after is not None, "the server kept a trickling header open"
    assert closed_after < KEEPALIVE + 2


async def test_slow_loris_body_is_cut_off(slow_target: Listening) -> None:
    head = (
        b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    closed_after = await _trickle(
        slow_target.host, slow_target.port, head, b" " * 1000, 3 * KEEPALIVE
    )
    assert closed_after is not None, "the server kept a trickling body open"


# ---------------------------------------------------------------- replay


async def test_signed_request_replayed_after_the_window_is_refused_and_not_redelivered(
    aiohttp_client: Any, redis: Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = Ed25519PrivateKey.generate()
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    settings = make_settings(
        key_prefix,
        verify="highlevel",
        highlevel_ed25519_key=pem,
        retry_schedule=(0.2,),
        dedupe_window=1,  # so only the timestamp window stands between a replay and delivery
    )
    client = await aiohttp_client(create_app(settings, redis=redis, run_workers=True))
    async with Receiver() as receiver:
        created = await client.post(
            "/v1/subscribers",
            json={"name": "crm", "url": receiver.url("/hook"), "scopes": ["contacts.readonly"]},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert created.status == 201
        body = encode(platform_event("ContactCreate"))
        headers = {
            "Content-Type": "application/json",
            "x-ghl-signature": base64.b64encode(key.sign(body)).decode(),
        }
        assert (await client.post("/webhooks", data=body, headers=headers)).status == 202
        await receiver.wait_for("/hook", 1)
        await asyncio.sleep(1.1)  # the dedupe entry has expired
        later = router.http.verification.now_ms() + (settings.timestamp_tolerance + 60) * 1000
        monkeypatch.setattr(router.http.verification, "now_ms", lambda: later)
        replay = await client.post("/webhooks", data=body, headers=headers)
        assert replay.status == 401
        await asyncio.sleep(0.5)
        assert len(receiver.requests("/hook")) == 1
