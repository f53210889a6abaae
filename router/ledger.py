"""The ledger: events and deliveries in Redis, and every move between their queues.

Shapes (names in `subscriptions.keys`):
- accepted events: a hash each (raw body + routing fields) and an entry in the events stream,
  read by the `dispatch` consumer group;
- deliveries: a hash each, an attempts list, and an entry in the ready stream (consumer group
  `deliver`) whenever an attempt is due; failed ones wait in the retry sorted set (score = due
  ms) and are moved back by `move_due_retries`; dead ones are indexed in the dead sorted set.
- queue entries are XDEL'd once acknowledged, so each stream holds only outstanding work and
  its length is the backlog.

Every state change is one Lua script or one MULTI transaction: a crash between two Redis
calls can leave work to be redone (at-least-once), never work lost or a delivery doubled.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Any, NamedTuple, TypeVar

import orjson
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

from router.batching import MicroBatcher
from router.connections import RoundTrips
from subscriptions.ids import id_floor, now_ms
from subscriptions.keys import Keys

DISPATCH_GROUP = "dispatch"
DELIVER_GROUP = "deliver"
STALE_CONSUMER_MS = 3_600_000
# One accept call carries at most this many body bytes (and 128 events): a script call is
# atomic, and a huge one would hold Redis up for everyone else.
ACCEPT_BATCH_BYTES = 1_048_576
# How often an idle reader polls a store that does not block reads (the embedded one).
EMPTY_READ_POLL_SECONDS = 0.05


class EventStatus(StrEnum):
    accepted = "accepted"
    duplicate = "duplicate"
    unroutable = "unroutable"


class DeliveryStatus(StrEnum):
    pending = "pending"
    succeeded = "succeeded"
    failed = "failed"  # will be retried
    dead = "dead"
    skipped = "skipped"


TERMINAL = frozenset({DeliveryStatus.succeeded, DeliveryStatus.dead, DeliveryStatus.skipped})


class Overloaded(Exception):
    """The dispatch backlog is over `ROUTER_MAX_BACKLOG`; the event was not stored."""


@dataclass(frozen=True)
class IncomingEvent:
    event_id: str
    body: bytes
    event: str  # the event name routing uses (after aliases)
    payload_type: str  # the payload's own `type` ('' when it had none)
    location_id: str | None
    company_id: str | None
    webhook_id: str | None
    body_digest: str | None  # sha256 hex of the body, when a body seen before is a duplicate
    received_at: int  # ms
    routable: bool


class WorkItem(NamedTuple):
    """One ready-stream entry: a delivery due for an attempt (a tuple: made for every
    delivery read, and cheaper to build than a frozen dataclass)."""

    entry_id: str
    delivery_id: str
    subscriber_id: str
    event_id: str

    @property
    def member(self) -> str:
        return f"{self.delivery_id} {self.subscriber_id} {self.event_id}"

    @classmethod
    def parse(cls, entry_id: bytes | str, member: bytes | str) -> WorkItem:
        text = member.decode() if isinstance(member, bytes) else member
        delivery_id, subscriber_id, event_id = text.split(" ")
        eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        return cls(eid, delivery_id, subscriber_id, event_id)


class AttemptContext(NamedTuple):
    """What `Ledger.attempt_context` found for one delivery."""

    delivery: dict[str, str]  # status, attempts, schedule_index; empty: the record expired
    event: dict[str, Any]  # body, event, location_id, company_id, received_at; empty: expired
    subscriber: bytes | None  # the subscriber's JSON; None: deleted
    breaker: dict[str, str]  # failures, open_until; empty: closed


@lru_cache(maxsize=65_536)
def _subscriber_suffix(subscriber_id: str) -> str:
    digest = hashlib.blake2b(subscriber_id.encode(), digest_size=5).digest()
    return "".join("0123456789abcdefghjkmnpqrstvwxyz"[b % 32] for b in digest)


def delivery_id_for(event_id: str, subscriber_id: str) -> str:
    """Deterministic, so re-dispatching an event can never create a second delivery for the
    same subscriber; it sorts by the event's time, like the event id it embeds."""
    return f"dlv_{event_id.removeprefix('evt_')}{_subscriber_suffix(subscriber_id)}"


# A batch of accepts in one call (concurrent requests share it; see `router.batching`).
# KEYS: events stream, stats, then per event: its hash, its webhook-id dedupe key, its body
# dedupe key. ARGV: retention, dedupe window, max backlog, then per event: id, body, event,
# payload type, location, company, webhook id ('' = none), received at, status
# ('accepted'/'unroutable'), whether its body digest counts ('1'/'').
# Returns (status, event id) per event: the original's id for a duplicate, the error message
# for an event whose own writes failed (`pcall`: one event's error is not its batch's).
_ACCEPT = """
local out = {}
local backlog = redis.call('XLEN', KEYS[1])
local function accept(i)
  local a = 4 + 10 * i
  local event_key, webhook_key, body_key = KEYS[3 + 3 * i], KEYS[4 + 3 * i], KEYS[5 + 3 * i]
  local id, webhook, status, by_body = ARGV[a], ARGV[a + 6], ARGV[a + 8], ARGV[a + 9]
  local prior = false
  if webhook ~= '' then prior = redis.call('GET', webhook_key) end
  if not prior and by_body ~= '' then prior = redis.call('GET', body_key) end
  if prior then
    return 'duplicate', prior
  elseif status == 'accepted' and backlog >= tonumber(ARGV[3]) then
    return 'overloaded', ''
  end
  redis.call('HSET', event_key, 'body', ARGV[a + 1], 'event', ARGV[a + 2],
    'payload_type', ARGV[a + 3], 'location_id', ARGV[a + 4], 'company_id', ARGV[a + 5],
    'webhook_id', webhook, 'received_at', ARGV[a + 7], 'status', status)
  redis.call('EXPIRE', event_key, ARGV[1])
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
for i = 0, (#KEYS - 2) / 3 - 1 do
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
"""

# KEYS: events stream, ready stream, deliveries index, event's deliveries, then per
# subscriber (delivery hash, subscriber's deliveries). ARGV: group, entry id ('' = none),
# event id, event name, now, retention, oldest id kept, then per subscriber (delivery id, id).
_CREATE_DELIVERIES = """
local n = (#ARGV - 7) / 2
local created = 0
for i = 1, n do
  local dlv, sub = ARGV[6 + 2 * i], ARGV[7 + 2 * i]
  local dkey, skey = KEYS[3 + 2 * i], KEYS[4 + 2 * i]
  if redis.call('EXISTS', dkey) == 0 then
    redis.call('HSET', dkey, 'event_id', ARGV[3], 'subscriber_id', sub, 'event', ARGV[4],
      'status', 'pending', 'attempts', 0, 'schedule_index', 0,
      'created_at', ARGV[5], 'updated_at', ARGV[5])
    redis.call('EXPIRE', dkey, ARGV[6])
    redis.call('ZADD', KEYS[3], 0, dlv)
    redis.call('ZADD', KEYS[4], 0, dlv)
    redis.call('ZADD', skey, 0, dlv)
    redis.call('ZREMRANGEBYLEX', skey, '-', '(' .. ARGV[7])
    redis.call('EXPIRE', skey, ARGV[6])
    redis.call('XADD', KEYS[2], '*', 'm', dlv .. ' ' .. sub .. ' ' .. ARGV[3])
    created = created + 1
  end
end
redis.call('ZREMRANGEBYLEX', KEYS[3], '-', '(' .. ARGV[7])
redis.call('EXPIRE', KEYS[4], ARGV[6])
if ARGV[2] ~= '' then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
end
return created
"""

# KEYS: ready stream, the parked-subscribers set, then per item its subscriber's parked set.
# ARGV: group, now, then per item (entry id, work member, subscriber id).
_PARK = """
local entries = {}
for i = 1, #KEYS - 2 do
  local a = 3 * i
  redis.call('ZADD', KEYS[2 + i], ARGV[2], ARGV[a + 1])
  redis.call('SADD', KEYS[2], ARGV[a + 2])
  entries[i] = ARGV[a]
end
redis.call('XACK', KEYS[1], ARGV[1], unpack(entries))
redis.call('XDEL', KEYS[1], unpack(entries))
"""

# KEYS: the subscriber's parked set, the parked-subscribers set, ready stream.
# ARGV: subscriber id, how many to release.
_RELEASE_PARKED = """
local members = redis.call('ZPOPMIN', KEYS[1], ARGV[2])
for i = 1, #members, 2 do redis.call('XADD', KEYS[3], '*', 'm', members[i]) end
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
return #members / 2
"""

# A batch of outcomes in one call (see `router.batching`).
# KEYS: retry set, dead set, ready stream, open breakers, then per outcome: the delivery, its
# attempts, its subscriber's breaker. ARGV per outcome: the number of field/value values
# that end it, group, entry id, work member, delivery id, attempt JSON ('' = none),
# retention, retry due ('' = none), dead ('1'/'0'), breaker ('ok'/'fail'/''), breaker
# threshold, open until, subscriber id, then the delivery's field/value pairs.
# Returns 1 per outcome recorded, or the error message of one that failed (`pcall`: one
# outcome's error is not its batch's).
_FINISH = """
local out = {}
local function finish(i, a, nfields)
  local delivery, attempts, breaker = KEYS[5 + 3 * i], KEYS[6 + 3 * i], KEYS[7 + 3 * i]
  local group, entry, member, dlv = ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
  local attempt, retention, due, dead = ARGV[a + 6], ARGV[a + 7], ARGV[a + 8], ARGV[a + 9]
  local mode, threshold, open_until, sub = ARGV[a + 10], ARGV[a + 11], ARGV[a + 12], ARGV[a + 13]
  redis.call('HSET', delivery, unpack(ARGV, a + 14, a + 13 + nfields))
  if attempt ~= '' then
    redis.call('RPUSH', attempts, attempt)
    redis.call('EXPIRE', attempts, retention)
  end
  if due ~= '' then redis.call('ZADD', KEYS[1], due, member) end
  if dead == '1' then redis.call('ZADD', KEYS[2], 0, dlv) end
  redis.call('XACK', KEYS[3], group, entry)
  redis.call('XDEL', KEYS[3], entry)
  if mode == 'ok' then
    if redis.call('DEL', breaker) == 1 then redis.call('SREM', KEYS[4], sub) end
  elseif mode == 'fail' then
    local failures = redis.call('HINCRBY', breaker, 'failures', 1)
    redis.call('EXPIRE', breaker, retention)
    if failures >= tonumber(threshold) then
      redis.call('HSET', breaker, 'open_until', open_until)
      redis.call('SADD', KEYS[4], sub)
    end
  end
end
local a = 0
for i = 0, (#KEYS - 4) / 3 - 1 do
  local nfields = tonumber(ARGV[a + 1])
  local ok, err = pcall(finish, i, a, nfields)
  if ok then
    out[#out + 1] = 1
  else
    out[#out + 1] = type(err) == 'table' and err.err or tostring(err)
  end
  a = a + 13 + nfields
end
return out
"""

# What a batch of attempts needs of their deliveries, subscribers and breakers, in one call
# (see `router.batching`); each subscriber once, however many of the batch's deliveries are
# its. Event bodies are read beside it, by plain commands: copying them through Lua would
# hold Redis for as long as a batch of large bodies takes.
# KEYS: subscribers hash, then n deliveries, s breakers. ARGV: n, s, s subscriber ids.
# Returns the n deliveries (status, attempts, schedule index), s subscribers (JSON or nil),
# s breakers (HGETALL).
_CONTEXTS = """
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
"""

_MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('XADD', KEYS[2], '*', 'm', member)
end
return #due
"""


def _s(value: bytes | None) -> str | None:
    return None if value is None or value == b"" else value.decode()


_EVENT_FIELDS = ("body", "event", "location_id", "company_id", "received_at")
_T = TypeVar("_T")
Command = tuple[Any, ...]  # a command's name and arguments, as sent


def _decoded(decode: Callable[[Any], _T], raw: Any) -> _T | Exception:
    """`decode(raw)`, or the exception it (or the read that produced `raw`) raised."""
    if isinstance(raw, Exception):
        return raw
    try:
        return decode(raw)
    except Exception as exc:  # handed to the caller that needs this record
        return exc


def _event_fields(row: list[bytes | None]) -> dict[str, Any]:
    """An event's fields for an attempt (HMGET of `_EVENT_FIELDS`); empty if it expired."""
    if row[0] is None:
        return {}
    return {
        "body": row[0],
        "event": _s(row[1]),
        "location_id": _s(row[2]),
        "company_id": _s(row[3]),
        "received_at": int(row[4] or 0),
    }


# What an attempt needs of its delivery record (the rest is for operators).
_DELIVERY_FIELDS = ("status", "attempts", "schedule_index")


def _delivery_fields(row: list[bytes | None]) -> dict[str, str]:
    """A delivery's fields for an attempt (HMGET of `_DELIVERY_FIELDS`); empty if it expired."""
    if row[0] is None:
        return {}
    return {f: v.decode() for f, v in zip(_DELIVERY_FIELDS, row, strict=True) if v is not None}


def _pairs(flat: list[bytes]) -> dict[str, str]:
    """A hash as a script returns it (field, value, field, value...), decoded."""
    return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}


def decode_hash(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


class Ledger:
    """All reads and writes of events and deliveries."""

    def __init__(
        self, redis: Redis, keys: Keys, *, retention: int, dedupe_window: int, max_backlog: int
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.retention = retention
        self.dedupe_window = dedupe_window
        self.max_backlog = max_backlog
        self._accept = redis.register_script(_ACCEPT)
        self._create = redis.register_script(_CREATE_DELIVERIES)
        self._move_due = redis.register_script(_MOVE_DUE)
        self._park = redis.register_script(_PARK)
        self._release_parked = redis.register_script(_RELEASE_PARKED)
        self._finish = redis.register_script(_FINISH)
        self._contexts_script = redis.register_script(_CONTEXTS)
        # Those sent through `run_commands`, by digest (the others redis-py sends itself).
        self._scripts = (
            self._accept,
            self._create,
            self._park,
            self._release_parked,
            self._finish,
            self._contexts_script,
        )
        self._round_trips = RoundTrips(redis)
        # Ingest and delivery each get their own lanes, so neither waits behind the other.
        self._accepts = MicroBatcher(
            self._accept_batch, weight=lambda e: len(e.body), max_weight=ACCEPT_BATCH_BYTES
        )
        # A delivery's context and outcome wait on no receiver, so one batch at a time each:
        # under load, four lanes flushed batches of ~18 deliveries, one lane ~25, and the
        # router spent 4-16% less CPU per delivery; one round trip of waiting is well below
        # the POST's own time.
        self._contexts = MicroBatcher(self._context_batch, max_in_flight=1)
        self._outcomes = MicroBatcher(self._finish_batch, max_in_flight=1)

    # ---------------------------------------------------------------- ingest
    async def accept(self, event: IncomingEvent) -> tuple[EventStatus, str]:
        """Store `event` durably (dedupe, backlog check, stream entry) in one script call
        shared with concurrent requests' accepts; returns once its own write is confirmed,
        with its status and id (the original's id for a duplicate).

        Raises Overloaded if the dispatch backlog is full.
        """
        status, event_id = await self._accepts.run(event)
        if status == b"overloaded":
            raise Overloaded
        return EventStatus(status.decode()), event_id.decode()

    async def _accept_batch(
        self, events: list[IncomingEvent]
    ) -> list[tuple[bytes, bytes] | Exception]:
        k = self.keys
        keys = [k.events_stream, k.stats]
        args: list[str | bytes | int] = [self.retention, self.dedupe_window, self.max_backlog]
        results: list[tuple[bytes, bytes] | Exception | None] = []
        for e in events:
            try:
                own_keys, own_args = self._accept_item(e)
            except (UnicodeError, TypeError, ValueError) as exc:
                # Checked at the HTTP boundary already; should one slip through, it fails its
                # own request only, never the batch it happened to share.
                results.append(exc)
                continue
            keys += own_keys
            args += own_args
            results.append(None)
        reply = await self._run_script(self._accept, keys=keys, args=args) if len(keys) > 2 else []
        replies = iter(range(0, len(reply), 2))
        out: list[tuple[bytes, bytes] | Exception] = []
        for result in results:
            if result is not None:
                out.append(result)
                continue
            i = next(replies)
            out.append(
                ResponseError(reply[i + 1].decode())
                if reply[i] == b"error"
                else (reply[i], reply[i + 1])
            )
        return out

    def _accept_item(self, e: IncomingEvent) -> tuple[list[str], list[bytes | int]]:
        """One event's keys and arguments for `_ACCEPT`, every string encoded here (so an
        unencodable one raises before it is part of a batch)."""
        k = self.keys
        keys = [
            k.event(e.event_id),
            k.dedupe(e.webhook_id or e.event_id),
            k.body_seen(e.body_digest or e.event_id),
        ]
        args: list[bytes | int] = [
            e.event_id.encode(),
            e.body,
            e.event.encode(),
            e.payload_type.encode(),
            (e.location_id or "").encode(),
            (e.company_id or "").encode(),
            (e.webhook_id or "").encode(),
            e.received_at,
            (EventStatus.accepted if e.routable else EventStatus.unroutable).value.encode(),
            b"1" if e.body_digest else b"",
        ]
        return keys, args

    def _call(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Command:
        """A call of one of our scripts, by digest (sent in full only when Redis lacks it)."""
        return ("EVALSHA", script.sha, len(keys), *keys, *args)

    async def _run_script(self, script: AsyncScript, *, keys: list[str], args: list[Any]) -> Any:
        """The reply of one script call; an error reply is raised."""
        (reply,) = await self.run_commands([self._call(script, keys, args)])
        return reply

    async def run_commands(
        self, commands: Sequence[Command], *, raise_on_error: bool = True
    ) -> list[Any]:
        """The replies to `commands`, sent in one round trip; error replies are raised (the
        first) or, with `raise_on_error=False`, returned in their places. If Redis forgot our
        scripts (first use, a restart, SCRIPT FLUSH), they are loaded and all is sent again:
        Redis forgets every script at once, so no call of the first sending ran."""
        replies = await self._round_trips.execute(commands)
        if any(isinstance(r, NoScriptError) for r in replies):
            for script in self._scripts:
                await self.redis.script_load(script.script)
            replies = await self._round_trips.execute(commands)
        if raise_on_error and (
            error := next((r for r in replies if isinstance(r, ResponseError)), None)
        ):
            raise error
        return replies

    # ---------------------------------------------------------------- consumer groups
    async def ensure_groups(self) -> None:
        """Create both consumer groups (and their streams) if missing; safe to repeat.

        Called at start and again after Redis answers NOGROUP (a restarted Redis that kept
        no data).
        """
        for stream, group in (
            (self.keys.events_stream, DISPATCH_GROUP),
            (self.keys.ready_stream, DELIVER_GROUP),
        ):
            try:
                await self.redis.xgroup_create(stream, group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def _read(
        self, stream: str, group: str, consumer: str, count: int, block_ms: int
    ) -> list[tuple[str, bytes]]:
        # Sent raw: redis-py's reply parsing (a dict per entry) cost more than the read.
        read = ("XREADGROUP", "GROUP", group, consumer, "COUNT", count, "BLOCK", block_ms)
        started = time.monotonic()
        (reply,) = await self.run_commands([(*read, "STREAMS", stream, ">")])
        if not reply:
            # Redis answers empty once block_ms has passed; the embedded store answers at once
            # (it does not block this read), and its readers would spin a core if not held here.
            left = block_ms / 1000 - (time.monotonic() - started)
            if left > 0:
                await asyncio.sleep(min(left, EMPTY_READ_POLL_SECONDS))
            return []
        # RESP2: [[stream, entries]]; RESP3 (and fakeredis): {stream: entries}. Each entry is
        # [entry id, [field, value]].
        (entries,) = reply.values() if isinstance(reply, dict) else (e for _, e in reply)
        return [(entry_id.decode(), fields[1]) for entry_id, fields in entries]

    async def _claim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int
    ) -> list[tuple[str, bytes]]:
        reply = await self.redis.xautoclaim(
            stream, group, consumer, min_idle_time=min_idle_ms, start_id="0-0", count=count
        )
        out: list[tuple[str, bytes]] = []
        for entry_id, fields in reply[1]:
            if fields:  # a deleted entry comes back as None
                out.append((entry_id.decode(), next(iter(fields.values()))))
            else:
                await self.redis.xack(stream, group, entry_id)
        return out

    async def beat(self, consumer: str, ttl_ms: int) -> None:
        """Say that `consumer` is alive for the next `ttl_ms`."""
        await self.redis.set(self.keys.consumer_heartbeat(consumer), b"1", px=ttl_ms)

    async def forget(self, consumer: str) -> None:
        """Say that `consumer` is gone: whatever it still holds is taken over at once."""
        await self.redis.delete(self.keys.consumer_heartbeat(consumer))

    async def _claim_from_dead(
        self, stream: str, group: str, consumer: str, count: int
    ) -> list[tuple[str, bytes]]:
        """Take over entries pending with consumers whose heartbeat has expired (a killed
        process), without waiting for them to look idle; forget those consumers once empty."""
        summary = await self.redis.xpending(stream, group)
        owners = [
            (c["name"].decode() if isinstance(c["name"], bytes) else c["name"])
            for c in summary.get("consumers") or []
        ]
        others = [name for name in owners if name != consumer]
        if not others:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in others:
                pipe.exists(self.keys.consumer_heartbeat(name))
            alive = await pipe.execute()
        out: list[tuple[str, bytes]] = []
        for name, is_alive in zip(others, alive, strict=True):
            if is_alive or len(out) >= count:
                continue
            pending = await self.redis.xpending_range(
                stream, group, min="-", max="+", count=count - len(out), consumername=name
            )
            ids = [p["message_id"] for p in pending]
            if ids:
                claimed = await self.redis.xclaim(stream, group, consumer, 0, ids)
                for entry_id, fields in claimed:
                    if fields:
                        out.append((entry_id.decode(), next(iter(fields.values()))))
                    else:
                        await self.redis.xack(stream, group, entry_id)
            if len(ids) < count:
                await self.redis.xgroup_delconsumer(stream, group, name)
        return out

    # ---------------------------------------------------------------- dispatch
    async def read_events(self, consumer: str, count: int, block_ms: int) -> list[tuple[str, str]]:
        """New (entry id, event id) pairs for this dispatcher."""
        raw = await self._read(self.keys.events_stream, DISPATCH_GROUP, consumer, count, block_ms)
        return [(entry, value.decode()) for entry, value in raw]

    async def claim_stale_events(
        self, consumer: str, min_idle_ms: int, count: int = 100
    ) -> list[tuple[str, str]]:
        """Events another dispatcher took but will not finish: it died (its heartbeat
        expired), or it has held them longer than `min_idle_ms`."""
        raw = await self._claim_from_dead(self.keys.events_stream, DISPATCH_GROUP, consumer, count)
        if not raw:
            raw = await self._claim(
                self.keys.events_stream, DISPATCH_GROUP, consumer, min_idle_ms, count
            )
        return [(entry, value.decode()) for entry, value in raw]

    async def routing_fields(self, event_ids: Sequence[str]) -> list[dict[str, str | None] | None]:
        """For each event: its name, location and company (None if it has expired)."""
        rows = await self.run_commands(
            [("HMGET", self.keys.event(e), "event", "location_id", "company_id") for e in event_ids]
        )
        out: list[dict[str, str | None] | None] = []
        for event, location, company in rows:
            if event is None:
                out.append(None)
            else:
                out.append(
                    {
                        "event": event.decode(),
                        "location_id": _s(location),
                        "company_id": _s(company),
                    }
                )
        return out

    async def create_deliveries(self, plans: Sequence[tuple[str, str, str, Sequence[str]]]) -> int:
        """For each (stream entry, event id, event, subscriber ids): one pending delivery per
        subscriber that has none yet for the event, each queued as ready, and the entry's
        acknowledgement — atomically per event, all in one round trip. Returns how many were
        created."""
        k = self.keys
        now = now_ms()
        floor = id_floor("dlv", now - self.retention * 1000)
        calls: list[Command] = []
        for entry_id, event_id, event, subscriber_ids in plans:
            keys = [k.events_stream, k.ready_stream, k.deliveries, k.event_deliveries(event_id)]
            args: list[str | int] = [
                DISPATCH_GROUP,
                entry_id,
                event_id,
                event,
                now,
                self.retention,
                floor,
            ]
            for sub in subscriber_ids:
                dlv = delivery_id_for(event_id, sub)
                keys += [k.delivery(dlv), k.subscriber_deliveries(sub)]
                args += [dlv, sub]
            calls.append(self._call(self._create, keys, args))
        return sum(int(n) for n in await self.run_commands(calls))

    # ---------------------------------------------------------------- delivery queue
    async def read_ready(self, consumer: str, count: int, block_ms: int) -> list[WorkItem]:
        raw = await self._read(self.keys.ready_stream, DELIVER_GROUP, consumer, count, block_ms)
        return [WorkItem.parse(entry, member) for entry, member in raw]

    async def claim_stale_ready(
        self, consumer: str, min_idle_ms: int, count: int = 100
    ) -> list[WorkItem]:
        """Deliveries another worker took but will not finish: it died (its heartbeat
        expired), or it has held them longer than `min_idle_ms`."""
        raw = await self._claim_from_dead(self.keys.ready_stream, DELIVER_GROUP, consumer, count)
        if not raw:
            raw = await self._claim(
                self.keys.ready_stream, DELIVER_GROUP, consumer, min_idle_ms, count
            )
        return [WorkItem.parse(entry, member) for entry, member in raw]

    async def attempt_context(self, item: WorkItem) -> AttemptContext:
        """Everything one attempt needs: the delivery, the event (raw body included), the
        subscriber's JSON and its breaker state; empty or None for missing ones. Fetched in
        one script call shared with the attempts starting alongside it."""
        return await self._contexts.run(item)

    async def _context_batch(self, items: list[WorkItem]) -> list[AttemptContext | Exception]:
        k = self.keys
        subs = list(dict.fromkeys(item.subscriber_id for item in items))
        event_ids = list(dict.fromkeys(item.event_id for item in items))
        keys = [
            k.subscribers,
            *(k.delivery(item.delivery_id) for item in items),
            *(k.breaker(sub) for sub in subs),
        ]

        calls = [
            self._call(self._contexts_script, keys, [len(items), len(subs), *subs]),
            *(("HMGET", k.event(event_id), *_EVENT_FIELDS) for event_id in event_ids),
        ]
        reply, *event_rows = await self.run_commands(calls, raise_on_error=False)
        if isinstance(reply, Exception):
            raise reply
        deliveries, raw_subs, raw_breakers = reply
        # Each shared record is decoded once; a malformed one (or its read's error) fails only
        # the deliveries that need it, not the batch.
        subscriber = dict(zip(subs, raw_subs, strict=True))
        breaker = {s: _decoded(_pairs, r) for s, r in zip(subs, raw_breakers, strict=True)}
        events = {e: _decoded(_event_fields, r) for e, r in zip(event_ids, event_rows, strict=True)}
        out: list[AttemptContext | Exception] = []
        for item, raw in zip(items, deliveries, strict=True):
            delivery = _decoded(_delivery_fields, raw)
            event, own_breaker = events[item.event_id], breaker[item.subscriber_id]
            error = next(
                (x for x in (delivery, event, own_breaker) if isinstance(x, Exception)), None
            )
            out.append(
                error
                if error is not None
                else AttemptContext(delivery, event, subscriber[item.subscriber_id], own_breaker)
            )
        return out

    async def finish(
        self,
        item: WorkItem,
        *,
        status: DeliveryStatus,
        attempt: dict[str, Any] | None = None,
        fields: dict[str, str | int] | None = None,
        retry_at: int | None = None,
        breaker: bool | None = None,
        breaker_threshold: int = 0,
        probe_interval_ms: int = 0,
    ) -> None:
        """Record the outcome of handling `item`, atomically (one script call, shared with
        other outcomes recorded alongside it): the delivery's new state, the attempt (if one
        was made), its retry or dead-letter entry, the stream ack, and the subscriber's
        breaker.

        `breaker` is True for a success (closes the subscriber's breaker), False for a failed
        attempt (counts towards opening it for `probe_interval_ms` at `breaker_threshold`
        consecutive failures), None when no attempt reached the receiver.
        """
        k = self.keys
        now = now_ms()
        mapping: dict[str, str | int] = {"status": status.value, "updated_at": now}
        mapping.update(fields or {})
        flat: list[str | int] = [x for pair in mapping.items() for x in pair]
        keys = (
            k.delivery(item.delivery_id),
            k.delivery_attempts(item.delivery_id),
            k.breaker(item.subscriber_id),
        )
        args = (
            len(flat),
            DELIVER_GROUP,
            item.entry_id,
            item.member,
            item.delivery_id,
            orjson.dumps(attempt) if attempt is not None else b"",
            self.retention,
            "" if retry_at is None else retry_at,
            "1" if status is DeliveryStatus.dead else "0",
            {True: "ok", False: "fail", None: ""}[breaker],
            breaker_threshold,
            now + probe_interval_ms,
            item.subscriber_id,
            *flat,
        )
        await self._outcomes.run((keys, args))

    async def _finish_batch(
        self, outcomes: list[tuple[tuple[str, ...], tuple[Any, ...]]]
    ) -> list[ResponseError | None]:
        k = self.keys
        keys = [k.retry_schedule, k.dead, k.ready_stream, k.open_breakers]
        args: list[Any] = []
        for own_keys, own_args in outcomes:
            keys += own_keys
            args += own_args
        reply = await self._run_script(self._finish, keys=keys, args=args)
        return [None if r == 1 else ResponseError(r.decode()) for r in reply]

    async def ack(self, item: WorkItem) -> None:
        """Drop a queue entry that needs no attempt, changing no delivery record."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.keys.ready_stream, DELIVER_GROUP, item.entry_id)
            pipe.xdel(self.keys.ready_stream, item.entry_id)
            await pipe.execute()

    async def acquire_probe(self, subscriber_id: str, ttl_ms: int) -> bool:
        """True for the one caller allowed to probe an open breaker until `ttl_ms` passes."""
        return bool(
            await self.redis.set(self.keys.probe_lock(subscriber_id), b"1", nx=True, px=ttl_ms)
        )

    async def release_probe(self, subscriber_id: str) -> None:
        await self.redis.delete(self.keys.probe_lock(subscriber_id))

    async def park(self, items: Sequence[WorkItem]) -> None:
        """Set work aside until its subscriber has room (`release_parked`), acknowledged
        atomically: a subscriber that cannot take more work keeps it out of the shared ready
        queue instead of cycling it through, so others' deliveries never queue behind it."""
        if not items:
            return
        k = self.keys
        keys = [k.ready_stream, k.parked_subscribers]
        args: list[str | int] = [DELIVER_GROUP, now_ms()]
        for item in items:
            keys.append(k.parked(item.subscriber_id))
            args += [item.entry_id, item.member, item.subscriber_id]
        await self._run_script(self._park, keys=keys, args=args)

    async def release_parked(self, subscriber_id: str, count: int) -> int:
        """Move up to `count` of a subscriber's oldest parked work back to the ready queue."""
        k = self.keys
        released = await self._run_script(
            self._release_parked,
            keys=[k.parked(subscriber_id), k.parked_subscribers, k.ready_stream],
            args=[subscriber_id, count],
        )
        return int(released)

    async def parked_subscribers(self) -> list[tuple[str, bool]]:
        """Each subscriber with parked work, and whether its breaker lets attempts through
        now (closed, or open past its probe time)."""
        k = self.keys
        subs = sorted(m.decode() for m in await self.redis.smembers(k.parked_subscribers))
        if not subs:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for sub in subs:
                pipe.hget(k.breaker(sub), "open_until")
            rows = await pipe.execute()
        now = now_ms()
        return [(sub, int(until or 0) <= now) for sub, until in zip(subs, rows, strict=True)]

    async def hand_back(self, items: Sequence[WorkItem]) -> None:
        """Requeue work this process took but will not start (shutdown) as fresh ready
        entries any worker can read, acknowledging the old ones in the same transaction."""
        if not items:
            return
        k = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            for item in items:
                pipe.xadd(k.ready_stream, {"m": item.member})
            pipe.xack(k.ready_stream, DELIVER_GROUP, *[i.entry_id for i in items])
            pipe.xdel(k.ready_stream, *[i.entry_id for i in items])
            await pipe.execute()

    async def move_due_retries(self, limit: int = 1000) -> int:
        """Move deliveries whose retry time has come back to the ready stream (atomic)."""
        moved = await self._move_due(
            keys=[self.keys.retry_schedule, self.keys.ready_stream], args=[now_ms(), limit]
        )
        return int(moved)

    # ---------------------------------------------------------------- operator reads
    async def delivery(self, delivery_id: str) -> dict[str, str] | None:
        raw = await self.redis.hgetall(self.keys.delivery(delivery_id))
        return decode_hash(raw) | {"id": delivery_id} if raw else None

    async def deliveries(self, delivery_ids: Sequence[str]) -> list[dict[str, str]]:
        """The deliveries among `delivery_ids` that still exist, in that order."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for dlv in delivery_ids:
                pipe.hgetall(self.keys.delivery(dlv))
            rows = await pipe.execute()
        return [decode_hash(r) | {"id": d} for d, r in zip(delivery_ids, rows, strict=True) if r]

    async def attempts(self, delivery_id: str) -> list[dict[str, Any]]:
        raw = await self.redis.lrange(self.keys.delivery_attempts(delivery_id), 0, -1)
        return [orjson.loads(a) for a in raw]

    async def delivery_ids_page(
        self, index: str, after: str | None, count: int, newest_first: bool = True
    ) -> list[str]:
        """Up to `count` ids of a lexicographic delivery index, past the cursor `after`."""
        if newest_first:
            upper = f"({after}" if after else "+"
            raw = await self.redis.zrevrangebylex(index, upper, "-", start=0, num=count)
        else:
            lower = f"({after}" if after else "-"
            raw = await self.redis.zrangebylex(index, lower, "+", start=0, num=count)
        return [r.decode() for r in raw]

    async def event(self, event_id: str) -> dict[str, Any] | None:
        raw = await self.redis.hgetall(self.keys.event(event_id))
        if not raw:
            return None
        body = raw.pop(b"body", b"")
        return decode_hash(raw) | {"id": event_id, "body": body}

    async def requeue(self, delivery_ids: Sequence[str]) -> int:
        """Give each delivery a fresh round of the retry schedule, starting now.

        Works on any state but `pending` (already queued or in flight: queueing it again
        would run two attempts at once); returns how many were requeued.
        """
        rows = [
            r
            for r in await self.deliveries(delivery_ids)
            if r["status"] != DeliveryStatus.pending.value
        ]
        if not rows:
            return 0
        k = self.keys
        now = now_ms()
        async with self.redis.pipeline(transaction=True) as pipe:
            for row in rows:
                member = f"{row['id']} {row['subscriber_id']} {row['event_id']}"
                pipe.hset(
                    k.delivery(row["id"]),
                    mapping={
                        "status": DeliveryStatus.pending.value,
                        "schedule_index": 0,
                        "updated_at": now,
                        "reason": "",
                    },
                )
                pipe.zrem(k.dead, row["id"])
                pipe.zadd(k.retry_schedule, {member: now})
            await pipe.execute()
        await self.move_due_retries()
        return len(rows)

    async def depths(self) -> dict[str, int]:
        """Queue depths for metrics: ready, retry, dead, dispatch backlog, open breakers."""
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(k.ready_stream)
            pipe.zcard(k.retry_schedule)
            pipe.zcard(k.dead)
            pipe.xlen(k.events_stream)
            pipe.scard(k.open_breakers)
            ready, retry, dead, backlog, breakers = await pipe.execute()
        return {
            "ready": ready,
            "retry": retry,
            "dead": dead,
            "dispatch": backlog,
            "open_breakers": breakers,
        }

    async def trim(self) -> None:
        """Forget index entries of deliveries older than the retention (records expired), and
        consumers of restarted processes that hold nothing (each start adds one)."""
        floor = id_floor("dlv", now_ms() - self.retention * 1000)
        await self.redis.zremrangebylex(self.keys.dead, "-", f"({floor}")
        await self.redis.zremrangebylex(self.keys.deliveries, "-", f"({floor}")
        for stream, group in (
            (self.keys.events_stream, DISPATCH_GROUP),
            (self.keys.ready_stream, DELIVER_GROUP),
        ):
            for info in await self.redis.xinfo_consumers(stream, group):
                name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
                if info["pending"] == 0 and info["idle"] > STALE_CONSUMER_MS:
                    await self.redis.xgroup_delconsumer(stream, group, name)
