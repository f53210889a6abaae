"""Accepting events: a batch of one partition's events in one call (concurrent requests share
it, see `router.storage.batching`), each deduplicated, stored and queued for dispatch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.exceptions import ResponseError

from router.core.records import EventStatus, IncomingEvent
from router.storage.keys import RouterKeys
from router.storage.scripts import Command, Script

# KEYS: events stream, stats, event index, then per event: its hash, its webhook-id dedupe
# key, its body dedupe key. ARGV: retention, dedupe window, max backlog, then per event
# (STRIDE values): id, body, event, payload type, location, company, webhook id ('' = none),
# received at, status ('accepted'/'unroutable'), whether its body digest counts ('1'/''), W3C
# traceparent ('' = none: tracing is off).
# Returns (status, event id) per event: the original's id for a duplicate, 'overloaded', or
# the error message of an event whose own writes failed (`pcall`: not its batch's).
STRIDE = 11
SCRIPT = Script(
    "accept",
    """
local out = {}
local backlog = redis.call('XLEN', KEYS[1])
local function accept(i)
  local a = 3 + 11 * i
  local event_key, webhook_key, body_key = KEYS[4 + 3 * i], KEYS[5 + 3 * i], KEYS[6 + 3 * i]
  local id, webhook, status, by_body = ARGV[a + 1], ARGV[a + 7], ARGV[a + 9], ARGV[a + 10]
  local prior = false
  if webhook ~= '' then prior = redis.call('GET', webhook_key) end
  if not prior and by_body ~= '' then prior = redis.call('GET', body_key) end
  if prior then
    return 'duplicate', prior
  elseif status == 'accepted' and backlog >= tonumber(ARGV[3]) then
    return 'overloaded', ''
  end
  redis.call('HSET', event_key, 'body', ARGV[a + 2], 'event', ARGV[a + 3],
    'payload_type', ARGV[a + 4], 'location_id', ARGV[a + 5], 'company_id', ARGV[a + 6],
    'webhook_id', webhook, 'received_at', ARGV[a + 8], 'status', status)
  if ARGV[a + 11] ~= '' then redis.call('HSET', event_key, 'traceparent', ARGV[a + 11]) end
  redis.call('EXPIRE', event_key, ARGV[1])
  redis.call('ZADD', KEYS[3], 0, id)
  if webhook ~= '' then redis.call('SET', webhook_key, id, 'EX', ARGV[2]) end
  if by_body ~= '' then redis.call('SET', body_key, id, 'EX', ARGV[2]) end
  if status == 'accepted' then
    redis.call('XADD', KEYS[1], '*', 'e', id)
    backlog = backlog + 1
  else
    redis.call('HINCRBY', KEYS[2], 'unroutable', 1)
  end
  return status, id
end
for i = 0, (#KEYS - 3) / 3 - 1 do
  -- pcall with arguments, not a closure per event: closures were a tenth of the script's time
  local ok, status, id = pcall(accept, i)
  if ok then
    out[#out + 1] = status
    out[#out + 1] = id
  else
    out[#out + 1] = 'error'
    out[#out + 1] = type(status) == 'table' and status.err or tostring(status)
  end
end
return out
""",
)

# The accept's result for one event: its status ('accepted', 'unroutable', 'duplicate' or
# 'overloaded') and the event id, as Redis answered them.
Accepted = tuple[bytes, bytes]
_ROUTABLE, _UNROUTABLE = EventStatus.accepted.encode(), EventStatus.unroutable.encode()


def _event_args(keys: RouterKeys, partition: int, e: IncomingEvent) -> tuple[list[str], list[Any]]:
    """One event's keys and STRIDE arguments, every string encoded here (so an unencodable
    one raises before it is part of a batch)."""
    own_keys = [
        keys.event(e.event_id),
        keys.dedupe(partition, e.webhook_id or e.event_id),
        keys.body_seen(partition, e.body_digest or e.event_id),
    ]
    args = [
        e.event_id.encode(),
        e.body,
        e.event.encode(),
        e.payload_type.encode(),
        (e.location_id or "").encode(),
        (e.company_id or "").encode(),
        (e.webhook_id or "").encode(),
        e.received_at,
        _ROUTABLE if e.routable else _UNROUTABLE,
        b"1" if e.body_digest else b"",
        (e.traceparent or "").encode(),
    ]
    return own_keys, args


def accept_command(
    keys: RouterKeys,
    partition: int,
    events: Sequence[IncomingEvent],
    *,
    retention: int,
    dedupe_window: int,
    max_backlog: int,
) -> tuple[Command | None, list[Exception | None]]:
    """The call for `events` (all of `partition`), and per event the error that kept it out
    of the call (None for those in it, in order). The command is None when none could join.
    `max_backlog` is this partition's share of the dispatch backlog."""
    all_keys: list[str] = [
        keys.events_stream(partition),
        keys.stats(partition),
        keys.event_index(partition),
    ]
    args: list[Any] = [retention, dedupe_window, max_backlog]
    left_out: list[Exception | None] = []
    for event in events:
        try:
            own_keys, own_args = _event_args(keys, partition, event)
        except (UnicodeError, TypeError, ValueError) as exc:
            # Checked at the HTTP boundary already; should one slip through, it fails its own
            # request only, never the batch it happened to share.
            left_out.append(exc)
            continue
        all_keys += own_keys
        args += own_args
        left_out.append(None)
    command = SCRIPT.command(all_keys, args) if len(all_keys) > 3 else None
    return command, left_out


def parse_accept(
    reply: list[bytes], left_out: list[Exception | None]
) -> list[Accepted | Exception]:
    """Each event's result, in the order given to `accept_command`."""
    results = iter(range(0, len(reply), 2))
    out: list[Accepted | Exception] = []
    for error in left_out:
        if error is not None:
            out.append(error)
            continue
        i = next(results)
        status, value = reply[i], reply[i + 1]
        out.append(ResponseError(value.decode()) if status == b"error" else (status, value))
    return out
