"""Attempt contexts: what a batch of attempts needs of their deliveries, events, subscribers
and breakers, read in one round trip (concurrent attempts share it, see
`router.storage.batching`), each event, subscriber and breaker read once however many of the
batch's deliveries need it.

Plain reads, no script: a delivery and its event live in their partition, the subscriber in
the registry and the breaker in the subscriber's breaker partition, so on a Redis Cluster
they are on different nodes; the client sends each node its share of the batch at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from router.core.records import AttemptContext, WorkItem
from router.storage.keys import RouterKeys
from router.storage.scripts import Command

# What an attempt needs of its delivery record (the rest is for operators).
DELIVERY_FIELDS = ("status", "attempts", "schedule_index")
EVENT_FIELDS = ("body", "event", "location_id", "company_id", "received_at")
TRACED_EVENT_FIELDS = (*EVENT_FIELDS, "traceparent")  # read only while tracing is on
_T = TypeVar("_T")


@dataclass(frozen=True)
class ContextsCall:
    """The commands for a batch's contexts, and what `parse` needs to read their replies."""

    items: list[WorkItem]
    subscribers: list[str]
    events: list[str]
    commands: list[Command]


def contexts_call(
    keys: RouterKeys, subscribers_hash: str, items: list[WorkItem], *, traced: bool = False
) -> ContextsCall:
    """The reads for `items`: per item its delivery; per event, subscriber and breaker once;
    the subscribers all in one HMGET of the registry's hash. `traced`: the events' trace
    contexts too."""
    subs = list(dict.fromkeys(item.subscriber_id for item in items))
    event_ids = list(dict.fromkeys(item.event_id for item in items))
    event_fields = TRACED_EVENT_FIELDS if traced else EVENT_FIELDS
    commands: list[Command] = [
        *(("HMGET", keys.delivery(item.delivery_id), *DELIVERY_FIELDS) for item in items),
        *(("HMGET", keys.event(event_id), *event_fields) for event_id in event_ids),
        ("HMGET", subscribers_hash, *subs),
        *(("HGETALL", keys.breaker(sub)) for sub in subs),
    ]
    return ContextsCall(items, subs, event_ids, commands)


def _text(value: bytes | None) -> str | None:
    return None if value is None or value == b"" else value.decode()


def _decoded(decode: Callable[[Any], _T], raw: Any) -> _T | Exception:
    """`decode(raw)`, or the exception it (or the read that produced `raw`) raised."""
    if isinstance(raw, Exception):
        return raw
    try:
        return decode(raw)
    except Exception as exc:  # handed to the caller that needs this record
        return exc


def _event_fields(row: list[bytes | None]) -> dict[str, Any]:
    """An event's fields for an attempt (HMGET of EVENT_FIELDS, or TRACED_EVENT_FIELDS);
    empty if it expired."""
    if row[0] is None:
        return {}
    fields = {
        "body": row[0],
        "event": _text(row[1]),
        "location_id": _text(row[2]),
        "company_id": _text(row[3]),
        "received_at": int(row[4] or 0),
    }
    if len(row) > len(EVENT_FIELDS):
        fields["traceparent"] = _text(row[-1])
    return fields


def _delivery_fields(row: list[bytes | None]) -> dict[str, str]:
    """A delivery's fields for an attempt; empty if it expired."""
    if row[0] is None:
        return {}
    return {f: v.decode() for f, v in zip(DELIVERY_FIELDS, row, strict=True) if v is not None}


def _pairs(raw: list[bytes] | dict[bytes, bytes]) -> dict[str, str]:
    """HGETALL's reply, decoded: a flat list under RESP2, a dict under RESP3 (and fakeredis)."""
    if isinstance(raw, dict):
        return {k.decode(): v.decode() for k, v in raw.items()}
    return {raw[i].decode(): raw[i + 1].decode() for i in range(0, len(raw), 2)}


def parse_contexts(call: ContextsCall, replies: Sequence[Any]) -> list[AttemptContext | Exception]:
    """Each item's context, in order. Each shared record is decoded once; a malformed one (or
    its read's error) fails only the items that need it, not the batch."""
    n, e = len(call.items), len(call.events)
    deliveries, event_rows = replies[:n], replies[n : n + e]
    raw_subs, raw_breakers = replies[n + e], replies[n + e + 1 :]
    if isinstance(raw_subs, Exception):
        raise raw_subs
    subscriber = dict(zip(call.subscribers, raw_subs, strict=True))
    breaker = {s: _decoded(_pairs, r) for s, r in zip(call.subscribers, raw_breakers, strict=True)}
    events = {e: _decoded(_event_fields, r) for e, r in zip(call.events, event_rows, strict=True)}
    out: list[AttemptContext | Exception] = []
    for item, raw in zip(call.items, deliveries, strict=True):
        delivery = _decoded(_delivery_fields, raw)
        event, own_breaker = events[item.event_id], breaker[item.subscriber_id]
        error = next((x for x in (delivery, event, own_breaker) if isinstance(x, Exception)), None)
        out.append(
            error
            if error is not None
            else AttemptContext(delivery, event, subscriber[item.subscriber_id], own_breaker)
        )
    return out
