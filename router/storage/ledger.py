"""The ledger: the hot path's reads and writes of events and deliveries in Redis.

Shapes (names in `router.storage.keys`; the whole layout in docs/architecture.md):
- accepted events: a hash each (raw body + routing fields) and an entry in the events stream,
  read by the `dispatch` consumer group;
- deliveries: a hash each, an attempts list, and an entry in the ready stream (consumer group
  `deliver`) whenever an attempt is due; failed ones wait in the retry sorted set (score = due
  ms) and are moved back by `move_due_retries`; dead ones are indexed in the dead sorted set;
  work for a subscriber with no room waits in its parked set.

Every state change is one Lua script (`router.storage.scripts`) or one MULTI transaction: a
crash between two Redis calls can leave work to be redone (at-least-once), never work lost or
a delivery doubled. Operator reads and replays are `router.storage.history`'s.
"""

from __future__ import annotations

from collections.abc import Sequence

from router.core.outcome import Outcome
from router.core.records import AttemptContext, EventStatus, IncomingEvent, WorkItem
from router.storage.batching import MicroBatcher
from router.storage.client import CommandRunner
from router.storage.keys import RouterKeys
from router.storage.scripts import accept, contexts, deliveries, outcomes, parking, retries
from router.storage.streams import DELIVER_GROUP, DISPATCH_GROUP, Heartbeats, Stream
from subscriptions.ids import id_floor, now_ms
from subscriptions.keys import SubscriberKeys

# One accept call carries at most this many body bytes (and 128 events): a script call is
# atomic, and a huge one would hold Redis up for everyone else.
ACCEPT_BATCH_BYTES = 1_048_576
MOVE_DUE_LIMIT = 1000


class Overloaded(Exception):
    """The dispatch backlog is over `ROUTER_MAX_BACKLOG`; the event was not stored."""


# A dispatch plan: (events-stream entry id, event id, event name, entitled subscriber ids).
Plan = tuple[str, str, str, Sequence[str]]
RoutingFields = dict[str, str | None]  # event, location_id, company_id


def _text(value: bytes | None) -> str | None:
    return None if value is None or value == b"" else value.decode()


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
    ) -> None:
        self.runner = runner
        self.redis = redis = runner.redis
        self.keys = keys
        self.subscriber_keys = subscriber_keys
        self.retention = retention
        self.dedupe_window = dedupe_window
        self.max_backlog = max_backlog
        self.events = Stream(redis, runner, keys, keys.events_stream, DISPATCH_GROUP)
        self.ready = Stream(redis, runner, keys, keys.ready_stream, DELIVER_GROUP)
        self.heartbeats = Heartbeats(redis, keys)
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

    async def _accept_batch(self, events: list[IncomingEvent]) -> list[accept.Accepted | Exception]:
        command, left_out = accept.accept_command(
            self.keys,
            events,
            retention=self.retention,
            dedupe_window=self.dedupe_window,
            max_backlog=self.max_backlog,
        )
        reply = await self.runner.one(command) if command is not None else []
        return accept.parse_accept(reply, left_out)

    async def ensure_groups(self) -> None:
        """Create both consumer groups (and their streams) if missing; safe to repeat."""
        await self.events.ensure_group()
        await self.ready.ensure_group()

    # ---------------------------------------------------------------- dispatch
    async def read_events(self, consumer: str, count: int, block_ms: int) -> list[tuple[str, str]]:
        """New (entry id, event id) pairs for this dispatcher."""
        raw = await self.events.read(consumer, count, block_ms)
        return [(entry, value.decode()) for entry, value in raw]

    async def claim_stale_events(
        self, consumer: str, min_idle_ms: int, count: int = 100
    ) -> list[tuple[str, str]]:
        """Events another dispatcher took but will not finish (`Stream.claim_stale`)."""
        raw = await self.events.claim_stale(consumer, min_idle_ms, count)
        return [(entry, value.decode()) for entry, value in raw]

    async def routing_fields(self, event_ids: Sequence[str]) -> list[RoutingFields | None]:
        """For each event: its name, location and company (None if it has expired)."""
        rows = await self.runner.run(
            [("HMGET", self.keys.event(e), "event", "location_id", "company_id") for e in event_ids]
        )
        return [
            None
            if event is None
            else {"event": event.decode(), "location_id": _text(loc), "company_id": _text(co)}
            for event, loc, co in rows
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
        return sum(int(n) for n in await self.runner.run(calls))

    # ---------------------------------------------------------------- delivery
    async def read_ready(self, consumer: str, count: int, block_ms: int) -> list[WorkItem]:
        raw = await self.ready.read(consumer, count, block_ms)
        return [WorkItem.parse(entry, member) for entry, member in raw]

    async def claim_stale_ready(
        self, consumer: str, min_idle_ms: int, count: int = 100
    ) -> list[WorkItem]:
        """Deliveries another worker took but will not finish (`Stream.claim_stale`)."""
        raw = await self.ready.claim_stale(consumer, min_idle_ms, count)
        return [WorkItem.parse(entry, member) for entry, member in raw]

    async def attempt_context(self, item: WorkItem) -> AttemptContext:
        """Everything one attempt needs: the delivery, the event (raw body included), the
        subscriber's JSON and its breaker state; empty or None for missing ones. Fetched in
        one round trip shared with the attempts starting alongside it."""
        return await self._contexts.run(item)

    async def _context_batch(self, items: list[WorkItem]) -> list[AttemptContext | Exception]:
        call = contexts.contexts_call(self.keys, self.subscriber_keys.subscribers, items)
        replies = await self.runner.run(call.commands, raise_on_error=False)
        return contexts.parse_contexts(call, replies)

    async def finish(
        self,
        item: WorkItem,
        outcome: Outcome,
        *,
        breaker_threshold: int = 0,
        probe_interval_ms: int = 0,
    ) -> None:
        """Record `outcome` of handling `item`, atomically with the stream acknowledgement
        (one script call, shared with other outcomes recorded alongside it). A failed attempt
        opens the subscriber's breaker for `probe_interval_ms` at `breaker_threshold`
        consecutive failures."""
        now = now_ms()
        prepared = outcomes.finish_args(
            self.keys,
            item,
            outcome,
            group=DELIVER_GROUP,
            now=now,
            retention=self.retention,
            breaker_threshold=breaker_threshold,
            open_until=now + probe_interval_ms,
        )
        await self._outcomes.run(prepared)

    async def _finish_batch(self, prepared: list[outcomes.Prepared]) -> list[Exception | None]:
        reply = await self.runner.one(outcomes.finish_command(self.keys, prepared))
        return list(outcomes.parse_finish(reply))

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
        if items:
            await self.runner.one(
                parking.park_command(self.keys, items, group=DELIVER_GROUP, now=now_ms())
            )

    async def release_parked(self, subscriber_id: str, count: int) -> int:
        """Move up to `count` of a subscriber's oldest parked work back to the ready queue."""
        return int(await self.runner.one(parking.release_command(self.keys, subscriber_id, count)))

    async def parked_subscribers(self) -> list[tuple[str, bool]]:
        """Each subscriber with parked work, and whether its breaker lets attempts through
        now (closed, or open past its probe time)."""
        k = self.keys
        subs = sorted(m.decode() for m in await self.redis.smembers(k.parked_subscribers))
        if not subs:
            return []
        rows = await self.runner.run([("HGET", k.breaker(sub), "open_until") for sub in subs])
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

    async def move_due_retries(self, limit: int = MOVE_DUE_LIMIT) -> int:
        """Move deliveries whose retry time has come back to the ready stream (atomic)."""
        command = retries.move_due_command(self.keys, now=now_ms(), limit=limit)
        return int(await self.runner.one(command))

    # ---------------------------------------------------------------- maintenance
    async def trim(self) -> None:
        """Forget index entries of deliveries older than the retention (their records have
        expired), and consumers of restarted processes that hold nothing."""
        floor = id_floor("dlv", now_ms() - self.retention * 1000)
        await self.redis.zremrangebylex(self.keys.dead, "-", f"({floor}")
        await self.redis.zremrangebylex(self.keys.deliveries, "-", f"({floor}")
        await self.events.forget_idle_consumers()
        await self.ready.forget_idle_consumers()
