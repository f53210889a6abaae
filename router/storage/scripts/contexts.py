"""Attempt contexts: what a batch of attempts needs of their deliveries, subscribers and
breakers, in one call (concurrent attempts share it, see `router.storage.batching`), each
subscriber read once however many of the batch's deliveries are its.

Event bodies are read beside the script, by plain commands in the same round trip: copying
them through Lua would hold Redis for as long as a batch of large bodies takes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from router.core.records import AttemptContext, WorkItem
from router.storage.keys import RouterKeys
from router.storage.scripts import Command, Script

# KEYS: subscribers hash, then n deliveries, s breakers. ARGV: n, s, s subscriber ids.
# Returns the n deliveries (HMGET of DELIVERY_FIELDS), s subscribers (JSON or nil), s breakers
# (HGETALL).
SCRIPT = Script(
    "contexts",
    """
local n, s = tonumber(ARGV[1]), tonumber(ARGV[2])
local deliveries, subscribers, breakers = {}, {}, {}
for i = 1, n do
  deliveries[i] = redis.call('HMGET', KEYS[1 + i], 'status', 'attempts', 'schedule_index')
end
for i = 1, s do
  subscribers[i] = redis.call('HGET', KEYS[1], ARGV[2 + i])
  breakers[i] = redis.call('HGETALL', KEYS[1 + n + i])
end
return {deliveries, subscribers, breakers}
""",
)

# What an attempt needs of its delivery record (the rest is for operators), as the script reads.
DELIVERY_FIELDS = ("status", "attempts", "schedule_index")
EVENT_FIELDS = ("body", "event", "location_id", "company_id", "received_at")
_T = TypeVar("_T")


@dataclass(frozen=True)
class ContextsCall:
    """The commands for a batch's contexts, and what `parse` needs to read their replies."""

    items: list[WorkItem]
    subscribers: list[str]
    events: list[str]
    commands: list[Command]


def contexts_call(keys: RouterKeys, subscribers_hash: str, items: list[WorkItem]) -> ContextsCall:
    subs = list(dict.fromkeys(item.subscriber_id for item in items))
    event_ids = list(dict.fromkeys(item.event_id for item in items))
    script_keys = [
        subscribers_hash,
        *(keys.delivery(item.delivery_id) for item in items),
        *(keys.breaker(sub) for sub in subs),
    ]
    commands = [
        SCRIPT.command(script_keys, [len(items), len(subs), *subs]),
        *(("HMGET", keys.event(event_id), *EVENT_FIELDS) for event_id in event_ids),
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
    """An event's fields for an attempt (HMGET of EVENT_FIELDS); empty if it expired."""
    if row[0] is None:
        return {}
    return {
        "body": row[0],
        "event": _text(row[1]),
        "location_id": _text(row[2]),
        "company_id": _text(row[3]),
        "received_at": int(row[4] or 0),
    }


def _delivery_fields(row: list[bytes | None]) -> dict[str, str]:
    """A delivery's fields for an attempt; empty if it expired."""
    if row[0] is None:
        return {}
    return {f: v.decode() for f, v in zip(DELIVERY_FIELDS, row, strict=True) if v is not None}


def _pairs(flat: list[bytes]) -> dict[str, str]:
    """A hash as a script returns it (field, value, field, value...), decoded."""
    return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}


def parse_contexts(call: ContextsCall, replies: Sequence[Any]) -> list[AttemptContext | Exception]:
    """Each item's context, in order. Each shared record is decoded once; a malformed one (or
    its read's error) fails only the items that need it, not the batch."""
    reply, *event_rows = replies
    if isinstance(reply, Exception):
        raise reply
    deliveries, raw_subs, raw_breakers = reply
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
