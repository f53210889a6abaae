"""Prefixed, time-ordered identifiers (`sub_`, `evt_`, `dlv_`, `key_`) and RFC 3339 times.

Ids sort lexicographically by creation time (48-bit milliseconds, then 80 random bits, in
Crockford base32, like a monotonic ULID), which is what cursor pagination over a sorted set
relies on. An id may carry a small number (`mark`, up to MAX_MARK) in its lowest bits, read
back by `id_mark`: the router marks each event with the partition that stores it.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime, timedelta
from functools import lru_cache

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


_last = 0  # the value of the latest id this process made
_MARK_BITS = 10
MAX_MARK = (1 << _MARK_BITS) - 1


def new_id(prefix: str, now_ms: int | None = None, *, mark: int = 0) -> str:
    """A new id `<prefix>_<26 chars>`: later ids sort after earlier ones, across processes by
    the millisecond, and within one process also inside a millisecond. Its lowest bits hold
    `mark` (0..MAX_MARK), which `id_mark` reads back."""
    global _last
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | (secrets.randbits(80 - _MARK_BITS) << _MARK_BITS) | mark
    if value >> 80 == _last >> 80 and value <= _last:
        # Same millisecond as the previous id: random bits alone would order the two by
        # chance, and listings promise creation order (as a monotonic ULID does).
        value = ((_last >> _MARK_BITS) + 1) << _MARK_BITS | mark
    _last = value
    return f"{prefix}_{_encode(value)}"


_VALUES = {c: i for i, c in enumerate(_ALPHABET)}


def id_time(body: str) -> int:
    """The creation time (ms) of an id's 26-character body; 0 if it is not such a body."""
    try:
        return int("".join(f"{_VALUES[c]:05b}" for c in body[:10]), 2) >> 2
    except KeyError:
        return 0


def id_mark(body: str) -> int:
    """The mark of an id's 26-character body (the part after `<prefix>_`); 0 if it has none.
    Raises ValueError if `body` is not such a body."""
    if len(body) != 26:
        raise ValueError("not an id body")
    try:
        tail = (_VALUES[body[23]] << 10) | (_VALUES[body[24]] << 5) | _VALUES[body[25]]
    except KeyError:
        raise ValueError("not an id body") from None
    return (tail >> 2) & MAX_MARK


# Two characters per 10 bits: `base64.b32encode` is pure Python on 3.11, and showed in the
# ingest profile.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_SHIFTS = range(120, -1, -10)


def _encode(value: int) -> str:
    """128 bits, most significant first, as 26 base32 characters (the last carries 3 bits,
    padded with two zero bits, as RFC 4648 base32 does)."""
    padded = value << 2
    return "".join([_PAIRS[(padded >> shift) & 1023] for shift in _SHIFTS])


def now_ms() -> int:
    return int(time.time() * 1000)


def rfc3339(ms: int | float) -> str:
    """Milliseconds since the epoch as RFC 3339 UTC with millisecond precision."""
    seconds, millis = divmod(int(ms), 1000)
    return f"{_rfc3339_second(seconds)}.{millis:03d}Z"


@lru_cache(maxsize=64)
def _rfc3339_second(seconds: int) -> str:
    # Every attempt record carries one: within a second they share the formatting.
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def parse_rfc3339(text: str) -> int:
    """RFC 3339 (or ISO 8601 with an offset or `Z`) to milliseconds since the epoch.

    Raises ValueError if the text is not such a time.
    """
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    # Exact integer arithmetic: timestamp() * 1000 loses a millisecond to float rounding
    # (4.023 s became 4022 ms).
    return (parsed - _EPOCH) // _MILLISECOND


def id_floor(prefix: str, ms: int) -> str:
    """The smallest id `new_id(prefix)` can produce at time `ms`: ids below it are older."""
    return f"{prefix}_{_encode(ms << 80)}"
