"""Ids: the Crockford base32 encoding sorts like the value, and ids sort by creation time."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

from hypothesis import example, given
from hypothesis import strategies as st

from subscriptions.ids import _ALPHABET, _encode, id_floor, new_id, parse_rfc3339, rfc3339

_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET.encode())

VALUES = st.integers(min_value=0, max_value=2**128 - 1)


@given(VALUES)
def test_encoding_is_rfc4648_base32_in_crockfords_alphabet(value: int) -> None:
    # The standard library's encoder is the oracle: ids already stored must keep their order.
    expected = base64.b32encode(value.to_bytes(16, "big"))[:26].translate(_TO_CROCKFORD)
    assert _encode(value) == expected.decode()


@given(VALUES, VALUES)
def test_encoding_sorts_like_the_value(a: int, b: int) -> None:
    assert (_encode(a) < _encode(b)) == (a < b)


@given(st.integers(min_value=0, max_value=2**48 - 2))
def test_ids_sort_by_millisecond_and_floor_bounds_them(ms: int) -> None:
    earlier, later = new_id("evt", ms), new_id("evt", ms + 1)
    assert earlier < later
    assert id_floor("evt", ms) <= earlier < id_floor("evt", ms + 1) <= later
    assert len(earlier) == len("evt_") + 26


@given(st.integers(min_value=0, max_value=253402300799999))
@example(4023)  # timestamp() * 1000 once parsed this back as 4022
def test_rfc3339_matches_datetime_formatting(ms: int) -> None:
    # Exact, unlike fromtimestamp(ms / 1000), which rounds far-future milliseconds wrongly.
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    expected = moment.isoformat(timespec="milliseconds")
    assert rfc3339(ms) == expected.replace("+00:00", "Z")
    assert parse_rfc3339(rfc3339(ms)) == ms


def test_ids_made_within_one_millisecond_keep_their_order() -> None:
    # A regression: random bits alone ordered ids of the same millisecond by chance, and
    # listings (API keys, subscribers) came back out of creation order.
    ids = [new_id("key", 1_700_000_000_000) for _ in range(1000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(i < id_floor("key", 1_700_000_000_001) for i in ids)
