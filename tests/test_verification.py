"""Incoming verification (ROUTER_VERIFY): only the platform's signed requests are accepted.

`highlevel` checks the Ed25519 `x-ghl-signature` (else the legacy RSA `x-wh-signature`), both
base64 over the raw body; `standard` checks Standard Webhooks HMAC headers. With verification
on, a payload `timestamp` outside the replay window is refused, and a replayed request is a
duplicate that is delivered once.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from redis.asyncio import Redis
from standardwebhooks import Webhook

from router.http.app import create_app
from subscriptions.models import generate_secret
from tests.conftest import make_settings
from tests.payloads import encode, iso_now, platform_event
from tests.receivers import Receiver
from tests.test_delivery import until

JSON = {"Content-Type": "application/json"}


def public_pem(private_key: Ed25519PrivateKey | rsa.RSAPrivateKey) -> str:
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


ED_KEY = Ed25519PrivateKey.generate()
OTHER_ED_KEY = Ed25519PrivateKey.generate()
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
INGEST_SECRET = generate_secret()


def ghl_signature(body: bytes, key: Ed25519PrivateKey = ED_KEY) -> dict[str, str]:
    return {"x-ghl-signature": base64.b64encode(key.sign(body)).decode()}


def wh_signature(body: bytes, key: rsa.RSAPrivateKey = RSA_KEY) -> dict[str, str]:
    signature = key.sign(body, padding.PKCS1v15(), hashes.SHA256())
    return {"x-wh-signature": base64.b64encode(signature).decode()}


def standard_headers(
    body: bytes, secret: str = INGEST_SECRET, msg_id: str = "msg_1"
) -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body.decode()),
    }


@pytest.fixture
async def highlevel(aiohttp_client: Any, redis: Redis, key_prefix: str) -> TestClient:
    settings = make_settings(
        key_prefix,
        verify="highlevel",
        highlevel_ed25519_key=public_pem(ED_KEY),
        highlevel_rsa_key=public_pem(RSA_KEY),
    )
    return await aiohttp_client(create_app(settings, redis=redis))


@pytest.fixture
async def standard(aiohttp_client: Any, redis: Redis, key_prefix: str) -> TestClient:
    settings = make_settings(key_prefix, verify="standard", ingest_secret=INGEST_SECRET)
    return await aiohttp_client(create_app(settings, redis=redis))


async def post(
    client: TestClient, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/webhooks", data=body, headers={**JSON, **headers})
    return resp.status, await resp.json()


def assert_unauthenticated(status: int, body: dict[str, Any]) -> None:
    assert status == 401, body
    assert [e["extensions"]["code"] for e in body["errors"]] == ["UNAUTHENTICATED"]


# ---------------------------------------------------------------- highlevel: Ed25519


async def test_ed25519_signed_event_is_accepted(highlevel: TestClient) -> None:
    body = encode(platform_event("ContactCreate"))
    status, answer = await post(highlevel, body, ghl_signature(body))
    assert (status, answer["status"]) == (202, "accepted")


async def test_ed25519_signature_over_another_body_is_refused(highlevel: TestClient) -> None:
    signed = encode(platform_event("ContactCreate"))
    tampered = signed.replace(b'"dnd": false', b'"dnd": true')
    assert tampered != signed
    assert_unauthenticated(*await post(highlevel, tampered, ghl_signature(signed)))


async def test_ed25519_signature_by_another_key_is_refused(highlevel: TestClient) -> None:
    body = encode(platform_event("ContactCreate"))
    assert_unauthenticated(*await post(highlevel, body, ghl_signature(body, OTHER_ED_KEY)))


async def test_ed25519_signature_that_is_not_base64_is_refused(highlevel: TestClient) -> None:
    body = encode(platform_event("ContactCreate"))
    assert_unauthenticated(*await post(highlevel, body, {"x-ghl-signature": "not base64!"}))


async def test_unsigned_event_is_refused(highlevel: TestClient) -> None:
    body = encode(platform_event("ContactCreate"))
    assert_unauthenticated(*await post(highlevel, body, {}))


async def test_unsigned_body_is_refused_before_it_is_parsed(highlevel: TestClient) -> None:
    assert_unauthenticated(*await post(highlevel, b"{not json", {}))


async def test_ed25519_signature_with_that_scheme_turned_off_is_refused(
    aiohttp_client: Any, redis: Redis, key_prefix: str
) -> None:
    settings = make_settings(
        key_prefix,
        verify="highlevel",
        highlevel_ed25519_key="none",
        highlevel_rsa_key=public_pem(RSA_KEY),
    )
    client = await aiohttp_client(create_app(settings, redis=redis))
    body = encode(platform_event("ContactCreate"))
    assert_unauthenticated(*await post(client, body, ghl_signature(body)))


# ---------------------------------------------------------------- highlevel: legacy RSA


async def test_rsa_signed_event_is_accepted(highlevel: TestClient) -> None:
    body = encode(platform_event("OpportunityCreate"))
    status, answer = await post(highlevel, body, wh_signature(body))
    assert (status, answer["status"]) == (202, "accepted")


async def test_rsa_signature_over_another_body_is_refused(highlevel: TestClient) -> None:
    signed = encode(platform_event("OpportunityCreate"))
    tampered = signed.replace(b'"monetaryValue": 1250', b'"monetaryValue": 1')
    assert tampered != signed
    assert_unauthenticated(*await post(highlevel, tampered, wh_signature(signed)))


async def test_rsa_signature_by_another_key_is_refused(highlevel: TestClient) -> None:
    body = encode(platform_event("OpportunityCreate"))
    assert_unauthenticated(*await post(highlevel, body, wh_signature(body, OTHER_RSA_KEY)))


async def test_a_valid_rsa_signature_is_enough_when_both_are_sent(highlevel: TestClient) -> None:
    body = encode(platform_event("OpportunityCreate"))
    headers = {**ghl_signature(body, OTHER_ED_KEY), **wh_signature(body)}
    status, answer = await post(highlevel, body, headers)
    assert (status, answer["status"]) == (202, "accepted")


async def test_both_signatures_invalid_is_refused(highlevel: TestClient) -> None:
    body = encode(platform_event("OpportunityCreate"))
    headers = {**ghl_signature(body, OTHER_ED_KEY), **wh_signature(body, OTHER_RSA_KEY)}
    assert_unauthenticated(*await post(highlevel, body, headers))


# ---------------------------------------------------------------- standard webhooks


async def test_standard_webhooks_signed_event_is_accepted(standard: TestClient) -> None:
    body = encode(platform_event("TaskCreate"))
    status, answer = await post(standard, body, standard_headers(body))
    assert (status, answer["status"]) == (202, "accepted")


async def test_standard_webhooks_signature_with_another_secret_is_refused(
    standard: TestClient,
) -> None:
    body = encode(platform_event("TaskCreate"))
    headers = standard_headers(body, secret=generate_secret())
    assert_unauthenticated(*await post(standard, body, headers))


async def test_standard_webhooks_signature_over_another_body_is_refused(
    standard: TestClient,
) -> None:
    signed = encode(platform_event("TaskCreate"))
    tampered = signed.replace(b"Send the quote", b"Send the invoice")
    assert tampered != signed
    assert_unauthenticated(*await post(standard, tampered, standard_headers(signed)))


async def test_standard_webhooks_headers_missing_is_refused(standard: TestClient) -> None:
    body = encode(platform_event("TaskCreate"))
    assert_unauthenticated(*await post(standard, body, {}))


async def test_standard_webhooks_malformed_signature_is_refused(standard: TestClient) -> None:
    body = encode(platform_event("TaskCreate"))
    headers = {**standard_headers(body), "webhook-signature": "v1-no-comma"}
    assert_unauthenticated(*await post(standard, body, headers))


async def test_standard_webhooks_replayed_message_is_a_duplicate(standard: TestClient) -> None:
    body = encode(platform_event("TaskCreate", envelope=False))
    headers = standard_headers(body, msg_id="msg_replayed")
    _, first = await post(standard, body, headers)
    status, again = await post(standard, body, headers)
    assert (status, again["status"], again["event_id"]) == (202, "duplicate", first["event_id"])


# ---------------------------------------------------------------- replay window


async def test_stale_timestamp_is_refused_when_verification_is_on(highlevel: TestClient) -> None:
    body = encode(platform_event("ContactCreate", timestamp=iso_now(-301)))
    assert_unauthenticated(*await post(highlevel, body, ghl_signature(body)))


async def test_future_timestamp_beyond_the_window_is_refused(highlevel: TestClient) -> None:
    body = encode(platform_event("ContactCreate", timestamp=iso_now(+301)))
    assert_unauthenticated(*await post(highlevel, body, ghl_signature(body)))


async def test_timestamp_inside_the_window_is_accepted(highlevel: TestClient) -> None:
    body = encode(platform_event("ContactCreate", timestamp=iso_now(-240)))
    status, answer = await post(highlevel, body, ghl_signature(body))
    assert (status, answer["status"]) == (202, "accepted")


async def test_timestamp_that_is_not_a_time_is_refused(highlevel: TestClient) -> None:
    body = encode(platform_event("ContactCreate", timestamp="yesterday"))
    assert_unauthenticated(*await post(highlevel, body, ghl_signature(body)))


async def test_stale_timestamp_is_accepted_when_verification_is_off(client: TestClient) -> None:
    body = encode(platform_event("ContactCreate", timestamp=iso_now(-3600)))
    status, answer = await post(client, body, {})
    assert (status, answer["status"]) == (202, "accepted")


async def test_replayed_signed_request_is_a_duplicate_delivered_once(
    aiohttp_client: Any, redis: Redis, key_prefix: str, admin_headers: dict[str, str]
) -> None:
    settings = make_settings(
        key_prefix,
        verify="highlevel",
        highlevel_ed25519_key=public_pem(ED_KEY),
        retry_schedule=(0.2, 0.2),
    )
    client = await aiohttp_client(create_app(settings, redis=redis, run_workers=True))
    async with Receiver() as receiver:
        resp = await client.post(
            "/v1/subscribers",
            json={"name": "crm", "url": receiver.url("/hook"), "scopes": ["contacts.readonly"]},
            headers=admin_headers,
        )
        assert resp.status == 201
        body = encode(platform_event("ContactCreate"))
        _, first = await post(client, body, ghl_signature(body))
        _, replay = await post(client, body, ghl_signature(body))
        assert (first["status"], replay["status"]) == ("accepted", "duplicate")
        assert replay["event_id"] == first["event_id"]
        (hit,) = await receiver.wait_for("/hook", 1)

        async def read_event() -> Any:
            resp = await client.get(f"/v1/events/{first['event_id']}", headers=admin_headers)
            return await resp.json()

        # The receiver has the delivery before the router has read its answer and recorded it.
        event = await until(
            read_event, lambda e: [d["status"] for d in e["deliveries"]] != ["pending"]
        )
    assert [d["status"] for d in event["deliveries"]] == ["succeeded"]
    assert hit.header("webhook-id") == event["deliveries"][0]["id"]
    assert len(receiver.requests("/hook")) == 1
