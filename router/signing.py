"""Outgoing signatures: the Standard Webhooks headers every delivery carries.

Receivers verify with the `standardwebhooks` library: `Webhook(secret).verify(body, headers)`.
During a secret rotation a delivery is signed with every live secret, space-separated, so a
receiver holding either the old or the new secret accepts it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache

from standardwebhooks import Webhook


@lru_cache(maxsize=4096)
def _webhook(secret: str) -> Webhook:
    # Decoding the secret costs more than the HMAC; subscribers' secrets repeat constantly.
    return Webhook(secret)


def signature_header(msg_id: str, timestamp: int, body: bytes, secrets: list[str]) -> str:
    """`v1,<base64>` for each secret, space-separated (Standard Webhooks `webhook-signature`)."""
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    text = body.decode("utf-8")
    return " ".join(_webhook(s).sign(msg_id, when, text) for s in secrets)


def delivery_headers(
    msg_id: str,
    timestamp: int,
    body: bytes,
    secrets: list[str],
    event: str,
    attempt: int,
    event_id: str,
) -> dict[str, str]:
    """Every header of one delivery attempt. `msg_id` must be stable across attempts."""
    return {
        "Content-Type": "application/json",
        "User-Agent": "webhook-router/0.1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(msg_id, timestamp, body, secrets),
        "X-Router-Event": event,
        "X-Router-Event-Id": event_id,
        "X-Router-Attempt": str(attempt),
    }
