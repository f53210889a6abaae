"""Outgoing signatures: the Standard Webhooks headers every delivery carries.

Receivers verify with the `standardwebhooks` library: `Webhook(secret).verify(body, headers)`.
During a secret rotation a delivery is signed with every live secret, space-separated, so a
receiver holding either the old or the new secret accepts it.
"""

from __future__ import annotations

import base64
import hmac
from functools import lru_cache

USER_AGENT = "webhook-router/0.1"
# The headers only a router's delivery carries (beside the Standard Webhooks ones, which the
# platform could send too). An incoming request with any of them was delivered by a router.
ROUTER_HEADERS = ("X-Router-Event", "X-Router-Event-Id", "X-Router-Attempt")


@lru_cache(maxsize=4096)
def _key(secret: str) -> bytes:
    # `whsec_` + base64, decoded as `standardwebhooks` does (padding optional); once per
    # secret, since subscribers' secrets repeat constantly.
    return base64.b64decode(secret.removeprefix("whsec_") + "==")


def signature_header(msg_id: str, timestamp: int, body: bytes, secrets: list[str]) -> str:
    """`v1,<base64>` for each secret, space-separated (Standard Webhooks `webhook-signature`).

    The scheme's HMAC-SHA256 of `id.timestamp.body`, over the body's bytes as they are sent.
    Not `standardwebhooks`' `Webhook.sign`: it takes the body as text and a datetime, and
    the copies that takes cost 13 µs per delivery under load against 6 here (the tests check
    both agree, and every delivery in them is verified with the library).
    """
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.digest(_key(s), signed, "sha256")).decode() for s in secrets
    )


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
        "User-Agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(msg_id, timestamp, body, secrets),
        "X-Router-Event": event,
        "X-Router-Event-Id": event_id,
        "X-Router-Attempt": str(attempt),
    }
