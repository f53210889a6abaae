"""Incoming verification: is this webhook really from the platform (`ROUTER_VERIFY`)?

- `highlevel`: the platform's Ed25519 `x-ghl-signature` (the only header it sends since its
  RSA header was deprecated on 2026-07-01) or its legacy RSA-SHA256 `x-wh-signature`; both
  base64 signatures over the raw body. The request is authentic when any signature it carries
  verifies under any configured key of its scheme: several keys per scheme let a rotation
  overlap, and a request carrying both headers is not refused for the one this deployment
  has no key for. The platform's published keys ship as the defaults.
- `standard`: Standard Webhooks headers, HMAC-SHA256 with `ROUTER_INGEST_SECRET`.

Replay protection (a payload `timestamp` outside the window) is `timestamp_refusal`; a body
seen before is a duplicate whatever its fields (`router.ledger`). Refusals are counted and
watched by `RefusalMonitor`, so a misconfigured key shows within a minute: in the log, in
`/healthz`, and as the operational event `router.verification.failing`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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

from router.pipeline.operational import OperationalEvents
from router.settings import Settings, SettingsError
from subscriptions.ids import now_ms, parse_rfc3339

log = logging.getLogger("router.verification")

ED25519_HEADER = "x-ghl-signature"
RSA_HEADER = "x-wh-signature"
# The value that turns a scheme off (its header is then never accepted).
NO_KEYS = "none"
_PEM_BLOCK = re.compile(r"-----BEGIN [A-Z ]+-----.+?-----END [A-Z ]+-----", re.DOTALL)


@dataclass(frozen=True)
class Refusal:
    """Why a request is not authentic: `reason` is a metric label from a small fixed set,
    `message` is what the caller is told (it never echoes the request)."""

    reason: str
    message: str


class Verifier(Protocol):
    def refusal(self, body: bytes, headers: Mapping[str, str]) -> Refusal | None:
        """Why the request is not authentic, or None if it is."""


def _decode_signature(value: str) -> bytes | None:
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):  # not base64, or not ASCII
        return None


def _ed25519_valid(keys: tuple[Ed25519PublicKey, ...], signature: bytes, body: bytes) -> bool:
    for key in keys:
        try:
            key.verify(signature, body)
        except InvalidSignature:
            continue
        return True
    return False


def _rsa_valid(keys: tuple[RSAPublicKey, ...], signature: bytes, body: bytes) -> bool:
    for key in keys:
        try:
            key.verify(signature, body, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            continue
        return True
    return False


class HighLevelVerifier:
    def __init__(
        self, ed25519: tuple[Ed25519PublicKey, ...], rsa: tuple[RSAPublicKey, ...]
    ) -> None:
        self.ed25519 = ed25519
        self.rsa = rsa

    def refusal(self, body: bytes, headers: Mapping[str, str]) -> Refusal | None:
        ed_value, rsa_value = headers.get(ED25519_HEADER), headers.get(RSA_HEADER)
        if ed_value is None and rsa_value is None:
            return Refusal("signature_missing", f"missing {ED25519_HEADER} header")
        problems: list[str] = []
        for header, value, keys, valid in (
            (ED25519_HEADER, ed_value, self.ed25519, _ed25519_valid),
            (RSA_HEADER, rsa_value, self.rsa, _rsa_valid),
        ):
            if value is None:
                continue
            if not keys:
                problems.append(f"{header} received but no key is configured for it")
                continue
            signature = _decode_signature(value)
            if signature is None:
                problems.append(f"{header} is not base64")
            elif valid(keys, signature, body):  # type: ignore[operator]
                return None
            else:
                problems.append(f"{header} does not match the body")
        return Refusal("signature_invalid", "; ".join(problems))


class StandardVerifier:
    def __init__(self, secret: str) -> None:
        self.webhook = Webhook(secret)

    def refusal(self, body: bytes, headers: Mapping[str, str]) -> Refusal | None:
        if "webhook-signature" not in headers:
            return Refusal("signature_missing", "missing webhook-signature header")
        try:
            self.webhook.verify(body, dict(headers), json_parse=False)
        except WebhookVerificationError as exc:
            return Refusal("signature_invalid", f"Standard Webhooks signature refused: {exc}")
        except (ValueError, UnicodeError):
            return Refusal("signature_invalid", "Standard Webhooks signature refused: malformed")
        return None


def _shipped(name: str) -> str:
    return resources.files("router.data").joinpath(name).read_text()


def load_public_keys(setting: str, value: str) -> list[Any]:
    """The public keys in `value`: PEM blocks and paths of PEM files, comma-separated (a file
    may hold several blocks); `none` is no key. Raises SettingsError naming the setting."""
    if value.strip().lower() == NO_KEYS:
        return []
    blocks = _PEM_BLOCK.findall(value)
    rest = _PEM_BLOCK.sub(",", value)
    for path in (p.strip() for p in rest.split(",")):
        if not path:
            continue
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not a readable PEM file"
            raise SettingsError(f"{setting}: cannot read {path}: {reason}") from None
        found = _PEM_BLOCK.findall(text)
        if not found:
            raise SettingsError(f"{setting}: {path} holds no PEM public key")
        blocks += found
    if not blocks:
        raise SettingsError(f"{setting}: no PEM public key given (or `{NO_KEYS}`)")
    keys = []
    for block in blocks:
        try:
            keys.append(serialization.load_pem_public_key(block.encode()))
        except ValueError as exc:
            raise SettingsError(f"{setting}: not a PEM public key ({exc})") from None
    return keys


def _typed_keys(setting: str, value: str, kind: type, label: str) -> tuple[Any, ...]:
    keys = load_public_keys(setting, value)
    if any(not isinstance(key, kind) for key in keys):
        raise SettingsError(f"{setting}: not an {label} public key")
    return tuple(keys)


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
    ed = _typed_keys(
        "ROUTER_HIGHLEVEL_ED25519_KEY",
        settings.highlevel_ed25519_key or _shipped("highlevel-ed25519-public-key.pem"),
        Ed25519PublicKey,
        "Ed25519",
    )
    rsa = _typed_keys(
        "ROUTER_HIGHLEVEL_RSA_KEY",
        settings.highlevel_rsa_key or _shipped("highlevel-rsa-public-key.pem"),
        RSAPublicKey,
        "RSA",
    )
    if not ed and not rsa:
        raise SettingsError(
            "ROUTER_HIGHLEVEL_ED25519_KEY: with ROUTER_VERIFY=highlevel, at least one scheme "
            "needs a key"
        )
    return HighLevelVerifier(ed, rsa)


def timestamp_refusal(payload: Mapping[str, Any], tolerance_s: int) -> Refusal | None:
    """Why the payload's `timestamp` makes it a possible replay, or None.

    Only a payload that carries a `timestamp` is judged; one without is protected from
    replay by its body digest instead.
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
            return Refusal("timestamp", "timestamp is not a time")
    except (ValueError, OverflowError):
        return Refusal("timestamp", "timestamp is not a time")
    if abs(now_ms() - ms) > tolerance_s * 1000:
        return Refusal("timestamp", f"timestamp is outside the {tolerance_s} s replay window")
    return None


@dataclass(frozen=True)
class IngestState:
    """What the last `window` seconds of ingest looked like in this process."""

    failing: bool
    accepted: int
    refused: int
    reasons: dict[str, int]
    window: int


class RefusalMonitor:
    """Watches ingest outcomes, so refusals are loud, not silent.

    Every refusal is counted by the caller's metric; here the last `window` seconds are kept
    to say whether most recent events are being refused (a wrong or missing key refuses every
    real event, and the platform never retries a 401: they would be lost in silence), and a
    warning is logged at most every `log_every` seconds with the counts since the last one.
    429s are not refusals here: the platform retries them.

    While most are refused, `on_failing` is called with the state at most once a `window`
    (judged at most every `check_every` seconds, so a flood of refusals costs little).
    """

    # Below this many refusals in the window, a few forged or stray requests are not news.
    MIN_REFUSED = 5

    def __init__(
        self,
        window: int = 60,
        log_every: float = 10.0,
        *,
        on_failing: Callable[[IngestState], None] | None = None,
        check_every: float = 1.0,
    ) -> None:
        self.window = window
        self.log_every = log_every
        self.on_failing = on_failing
        self.check_every = check_every
        self._last_check = float("-inf")
        self._last_alert = float("-inf")
        # Outcomes counted per tenth of a second (oldest first): counting an accepted event is
        # an addition on the ingest path, and the window holds at most 10 * `window` slots.
        self._slots: deque[_Slot] = deque()
        self._unlogged: Counter[str] = Counter()
        self._last_log = float("-inf")

    def accepted(self) -> None:
        tick = int(time.monotonic() * _TICKS)
        slots = self._slots
        if slots and slots[-1].tick == tick:
            slots[-1].accepted += 1
        else:
            self._open(tick).accepted += 1

    def refused(self, refusal: Refusal) -> None:
        now = time.monotonic()
        tick = int(now * _TICKS)
        slot = self._slots[-1] if self._slots and self._slots[-1].tick == tick else None
        (slot or self._open(tick)).refused[refusal.reason] += 1
        self._unlogged[refusal.reason] += 1
        if now - self._last_log >= self.log_every:
            counts = ", ".join(f"{r}: {n}" for r, n in sorted(self._unlogged.items()))
            log.warning(
                "ingest refused %d unauthenticated request(s) since the last report (%s); "
                "latest: %s",
                sum(self._unlogged.values()),
                counts,
                refusal.message,
            )
            self._unlogged.clear()
            self._last_log = now
        if self.on_failing is not None and now - self._last_check >= self.check_every:
            self._last_check = now
            state = self.state()
            if state.failing and now - self._last_alert >= self.window:
                self._last_alert = now
                self.on_failing(state)

    def _open(self, tick: int) -> _Slot:
        """A new slot for `tick`, the slots older than the window forgotten."""
        self._forget_before(tick - self.window * _TICKS)
        slot = _Slot(tick)
        self._slots.append(slot)
        return slot

    def _forget_before(self, tick: int) -> None:
        slots = self._slots
        while slots and slots[0].tick < tick:
            slots.popleft()

    def state(self) -> IngestState:
        self._forget_before(int(time.monotonic() * _TICKS) - self.window * _TICKS)
        reasons: Counter[str] = Counter()
        accepted = 0
        for slot in self._slots:
            accepted += slot.accepted
            reasons.update(slot.refused)
        refused = sum(reasons.values())
        return IngestState(
            failing=refused >= self.MIN_REFUSED and refused > accepted,
            accepted=accepted,
            refused=refused,
            reasons=dict(reasons),
            window=self.window,
        )


_TICKS = 10  # slots per second


class _Slot:
    """The outcomes of one tenth of a second."""

    __slots__ = ("accepted", "refused", "tick")

    def __init__(self, tick: int) -> None:
        self.tick = tick
        self.accepted = 0
        self.refused: Counter[str] = Counter()


def announce_failing(operations: OperationalEvents) -> Callable[[IngestState], None]:
    """A `RefusalMonitor.on_failing` that emits `router.verification.failing`."""

    def announce(state: IngestState) -> None:
        total = state.refused + state.accepted
        operations.emit(
            "router.verification.failing",
            reason=f"{state.refused} of the last {total} ingest requests in {state.window} s "
            "were refused as unauthenticated or invalid",
            counts={"refused": state.refused, "accepted": state.accepted, **state.reasons},
        )

    return announce
