"""The ledger: the hot path's reads and writes of events and deliveries in Redis.

Shapes (names in `router.storage.keys`; the whole layout in docs/architecture.md):
- accepted events: a hash each (raw body + routing fields) and an entry in the events stream,
  read by the `dispatch` consumer group;
- deliveries: a hash each, an attempts list, and an entry in the ready stream (consumer group
  `deliver`) whenever an attempt is due; failed ones wait in the retry sorted set (score = due
  ms) and are moved back by `move_due_retries`; dead ones are indexed in the dead sorted set;
  work for a subscriber with no room waits in its parked set.

Every state change is one Lua script (`router.storage.scripts`) or one MULTI transaction on
one partition: a crash between two Redis calls can leave work to be redone (at-least-once),
never work lost or a delivery doubled. Every write that moves work or answers someone is
`durable`: with replicas, it counts only once one holds it (`router.storage.client`).
Operator reads and replays are `router.storage.history`'s.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Sequence

from router.core.outcome import Outcome
from router.core.records import AttemptContext, EventStatus, IncomingEvent, WorkItem, work_member
from router.storage import contexts
from router.storage.batching import MicroBatcher
from router.storage.client import CommandRunner
from router.storage.keys import RouterKeys, by_partition, delivery_partition, event_partition
from router.storage.scripts import (
    Command,
    accept,
    deliveries,
    flow,
    outcomes,
    parking,
    queue,
    retries,
)
from router.storage.streams import DELIVER_GROUP, DISPATCH_GROUP, Heartbeats, Stream
from subscriptions.ids import id_floor, id_time, new_id, now_ms
from subscriptions.keys import SubscriberKeys

# One accept call carries at most this many body bytes (and 128 events): a script call is
# atomic, and a huge one would hold Redis up for everyone else.
ACCEPT_BATCH_BYTES = 1_048_576
MOVE_DUE_LIMIT = 1000
WATERMARK_TTL = 0.02  # seconds a read of the dispatch watermark is reused

# The accept script's statuses as Redis answers them (a lookup: this runs for every event).
_EVENT_STATUSES = {status.value.encode(): status for status in EventStatus}


class Overloaded(Exception):
    """The dispatch backlog is over `ROUTER_MAX_BACKLOG`; the event was not stored."""


# A dispatch plan: (events-stream entry id, event id, event name, entitled subscriber ids).
Plan = tuple[str, str, str, Sequence[str]]
# event, location_id, company_id (traceparent if traced, body if asked)
RoutingFields = dict[str, str | None]


def _text(value: bytes | None) -> str | None:
    return None if value is None or value == b"" else value.decode()


def _texts(names: Sequence[str], values: Sequence[bytes | None]) -> dict[str, str | None]:
    return {name: _text(value) for name, value in zip(names, values, strict=True)}


def _work_partition(item: WorkItem) -> int:
    return delivery_partition(item.delivery_id)


class Ledger:
    """Accepts, fan-out, and every move of a delivery between its queues."""

    def __init__(
        self,
        runner: CommandRunner,
        keys: RouterKeys,
        subscriber_keys: SubscriberKeys,
        *,
        retention: int,
        dedupe_window: int,
        max_backlog: int,
        traced: bool = False,
    ) -> None:
        """`traced`: dispatch and attempts read each event's stored trace context too."""
        self.runner = runner
        self.redis = redis = runner.redis
        self.keys = keys
        self.subscriber_keys = subscriber_keys
        self.retention = retention
        self.dedupe_window = dedupe_window
        self.max_backlog = max_backlog
        self.traced = traced
        self._routing_fields = ("event", "location_id", "company_id") + (
            ("traceparent",) if traced else ()
        )
        self.partitions = keys.all_partitions()
        # Each partition's share of the backlog bound.
        self._backlog_share = math.ceil(max_backlog / keys.partitions)
        self.events = [
            Stream(redis, runner, keys, keys.events_stream(p), DISPATCH_GROUP)
            for p in self.partitions
        ]
        self.ready = [
            Stream(redis, runner, keys, keys.ready_stream(p), DELIVER_GROUP)
            for p in self.partitions
        ]
        self.heartbeats = Heartbeats(redis, keys)
        self._watermark: str | None = None
        self._watermark_at = float("-inf")
        self._watermark_read_ms = 0  # wall-clock ms the last read started, to compare with ids
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
    def new_event_id(self, *, webhook_id: str | None, body_digest: str | None) -> str:
        """An id for an event about to be accepted, marked with the partition that stores it:
        the one its dedupe identity (signed body, else webhook id) maps to, so a duplicate is
        always looked for where its original is; any partition for an event with neither."""
        identity = body_digest or webhook_id
        partitions = self.keys.partitions
        if identity is not None:
            partition = self.keys.partition_for(identity)
        else:
            partition = secrets.randbelow(partitions) if partitions > 1 else 0
        return new_id("evt", mark=partition)

    async def accept(self, event: IncomingEvent) -> tuple[EventStatus, str]:
        """Store `event` durably (dedupe, backlog check, stream entry) in one script call
        shared with concurrent requests' accepts of its partition; returns once its own write
        is confirmed, with its status and id (the original's id for a duplicate).

        Raises Overloaded if the dispatch backlog is full.
        """
        status, event_id = await self._accepts.run(event)
        if status == b"overloaded":
            raise Overloaded
        return _EVENT_STATUSES[status], event_id.decode()

    async def _accept_batch(self, events: list[IncomingEvent]) -> list[accept.Accepted | Exception]:
        groups = by_partition(events, lambda e: event_partition(e.event_id))
        calls: list[Command] = []
        parts: list[tuple[list[IncomingEvent], list[Exception | None], int | None]] = []
        for partition, group in groups.items():
            command, left_out = accept.accept_command(
                self.keys,
                partition,
                group,
                retention=self.retention,
                dedupe_window=self.dedupe_window,
                max_backlog=self._backlog_share,
            )
            parts.append((group, left_out, len(calls) if command is not None else None))
            if command is not None:
                calls.append(command)
        replies = await self.runner.run(calls, raise_on_error=False, durable=True) if calls else []
        results: dict[int, accept.Accepted | Exception] = {}
        for group, left_out, at in parts:
            reply = replies[at] if at is not None else []
            if isinstance(reply, Exception):
                parsed: list[accept.Accepted | Exception] = [reply] * len(group)
            else:
                parsed = accept.parse_accept(reply, left_out)
            for event, result in zip(group, parsed, strict=True):
                results[id(event)] = result
        return [results[id(event)] for event in events]

    async def ensure_groups(self) -> None:
        """Create every partition's consumer groups (and streams) if missing; safe to repeat."""
        for stream in (*self.events, *self.ready):
            await stream.ensure_group()

    # ---------------------------------------------------------------- dispatch
    async def read_events(
        self, partition: int, consumer: str, count: int, block_ms: int
    ) -> list[tuple[str, str]]:
        """New (entry id, event id) pairs of a partition for this dispatcher."""
        raw = await self.events[partition].read(consumer, count, block_ms)
        return [(entry, value.decode()) for entry, value in raw]

    async def claim_stale_events(
        self, partition: int, consumer: str, min_idle_ms: int, count: int = 100
    ) -> list[tuple[str, str]]:
        """Events another dispatcher took but will not finish (`Stream.claim_stale`)."""
        raw = await self.events[partition].claim_stale(consumer, min_idle_ms, count)
        return [(entry, value.decode()) for entry, value in raw]

    async def routing_fields(
        self, event_ids: Sequence[str], *, with_body: bool = False
    ) -> list[RoutingFields | None]:
        """For each event: its name, location and company, its trace context if the ledger is
        `traced`, and `with_body` its raw body too (in the same read); None if it has expired."""
        fields = (*self._routing_fields, *(("body",) if with_body else ()))
        rows = await self.runner.run([("HMGET", self.keys.event(e), *fields) for e in event_ids])
        return [
            None if row[0] is None else {"event": row[0].decode(), **_texts(fields[1:], row[1:])}
            for row in rows
        ]

    async def create_deliveries(self, plans: Sequence[Plan]) -> int:
        """For each plan: one pending delivery per subscriber that has none yet for the
        event, each queued as ready, and the entry's acknowledgement — atomically per event,
        all in one round trip. Returns how many were created."""
        now = now_ms()
        floor = id_floor("dlv", now - self.retention * 1000)
        calls = [
            deliveries.create_deliveries_command(
                self.keys,
                event_partition(event_id),
                group=DISPATCH_GROUP,
                entry_id=entry_id,
                event_id=event_id,
                event=event,
                subscriber_ids=subscriber_ids,
                now=now,
                retention=self.retention,
                oldest_kept=floor,
            )
            for entry_id, event_id, event, subscriber_ids in plans
        ]
        return sum(int(n) for n in await self.runner.run(calls, durable=True))

    # ---------------------------------------------------------------- delivery
    async def read_ready(
        self, partition: int, consumer: str, count: int, block_ms: int
    ) -> list[WorkItem]:
        raw = await self.ready[partition].read(consumer, count, block_ms)
        return [WorkItem.parse(entry, member) for entry, member in raw]

    async def claim_stale_ready(
        self, partition: int, consumer: str, min_idle_ms: int, count: int = 100
    ) -> list[WorkItem]:
        """Deliveries another worker took but will not finish (`Stream.claim_stale`)."""
        raw = await self.ready[partition].claim_stale(consumer, min_idle_ms, count)
        return [WorkItem.parse(entry, member) for entry, member in raw]

    async def attempt_context(self, item: WorkItem) -> AttemptContext:
        """Everything one attempt needs: the delivery, the event (raw body included), the
        subscriber's JSON and its breaker state; empty or None for missing ones. Fetched in
        one round trip shared with the attempts starting alongside it."""
        return await self._contexts.run(item)

    async def attempt_contexts(self, items: list[WorkItem]) -> list[AttemptContext | Exception]:
        """The contexts of attempts about to start together, in one round trip (an item's
        own failure in its place)."""
        return await self._context_batch(items)

    async def _context_batch(self, items: list[WorkItem]) -> list[AttemptContext | Exception]:
        call = contexts.contexts_call(
            self.keys, self.subscriber_keys.subscribers, items, traced=self.traced
        )
        replies = await self.runner.run(call.commands, raise_on_error=False)
        return contexts.parse_contexts(call, replies)

    async def finish(
        self,
        item: WorkItem,
        outcome: Outcome,
        *,
        breaker_threshold: int = 0,
        probe_interval_ms: int = 0,
        breaker_clear: bool = False,
    ) -> int:
        """Record `outcome` of handling `item`, atomically with the stream acknowledgement
        (one script call per partition, shared with other outcomes recorded alongside it),
        and count it against the subscriber's breaker: a failed attempt opens it for
        `probe_interval_ms` at `breaker_threshold` consecutive failures, a success closes it
        (unless `breaker_clear`: the attempt's context found no failure counted).

        Returns what it did to the breaker: the consecutive failures if this outcome opened
        it, -1 if it closed an open one, else 0."""
        now = now_ms()
        prepared = outcomes.finish_args(
            self.keys, item, outcome, group=DELIVER_GROUP, now=now, retention=self.retention
        )
        change = None
        if outcome.breaker is False or (outcome.breaker is True and not breaker_clear):
            change = outcomes.BreakerChange(
                item.subscriber_id, outcome.breaker, breaker_threshold, now + probe_interval_ms
            )
        return await self._outcomes.run((item, prepared, change))

    async def _finish_batch(
        self, batch: list[tuple[WorkItem, outcomes.Prepared, outcomes.BreakerChange | None]]
    ) -> list[Exception | int]:
        by_delivery = by_partition(batch, lambda entry: _work_partition(entry[0]))
        changes = [change for _, _, change in batch if change is not None]
        by_breaker = by_partition(changes, lambda c: self.keys.breaker_partition(c.subscriber_id))
        calls = [
            outcomes.finish_command(self.keys, p, [prepared for _, prepared, _ in group])
            for p, group in by_delivery.items()
        ]
        calls += [
            outcomes.breakers_command(self.keys, p, group, retention=self.retention)
            for p, group in by_breaker.items()
        ]
        replies = await self.runner.run(calls, raise_on_error=False, durable=True)
        turned: dict[int, int] = {}
        for (_, group), reply in zip(by_breaker.items(), replies[len(by_delivery) :], strict=True):
            if not isinstance(reply, Exception):
                turned.update((id(change), int(n)) for change, n in zip(group, reply, strict=True))
        results: dict[int, Exception | None] = {}
        for (_, group), reply in zip(by_delivery.items(), replies, strict=False):
            parsed: list[Exception | None] = (
                [reply] * len(group)
                if isinstance(reply, Exception)
                else outcomes.parse_finish(reply)
            )
            for entry, result in zip(group, parsed, strict=True):
                results[id(entry)] = result
        # A breaker that could not be counted fails no outcome: the delivery's own state is
        # what at-least-once depends on, and the next attempt counts again.
        out: list[Exception | int] = []
        for entry in batch:
            error, change = results[id(entry)], entry[2]
            out.append(error if error is not None else turned.get(id(change), 0) if change else 0)
        return out

    async def ack(self, item: WorkItem) -> None:
        """Drop a queue entry that needs no attempt, changing no delivery record."""
        stream = self.keys.ready_stream(_work_partition(item))
        await self.runner.one(
            queue.ack_command(stream, DELIVER_GROUP, [item.entry_id]), durable=True
        )

    async def acquire_probe(self, subscriber_id: str, ttl_ms: int) -> bool:
        """True for the one caller allowed to probe an open breaker until `ttl_ms` passes."""
        lock = self.keys.probe_lock(subscriber_id)
        return bool(await self.runner.one(("SET", lock, b"1", "NX", "PX", ttl_ms)))

    async def release_probe(self, subscriber_id: str) -> None:
        await self.runner.one(("DEL", self.keys.probe_lock(subscriber_id)))

    async def park(self, items: Sequence[WorkItem]) -> None:
        """Set work aside until its subscriber has room (`release_parked`), acknowledged
        atomically: a subscriber that cannot take more work keeps it out of the shared ready
        queue instead of cycling it through, so others' deliveries never queue behind it."""
        if not items:
            return
        calls = [
            parking.park_command(self.keys, p, group, group=DELIVER_GROUP)
            for p, group in by_partition(items, _work_partition).items()
        ]
        await self.runner.run(calls, durable=True)

    async def release_parked(self, subscriber_id: str, partition: int, count: int) -> int:
        """Move up to `count` of a subscriber's oldest parked work in `partition` back to the
        ready queue; returns how many moved."""
        command = parking.release_command(self.keys, subscriber_id, partition, count)
        return int(await self.runner.one(command, durable=True))

    async def parked_subscribers(self) -> list[tuple[str, int, bool]]:
        """Each (subscriber, partition) with parked work, and whether the subscriber's breaker
        lets attempts through now (closed, or open past its probe time)."""
        k = self.keys
        members = await self.runner.run(
            [("SMEMBERS", k.parked_subscribers(p)) for p in self.partitions]
        )
        parked = sorted(
            (m.decode(), p) for p, subs in zip(self.partitions, members, strict=True) for m in subs
        )
        if not parked:
            return []
        subs = sorted({sub for sub, _ in parked})
        rows = await self.runner.run([("HGET", k.breaker(sub), "open_until") for sub in subs])
        now = now_ms()
        open_until = {sub: int(until or 0) for sub, until in zip(subs, rows, strict=True)}
        return [(sub, p, open_until[sub] <= now) for sub, p in parked]

    async def hand_back(self, items: Sequence[WorkItem]) -> None:
        """Requeue work this process took but will not start (shutdown) as fresh ready
        entries any worker can read, acknowledging the old ones in the same transaction."""
        calls = [
            queue.hand_back_command(self.keys.ready_stream(p), DELIVER_GROUP, group)
            for p, group in by_partition(items, _work_partition).items()
        ]
        if calls:
            await self.runner.run(calls, durable=True)

    async def move_due_retries(self, partition: int, limit: int = MOVE_DUE_LIMIT) -> int:
        """Move a partition's deliveries whose retry time has come back to its ready stream
        (atomic); returns how many moved."""
        command = retries.move_due_command(self.keys, partition, now=now_ms(), limit=limit)
        return int(await self.runner.one(command, durable=True))

    # ---------------------------------------------------------------- per-subscriber flow
    async def throttle(self, subscriber_id: str, *, per_second: float, burst: int) -> float:
        """0 if a request to the subscriber may go now (it is booked against its rate limit),
        else the seconds to wait before asking again."""
        command = flow.throttle_command(
            self.keys.rate(subscriber_id), per_second=per_second, burst=burst
        )
        return int(await self.runner.one(command)) / 1_000_000

    async def enter_orders(self, entries: Sequence[tuple[str, str, str]]) -> None:
        """Enter deliveries, each (subscriber, resource, delivery id), in their resources'
        orders (dispatch does, before the deliveries are queued)."""
        if entries:
            await self.runner.run(
                [
                    flow.enter_command(
                        self.keys.order(sub, resource), dlv, retention=self.retention
                    )
                    for sub, resource, dlv in entries
                ],
                durable=True,
            )

    async def enter_order(self, subscriber_id: str, resource: str, delivery_id: str) -> str:
        """Enter a delivery in its resource's order (if dispatch has not); the delivery now
        first in it, the one that may be attempted."""
        order_key = self.keys.order(subscriber_id, resource)
        command = flow.enter_command(order_key, delivery_id, retention=self.retention)
        return (await self.runner.one(command, durable=True)).decode()

    async def delivery_status(self, delivery_id: str) -> str | None:
        """A delivery's status; None once its record is gone."""
        status = await self.runner.one(("HGET", self.keys.delivery(delivery_id), "status"))
        return None if status is None else status.decode()

    async def event_bodies(self, event_ids: Sequence[str]) -> list[bytes | None]:
        return await self.runner.run([("HGET", self.keys.event(e), "body") for e in event_ids])

    async def dispatch_watermark(self, event_id: str) -> str | None:
        """The oldest event still waiting for dispatch in any partition, as far as `event_id`
        can rely on it; None if none waits. Every event older than it has its deliveries
        created (and entered in their orders).

        A read is reused for WATERMARK_TTL, but not by an event made in or after the
        millisecond it started: events accepted just before that one may have been added to
        the streams after the read, which would have let it overtake them."""
        now, started_ms = time.monotonic(), now_ms()
        if now - self._watermark_at > WATERMARK_TTL or self._watermark_read_ms <= id_time(
            event_id.removeprefix("evt_")
        ):
            heads = await self.runner.run(
                [
                    ("XRANGE", self.keys.events_stream(p), "-", "+", "COUNT", 1)
                    for p in self.partitions
                ]
            )
            oldest = [entry[0][1][1].decode() for entry in heads if entry]
            self._watermark = min(oldest) if oldest else None
            self._watermark_at = now
            self._watermark_read_ms = started_ms  # set with the value it read, never before
        return self._watermark

    async def hold_for_order(self, item: WorkItem, resource: str) -> None:
        """Set work aside, out of the ready stream, until it is first in its order."""
        command = flow.hold_command(
            self.keys,
            _work_partition(item),
            item,
            self.keys.order(item.subscriber_id, resource),
            group=DELIVER_GROUP,
            now=now_ms(),
        )
        await self.runner.one(command, durable=True)

    async def leave_order(self, subscriber_id: str, resource: str, delivery_id: str) -> None:
        """A finished delivery leaves its order; the next, if it waits held, is woken."""
        order_key = self.keys.order(subscriber_id, resource)
        following = await self.runner.one(flow.leave_command(order_key, delivery_id), durable=True)
        if following is not None:
            await self._wake(subscriber_id, following.decode())

    async def _wake(self, subscriber_id: str, delivery_id: str) -> int:
        member = work_member(delivery_id, subscriber_id, "evt_" + delivery_id[4:30])
        command = flow.wake_command(
            self.keys, delivery_partition(delivery_id), subscriber_id, member
        )
        return int(await self.runner.one(command, durable=True))

    async def wake_stranded_orders(self, held_before: int, limit: int = 100) -> int:
        """Wake held work that is first in its order but was not woken (its predecessor
        finished while it was being set aside); returns how many."""
        k, woken = self.keys, 0
        subs = await self.runner.run(
            [("SMEMBERS", k.order_held_subscribers(p)) for p in self.partitions]
        )
        for p, members in zip(self.partitions, subs, strict=True):
            for sub in (m.decode() for m in members):
                held = await self.runner.one(
                    ("ZRANGEBYSCORE", k.order_held(sub, p), "-inf", held_before, "LIMIT", 0, limit)
                )
                if not held:
                    continue
                order_keys = await self.runner.one(("HMGET", k.order_held_keys(p), *held))
                firsts = await self.runner.run(
                    [("ZRANGE", key, 0, 0) for key in order_keys if key is not None]
                )
                first = {f[0] for f in firsts if f}
                for member in held:
                    delivery_id = member.split(b" ", 1)[0]
                    if delivery_id in first:
                        woken += await self._wake(sub, delivery_id.decode())
        return woken

    # ---------------------------------------------------------------- maintenance
    async def trim(self) -> None:
        """Forget index entries of events and deliveries older than the retention (their
        records have expired), and consumers of restarted processes that hold nothing."""
        oldest = now_ms() - self.retention * 1000
        floor, event_floor = id_floor("dlv", oldest), id_floor("evt", oldest)
        await self.runner.run(
            [
                command
                for p in self.partitions
                for command in (
                    ("ZREMRANGEBYLEX", self.keys.dead(p), "-", f"({floor}"),
                    ("ZREMRANGEBYLEX", self.keys.deliveries(p), "-", f"({floor}"),
                    ("ZREMRANGEBYLEX", self.keys.event_index(p), "-", f"({event_floor}"),
                )
            ]
        )
        for stream in (*self.events, *self.ready):
            await stream.forget_idle_consumers()
