"""Delivery flow control: how many attempts run at once, and where the rest waits.

A worker reads the ready stream in the `deliver` consumer group (`router.pipeline.consumer`)
and starts an attempt (`router.pipeline.attempt`) per unit of work, within two bounds: its
capacity (`ROUTER_WORKER_CONCURRENCY`) and each subscriber's (`ROUTER_SUBSCRIBER_CONCURRENCY`).
Work for a subscriber at its bound waits in a short local queue (still pending in Redis, so a
crash loses nothing) and beyond that is parked in Redis until the subscriber has room, so one
slow subscriber never occupies the capacity others need; work its open breaker sends back is
parked until the breaker lets attempts through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque

from redis.exceptions import ResponseError

from router.core.outcome import Outcome
from router.core.records import AttemptContext, WorkItem
from router.pipeline.attempt import Attempts, Behind, Held
from router.pipeline.client import DeliveryClient, open_session
from router.pipeline.consumer import READ_BLOCK_MS, Consumer
from router.settings import Settings
from router.storage.client import UNAVAILABLE, NotReplicated, refusing_writes
from router.storage.keys import delivery_partition
from router.storage.ledger import Ledger
from subscriptions.ids import now_ms

log = logging.getLogger("router.delivery")

READ_AT_LEAST_EVERY = 0.25  # seconds; see `DeliveryWorker._read_budget`
MAX_READ = 100
MIN_BLOCK_MS = 50


class WaitingWork:
    """Work read for subscribers at their concurrency bound, waiting in this process for a
    slot (still pending in Redis, so a crash loses nothing): at most `limit` per subscriber.

    `pending` counts the work in queues that are not full: what the reader should wait for
    before reading more. A full queue's work does not count: its subscriber is not keeping
    up, anything more read for it is parked, and it must not stop the reader fetching
    everyone else's work.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending = 0
        self._queues: dict[str, deque[WorkItem]] = {}

    def __contains__(self, subscriber_id: str) -> bool:
        return subscriber_id in self._queues

    def length(self, subscriber_id: str) -> int:
        queue = self._queues.get(subscriber_id)
        return 0 if queue is None else len(queue)

    def offer(self, item: WorkItem) -> bool:
        """Queue `item`; False if its subscriber's queue is full."""
        queue = self._queues.setdefault(item.subscriber_id, deque())
        if len(queue) >= self.limit:
            return False
        queue.append(item)
        # Filling up, the queue's work stops counting.
        self.pending += 1 if len(queue) < self.limit else 1 - self.limit
        return True

    def take(self, subscriber_id: str) -> WorkItem | None:
        """The subscriber's oldest waiting work, if any."""
        queue = self._queues.get(subscriber_id)
        if queue is None:
            return None
        # No longer full, the queue's work counts again.
        self.pending += len(queue) - 1 if len(queue) == self.limit else -1
        item = queue.popleft()
        if not queue:
            del self._queues[subscriber_id]
        return item

    def items(self) -> set[WorkItem]:
        return {item for queue in self._queues.values() for item in queue}

    def take_all(self) -> list[WorkItem]:
        items = [item for queue in self._queues.values() for item in queue]
        self._queues.clear()
        self.pending = 0
        return items


class DeliveryWorker:
    def __init__(
        self, *, ledger: Ledger, attempts: Attempts, settings: Settings, consumer: str
    ) -> None:
        self.ledger = ledger
        self.attempts = attempts
        self.settings = settings
        self.consumer = consumer
        self.capacity = settings.worker_concurrency
        self.per_subscriber = settings.subscriber_concurrency
        # Work a subscriber at its bound may keep waiting in this process (beyond it, work is
        # parked in Redis): enough to ride out a hot subscriber's bursts without a trip
        # through Redis and the back of the queue.
        self.waiting_per_subscriber = max(2 * self.per_subscriber, self.capacity // 4)
        self.reclaim_after_ms = int(settings.reclaim_after * 1000)
        self._inflight: dict[str, int] = defaultdict(int)
        # Work is told apart by the whole item: an entry id is unique only in its partition.
        self._holding: set[WorkItem] = set()  # started work holding a subscriber's slot
        self._running: set[WorkItem] = set()  # started work not yet finished
        self._waiting = WaitingWork(self.waiting_per_subscriber)
        self._load = 0  # attempts started and not finished
        self._overread = 0  # work read lately that had to be parked at once (`_read_budget`)
        self._last_read: dict[int, float] = {}  # per partition's reader
        self._tasks: set[asyncio.Task[None]] = set()
        self._capacity_freed = asyncio.Event()
        # Subscribers this worker parked work for, and the partitions it is parked in.
        self._parked: dict[str, set[int]] = {}
        self._read_share = max(1, self.capacity // len(ledger.partitions))
        # Read budget promised to each partition's reader, until what it read is admitted.
        self._reservations: dict[int, int] = {}
        self._hot: set[int] = set()  # partitions whose last read took all it asked for
        self._hot_waiting = 0  # readers of those waiting for budget
        self._empty: set[int] = set(ledger.partitions)  # partitions whose last read found none
        self._releasing: set[str] = set()  # subscribers with a release of parked work running
        # Subscribers whose breaker held their work back, and until when (ms): their parked
        # work is not released as slots free up before then, or it would cycle through the
        # ready queue (read, parked, released, read...) for as long as the breaker stays open.
        self._held_until: dict[str, int] = {}
        self.session: DeliveryClient | None = None

    # ------------------------------------------------------------------ loop
    async def run(self, stopping: asyncio.Event) -> None:
        """Take work until `stopping` is set, then return (call `drain` to finish up)."""
        # Run again after a crash, the loop keeps its session: attempts still in flight use
        # it, and a second one would leave the first unclosed.
        if self.session is None or self.session.closed:
            self.session = open_session(self.settings)
        await asyncio.gather(*(self._consumer(p).run(stopping) for p in self.ledger.partitions))

    def _consumer(self, partition: int) -> Consumer[WorkItem]:
        """The reader of one partition's ready stream; all share this worker's budget."""
        ledger, consumer = self.ledger, self.consumer

        async def read(count: int, block_ms: int) -> list[WorkItem]:
            if partition in self._empty:
                # Waiting for work to arrive, the reader holds no budget (see `_room`); what
                # the wait brings is at most one item over it.
                self._unreserve(partition)
                count = 1
            items = await ledger.read_ready(partition, consumer, count, block_ms)
            (self._empty.discard if items else self._empty.add)(partition)
            # A full read says more is likely waiting there.
            (self._hot.add if len(items) >= count else self._hot.discard)(partition)
            return items

        async def claim(count: int) -> list[WorkItem]:
            claimed = await ledger.claim_stale_ready(
                partition, consumer, self.reclaim_after_ms, count
            )
            # Work this worker holds itself (running, or waiting here for a slot longer than
            # ROUTER_RECLAIM_AFTER) looks stalled to Redis; claiming it resets its idle time,
            # and it must not be started a second time.
            mine = self._running | self._waiting.items()
            return [item for item in claimed if item not in mine]

        return Consumer(
            "deliveries",
            room=lambda: self._room(partition),
            read=read,
            claim=claim,
            handle=self._admit,
            ensure_groups=ledger.ensure_groups,
            reclaim_after_ms=self.reclaim_after_ms,
            settled=lambda count: self._unreserve(partition),
            # A reader waiting on a partition it has found work in holds its share of the
            # budget while it waits; with many partitions it waits less, so the budget goes
            # round to those that have work.
            block_ms=max(MIN_BLOCK_MS, READ_BLOCK_MS // len(ledger.partitions)),
        )

    def _unreserve(self, partition: int) -> None:
        self._reservations.pop(partition, None)
        self._capacity_freed.set()

    async def _room(self, partition: int) -> int:
        """How much to read next (reserved from the budget until the read is admitted); 0
        after waiting up to READ_AT_LEAST_EVERY for capacity.

        With many partitions and little budget, readers blocked on empty partitions held
        most of it, and a busy partition's reader queued behind all of them for each read
        (a quick subscriber's work waited out slow subscribers). So a reader whose last read
        found nothing blocks holding no budget, and budget freed goes first to readers of
        partitions known to hold more work.
        """
        hot = partition in self._hot
        reserved = sum(self._reservations.values())
        free = self._read_budget() - reserved - (0 if hot else self._hot_waiting)
        last_read = self._last_read.get(partition, 0.0)
        if free <= 0 and time.monotonic() - last_read >= READ_AT_LEAST_EVERY:
            free = min(self.per_subscriber, self.capacity - self._load)
        if free <= 0:
            self._capacity_freed.clear()
            self._hot_waiting += hot
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._capacity_freed.wait(), READ_AT_LEAST_EVERY)
            finally:
                self._hot_waiting -= hot
            return 0
        self._last_read[partition] = time.monotonic()
        # A partition's reader takes at most its share, so every partition's reader gets room.
        count = min(free, MAX_READ, self._read_share)
        self._reservations[partition] = count
        return count

    def _read_budget(self) -> int:
        """How much work to read now: the capacity left by attempts in flight and by work
        already waiting here for a slot.

        Waiting work counts, or the reader runs ahead of the attempts: with every subscriber
        at its bound, reads filled the local queues and the rest was parked, released and
        read again (half of all deliveries, in the benchmark's fan-out run). Work read only to
        be parked is a sign of reading ahead too: the budget shrinks by it until as many
        attempts have finished.

        Slow subscribers whose queues are filling but not yet full could hold the whole
        budget, and everyone else's work would be read only as fast as they answer; so with
        no budget left, a subscriber's bound of work is still read every
        `READ_AT_LEAST_EVERY` while any capacity is free. Their queues fill, stop counting,
        and reading is back to full speed.
        """
        return self.capacity - self._load - self._waiting.pending - self._overread

    async def drain(self, timeout: float) -> None:
        """Hand back work not yet started, and wait up to `timeout` for attempts in flight.

        Attempts still running after that are abandoned un-acknowledged: another worker
        reclaims and repeats them (receivers see the same webhook-id).
        """
        waiting = self._waiting.take_all()
        if waiting:
            try:
                await self.ledger.hand_back(waiting)
            except UNAVAILABLE:
                log.warning(
                    "could not hand back %d deliveries; they will be reclaimed", len(waiting)
                )
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    async def _admit(self, items: list[WorkItem]) -> None:
        overflow, starting = [], []
        for item in items:
            sub = item.subscriber_id
            if self._inflight[sub] < self.per_subscriber:
                self._inflight[sub] += 1  # taken now; the attempt starts with its context
                starting.append(item)
            elif not self._waiting.offer(item):
                overflow.append(item)
        if starting:
            # Read with the work, in one round trip for all that start now; work that waits
            # here reads its own when it starts (a context read now would be stale by then).
            try:
                contexts = await self.ledger.attempt_contexts(starting)
            except BaseException:
                for item in starting:
                    self._inflight[item.subscriber_id] -= 1
                raise
            for item, context in zip(starting, contexts, strict=True):
                self._start(item, context, slot_taken=True)
        if overflow:
            self._overread += len(overflow)
            await self.ledger.park(overflow)
            for item in overflow:
                self._note_parked(item)

    def _start(
        self,
        item: WorkItem,
        context: AttemptContext | Exception | None = None,
        *,
        slot_taken: bool = False,
    ) -> None:
        if not slot_taken:
            self._inflight[item.subscriber_id] += 1
        self._holding.add(item)
        self._running.add(item)
        self._load += 1
        task = asyncio.create_task(self._run_one(item, context))
        self._tasks.add(task)

    async def _run_one(self, item: WorkItem, context: AttemptContext | Exception | None) -> None:
        assert self.session is not None, "attempts start only while `run` runs"
        try:
            result = await self.attempts.attempt(
                item, self.session, lambda: self._free_slot(item), context
            )
            if isinstance(result, Held):
                await self._hold(item, result.until_ms)
            elif isinstance(result, Behind):
                await self.ledger.hold_for_order(item, result.resource)
            elif isinstance(result, Outcome) and result.breaker:
                self._held_until.pop(item.subscriber_id, None)  # its breaker closed
        except NotReplicated:
            # The outcome is on the master but no replica confirmed it in time: the work is
            # done unless that master fails before replicating, in which case the new master
            # still has it pending and it is delivered again.
            log.warning(
                "outcome of %s not yet confirmed by a replica (ROUTER_REPLICA_TIMEOUT)",
                item.delivery_id,
            )
        except UNAVAILABLE:
            log.warning("Redis unavailable during %s; it will be reclaimed", item.delivery_id)
        except Exception as exc:
            if isinstance(exc, ResponseError) and refusing_writes(exc):
                # Redis refuses writes for now (memory full, failover...): the work stays
                # pending and is reclaimed, as for an unreachable Redis.
                log.warning(
                    "Redis refused writes during %s; it will be reclaimed", item.delivery_id
                )
                return
            with contextlib.suppress(Exception):
                await self.attempts.fail(item, exc)
        finally:
            self._free_slot(item)
            self._running.discard(item)
            self._tasks.discard(asyncio.current_task())  # type: ignore[arg-type]
            self._load -= 1
            if self._overread:
                self._overread -= 1
            self._capacity_freed.set()

    async def _hold(self, item: WorkItem, until_ms: int) -> None:
        """Park work its subscriber's open breaker sent back; the release loop
        (`WorkerGroup`) brings it back once the breaker lets attempts through."""
        await self.ledger.park([item])
        self._note_parked(item)
        now = now_ms()
        if len(self._held_until) >= 10_000:  # subscribers never attempted again
            self._held_until = {s: t for s, t in self._held_until.items() if t > now}
        self._held_until[item.subscriber_id] = until_ms

    def _note_parked(self, item: WorkItem) -> None:
        self._parked.setdefault(item.subscriber_id, set()).add(delivery_partition(item.delivery_id))

    def _free_slot(self, item: WorkItem) -> None:
        """End `item`'s hold on one of its subscriber's concurrency slots (once; the bound is
        on requests to the subscriber, so this happens as soon as the receiver has answered)
        and give the slot to the subscriber's next waiting or parked work."""
        if item not in self._holding:
            return
        self._holding.discard(item)
        sub = item.subscriber_id
        self._inflight[sub] -= 1
        waiting = self._waiting.take(sub)
        if waiting is not None:
            self._start(waiting)
        if self._inflight[sub] == 0:
            del self._inflight[sub]
        self._release_if_room(sub)

    def _release_if_room(self, sub: str) -> None:
        """Bring back a subscriber's parked work (oldest events first) once it has room: a
        free slot and a local queue at most half full, and no breaker holding it. Waiting for
        an empty queue, work parked under steady load waited until the load stopped: new
        work kept the queue from emptying."""
        room = self.per_subscriber - self._inflight.get(sub, 0)
        queued = self._waiting.length(sub)
        if (
            sub in self._parked
            and sub not in self._releasing
            and room > 0
            and queued <= self.waiting_per_subscriber // 2
            and not self._held(sub)
        ):
            # Enough for its free slots and its local queue: released a slot's worth at a
            # time, a backlog came back one round trip per finished attempt.
            self._start_release(sub, room + self.waiting_per_subscriber - queued)

    def _held(self, sub: str) -> bool:
        until = self._held_until.get(sub)
        if until is not None and now_ms() >= until:
            del self._held_until[sub]
            until = None
        return until is not None

    def _start_release(self, sub: str, count: int) -> None:
        """Bring back up to `count` of the parked work of a subscriber that has room again
        (in the background: this runs as an attempt finishes; one release at a time)."""

        async def release() -> None:
            left = count
            try:
                for partition in sorted(self._parked.get(sub, ())):
                    released = await self.ledger.release_parked(sub, partition, left)
                    if released < left:  # that partition has no more of its work
                        self._parked[sub].discard(partition)
                    left -= released
                    if left <= 0:
                        break
                if not self._parked.get(sub):
                    self._parked.pop(sub, None)
            except UNAVAILABLE:
                pass  # the retry scheduler releases parked work too
            finally:
                self._releasing.discard(sub)

        self._releasing.add(sub)
        task = asyncio.create_task(release())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
