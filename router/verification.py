"""Incoming verification: is this webhook really from the platform (`ROUTER_VERIFY`)?

- `highlevel`: the platform's Ed25519 `x-ghl-signature` when present, else its legacy
  RSA-SHA256 `x-wh-signature`; both base64 signatures over the raw body, checked with the
  configured public keys (the RSA key the platform publishes ships as the default).
- `standard`: Standard Webhooks headers, HMAC-SHA256 with `ROUTER_INGEST_SECRET`.
Replay protection (a payload `timestamp` outside the window) is `timestamp_refusal`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from router.settings import Settings, SettingsError
from subscriptions.ids import now_ms, parse_rfc3339


class Verifier(Protocol):
    def refusal(self, body: bytes, headers: Mapping[str, str]) -> str | None:
        """Why the request is not authentic, or None if it is."""


def _decode_signature(value: str) -> bytes | None:
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


class HighLevelVerifier:
    def __init__(self, ed25519: Ed25519PublicKey | None, rsa: RSAPublicKey | None) -> None:
        self.ed25519 = ed25519
        self.rsa = rsa

    def refusal(self, body: bytes, headers: Mapping[str, str]) -> str | None:
        if (value := headers.get("x-ghl-signature")) is not None:
            if self.ed25519 is None:
                return "x-ghl-signature received but ROUTER_HIGHLEVEL_ED25519_KEY is not set"
            signature = _decode_signature(value)
            try:
                if signature is None:
                    raise InvalidSignature
                self.ed25519.verify(signature, body)
            except InvalidSignature:
                return "x-ghl-signature does not match the body"
            return None
        if (value := headers.get("x-wh-signature")) is not None:
            if self.rsa is None:
                return "x-wh-signature received but no RSA key is configured"
            signature = _decode_signature(value)
            try:
                if signature is None:
                    raise InvalidSignature
                self.rsa.verify(signature, body, padding.PKCS1v15(), hashes.SHA256())
            except InvalidSignature:
                return "x-wh-signature does not match the body"
            return None
        return "missing x-ghl-signature or x-wh-signature header"


class StandardVerifier:
    def __init__(self, secret: str) -> None:
        self.webhook = Webhook(secret)

    def refusal(self, body: bytes, headers: Mapping[str, str]) -> str | None:
        try:
            self.webhook.verify(body, dict(headers), json_parse=False)
        except WebhookVerificationError as exc:
            return f"Standard Webhooks signature refused: {exc}"
        except (ValueError, UnicodeDecodeError):
            return "Standard Webhooks signature refused: malformed headers"
        return None


def _load_key(setting: str, value: str) -> Any:
    pem = value.strip()
    if not pem.startswith("-----BEGIN"):
        try:
            pem = Path(pem).read_text()
        except OSError as exc:
            raise SettingsError(f"{setting}: cannot read {value}: {exc.strerror}") from None
    try:
        return serialization.load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise SettingsError(f"{setting}: not a PEM public key ({exc})") from None


def build_verifier(settings: Settings) -> Verifier | None:
    """The verifier `ROUTER_VERIFY` asks for (None when off). Raises SettingsError on bad keys."""
    if settings.verify == "off":
        return None
    if settings.verify == "standard":
        if settings.ingest_secret is None:
            raise SettingsError("ROUTER_INGEST_SECRET: required when ROUTER_VERIFY=standard")
        try:
            return StandardVerifier(settings.ingest_secret.get_secret_value())
        except (ValueError, binascii.Error) as exc:
            raise SettingsError(f"ROUTER_INGEST_SECRET: not a whsec_ secret ({exc})") from None
    ed = rsa = None
    if settings.highlevel_ed25519_key:
        ed = _load_key("ROUTER_HIGHLEVEL_ED25519_KEY", settings.highlevel_ed25519_key)
        if not isinstance(ed, Ed25519PublicKey):
            raise SettingsError("ROUTER_HIGHLEVEL_ED25519_KEY: not an Ed25519 public key")
    rsa_value = settings.highlevel_rsa_key or (
        resources.files("router.data").joinpath("highlevel-rsa-public-key.pem").read_text()
    )
    rsa = _load_key("ROUTER_HIGHLEVEL_RSA_KEY", rsa_value)
    if not isinstance(rsa, RSAPublicKey):
        raise SettingsError("ROUTER_HIGHLEVEL_RSA_KEY: not an RSA public key")
    return HighLevelVerifier(ed, rsa)


def timestamp_refusal(payload: Mapping[str, Any], tolerance_s: int) -> str | None:
    """Why the payload's `timestamp` makes it a possible replay, or None.

    Only a payload that carries a `timestamp` is judged; the platform's envelope has one.
    """
    value = payload.get("timestamp")
    if value is None:
        return None
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            ms = int(value if value > 10**11 else value * 1000)
        elif isinstance(value, str):
            ms = parse_rfc3339(value)
        else:
            return "timestamp is not a time"
    except (ValueError, OverflowError):
        return "timestamp is not a time"
    if abs(now_ms() - ms) > tolerance_s * 1000:
        return f"timestamp is outside the {tolerance_s} s replay window"
    return None
