"""Outgoing signatures agree with the `standardwebhooks` library, the reference receivers use."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from router.core.signing import delivery_headers, signature_header
from subscriptions.ids import now_ms
from subscriptions.models import generate_secret

BODIES = [
    b"{}",
    b'{"type":"ContactCreate","locationId":"ve9EPM428h8vShlRW1KT","firstName":"Ren\xc3\xa9e"}',
    '{"note": "émoji 🚀 and \\"quotes\\""}'.encode(),
]
SECRETS = [
    generate_secret(24),
    generate_secret(32),
    generate_secret(64),
    # Unpadded base64 after the prefix: the library pads it; so must we.
    "whsec_" + base64.b64encode(b"x" * 25).decode().rstrip("="),
]


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("secret", SECRETS)
def test_signature_is_the_librarys(body: bytes, secret: str) -> None:
    timestamp = 1_700_000_123
    expected = Webhook(secret).sign(
        "dlv_01JD", datetime.fromtimestamp(timestamp, tz=UTC), body.decode()
    )
    assert signature_header("dlv_01JD", timestamp, body, [secret]) == expected


def test_each_live_secret_verifies_and_no_other() -> None:
    old, new = generate_secret(), generate_secret()
    body = BODIES[1]
    headers = delivery_headers("dlv_x", now_ms() // 1000, body, [new, old], "ContactCreate", 2, "e")
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert Webhook(secret).verify(body, headers) == {
            "type": "ContactCreate",
            "locationId": "ve9EPM428h8vShlRW1KT",
            "firstName": "Renée",
        }
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(body + b" ", headers)
