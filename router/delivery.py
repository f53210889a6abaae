"""Where one delivery is attempted: the worker that POSTs events to subscribers.

A worker reads the ready stream in the `deliver` consumer group and, for each delivery:
re-checks the routing rule (a revoked grant, a paused or deleted subscriber, a changed filter
turns it `skipped`), waits behind the subscriber's circuit breaker if it is open, POSTs the
raw body with Standard Webhooks signatures, and records the outcome — success, a retry
scheduled by the `RetryPolicy`, or dead — atomically with the stream acknowledgement.

Per-subscriber concurrency is bounded inside each worker; work for a subscriber at its bound
waits in a short local queue (still pending in Redis, so a crash loses nothing) and beyond
that is deferred, so one slow subscriber never occupies the capacity others need.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from typing import Any, NamedTuple

import aiohttp
from redis.exceptions import ResponseError

from router.connections import UNAVAILABLE, refusing_writes
from router.ledger import TERMINAL, DeliveryStatus, Ledger, WorkItem
from router.metrics import Metrics
from router.retry import RetryPolicy, parse_retry_after
from router.settings import Settings
from router.signing import delivery_headers
from router.ssrf import GuardedResolver, TargetRefused, literal_host_refusal
from subscriptions.catalog import Catalog
from subscriptions.ids import now_ms, rfc3339
from subscriptions.models import Subscriber, SubscriberStatus, entitlement_refusal
from subscriptions.store import SubscriberStore

log = logging.getLogger("router.delivery")

CLAIM_CHECK_SECONDS = 2.0  # how often to look for work left by dead or stalled workers
READ_AT_LEAST_EVERY = 0.25  # seconds; see `DeliveryWorker._read_budget`

RESPONSE_BODY_LIMIT = 4096
BREAKER_HOLD_MS = 1000  # the shortest hold on work an open breaker sent back to be parked


class AttemptResult(NamedTuple):
    status_code: int | None
    error: str | None
    duration_ms: float
    response_body: str
    retry_after: float | None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def open_session(settings: Settings, capacity: int) -> aiohttp.ClientSession:
    """One client session per worker: pooled connections, the SSRF guard on every resolve,
    no cookies kept between subscribers, redirects never followed (set per request).

    Answers are asked for uncompressed and never decompressed: the attempt log keeps the
    first 4 KiB of a receiver's answer as text, and decompressing would let a small answer
    expand without bound in memory.
    """
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(settings.allow_private_targets),
        limit=capacity,
        ttl_dns_cache=10,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=settings.delivery_timeout),
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"Accept-Encoding": "identity"},  # not aiohttp's default "gzip, deflate"
        auto_decompress=False,
    )


async def _read_prefix(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await resp.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if resp.content.at_eof():  # the usual short answer: no second read to find the end
            break
    return b"".join(chunks)


async def post_event(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    allow_private: bool,
    timeout: float,
) -> AttemptResult:
    """POST once; never raises for anything the receiver or the network does.

    Reads at most 4 KiB of the response, so a receiver answering with a huge body costs
    nothing more (the connection is dropped instead of drained).
    """
    if not allow_private and (reason := literal_host_refusal(url)):
        return AttemptResult(None, f"refused target: {reason}", 0.0, "", None)
    started = time.perf_counter()
    status: int | None = None
    error: str | None = None
    text = ""
    retry_after = None
    try:
        async with session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
            status = resp.status
            text = (await _read_prefix(resp, RESPONSE_BODY_LIMIT)).decode("utf-8", "replace")
            if status in (429, 503):
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            if 300 <= status < 400:
                error = "redirects are not followed"
    except TimeoutError:
        error = f"timed out after {timeout:g}s"
    except aiohttp.ClientConnectorError as exc:
        # aiohttp wraps the SSRF guard's refusal; say what was refused, not "cannot connect".
        refused = exc.os_error if isinstance(exc.os_error, TargetRefused) else None
        error = refused.strerror if refused else f"{type(exc).__name__}: {exc}"
    except aiohttp.ClientError as exc:
        error = f"{type(exc).__name__}: {exc}"
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    duration = (time.perf_counter() - started) * 1000
    return AttemptResult(status, error, round(duration, 2), text, retry_after)


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

    def take_all(self) -> list[WorkItem]:
        items = [item for queue in self._queues.values() for item in queue]
        self._queues.clear()
        self.pending = 0
        return items


class DeliveryWorker:
    def __init__(
        self,
        *,
        ledger: Ledger,
        store: SubscriberStore,
        catalog: Catalog,
        settings: Settings,
        metrics: Metrics,
        consumer: str,
    ) -> None:
        self.ledger = ledger
        self.store = store
        self.catalog = catalog
        self.settings = settings
        self.metrics = metrics
        self.consumer = consumer
        self.policy = RetryPolicy(settings.retry_schedule)
        self.capacity = settings.worker_concurrency
        self.per_subscriber = settings.subscriber_concurrency
        # Work a subscriber at its bound may keep waiting in this process (beyond it, work is
        # parked in Redis): enough to ride out a hot subscriber's bursts without a trip
        # through Redis and the back of the queue.
        self.waiting_per_subscriber = max(2 * self.per_subscriber, self.capacity // 4)
        self._subscribers: dict[bytes, Subscriber] = {}  # parsed, by their exact JSON
        self.reclaim_after_ms = int(settings.reclaim_after * 1000)
        self._inflight: dict[str, int] = defaultdict(int)
        self._holding: set[str] = set()  # entry ids of started work holding a slot
        self._waiting = WaitingWork(self.waiting_per_subscriber)
        self._load = 0  # attempts started and not finished
        self._overread = 0  # work read lately that had to be parked at once (`_read_budget`)
        self._tasks: set[asyncio.Task[None]] = set()
        self._capacity_freed = asyncio.Event()
        self._parked: set[str] = set()  # subscribers this worker parked work for
        self._releasing: set[str] = set()  # subscribers with a release of parked work running
        # Subscribers whose breaker held their work back, and until when (ms): their parked
        # work is not released as slots free up before then, or it would cycle through the
        # ready queue (read, parked, released, read...) for as long as the breaker stays open.
        self._held_until: dict[str, int] = {}
        self.session: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ loop
    async def run(self, stopping: asyncio.Event) -> None:
        """Take work until `stopping` is set, then return (call `drain` to finish up)."""
        self.session = open_session(self.settings, self.capacity)
        backoff = 0.1
        next_claim = last_read = 0.0
        while not stopping.is_set():
            free = self._read_budget()
            if free <= 0 and time.monotonic() - last_read >= READ_AT_LEAST_EVERY:
                free = min(self.per_subscriber, self.capacity - self._load)
            if free <= 0:
                self._capacity_freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._capacity_freed.wait(), READ_AT_LEAST_EVERY)
                continue
            last_read = time.monotonic()
            try:
                if time.monotonic() >= next_claim:
                    next_claim = time.monotonic() + min(
                        self.reclaim_after_ms / 4000, CLAIM_CHECK_SECONDS
                    )
                    items = await self.ledger.claim_stale_ready(
                        self.consumer, self.reclaim_after_ms, min(free, 100)
                    )
                    if items:
                        log.info("reclaimed %d deliveries from a stalled worker", len(items))
                else:
                    items = await self.ledger.read_ready(self.consumer, min(free, 100), 1000)
                await self._admit(items)
                backoff = 0.1
            except UNAVAILABLE:
                log.warning("Redis unavailable; worker retrying in %.1fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except ResponseError as exc:
                # The stream or group vanished (a Redis that restarted empty, or was flushed).
                if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                    raise
                await self.ledger.ensure_groups()

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
        overflow = []
        for item in items:
            sub = item.subscriber_id
            if self._inflight[sub] < self.per_subscriber:
                self._start(item)
            elif not self._waiting.offer(item):
                overflow.append(item)
        if overflow:
            self._overread += len(overflow)
            await self.ledger.park(overflow)
            self._parked.update(item.subscriber_id for item in overflow)

    def _start(self, item: WorkItem) -> None:
        self._inflight[item.subscriber_id] += 1
        self._holding.add(item.entry_id)
        self._load += 1
        task = asyncio.create_task(self._run_one(item))
        self._tasks.add(task)

    async def _run_one(self, item: WorkItem) -> None:
        try:
            await self.handle(item)
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
            # A bug must not turn one delivery into a poison message reclaimed forever: it
            # is dead-lettered with the reason, where an operator can see and replay it.
            log.exception("delivery %s failed unexpectedly; dead-lettered", item.delivery_id)
            with contextlib.suppress(Exception):
                await self.ledger.finish(
                    item,
                    status=DeliveryStatus.dead,
                    fields={"reason": f"internal error: {type(exc).__name__}"},
                )
                self.metrics.delivered("dead").inc()
        finally:
            self._free_slot(item)
            self._tasks.discard(asyncio.current_task())  # type: ignore[arg-type]
            self._load -= 1
            if self._overread:
                self._overread -= 1
            self._capacity_freed.set()

    def _free_slot(self, item: WorkItem) -> None:
        """End `item`'s hold on one of its subscriber's concurrency slots (once; the bound is
        on requests to the subscriber, so this happens as soon as the receiver has answered)
        and give the slot to the subscriber's next waiting or parked work."""
        if item.entry_id not in self._holding:
            return
        self._holding.discard(item.entry_id)
        sub = item.subscriber_id
        self._inflight[sub] -= 1
        waiting = self._waiting.take(sub)
        if waiting is not None:
            self._start(waiting)
        room = self.per_subscriber - self._inflight[sub]
        if self._inflight[sub] == 0:
            del self._inflight[sub]
        if (
            sub in self._parked
            and sub not in self._releasing
            and sub not in self._waiting
            and room > 0
            and not self._held(sub)
        ):
            # Enough for its free slots and its local queue: released a slot's worth at a
            # time, a backlog came back one round trip per finished attempt.
            self._start_release(sub, room + self.waiting_per_subscriber)

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
            try:
                if await self.ledger.release_parked(sub, count) < count:
                    self._parked.discard(sub)
            except UNAVAILABLE:
                pass  # the retry scheduler releases parked work too
            finally:
                self._releasing.discard(sub)

        self._releasing.add(sub)
        task = asyncio.create_task(release())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ one delivery
    async def handle(self, item: WorkItem) -> None:
        """Attempt one delivery (or skip or defer it) and record what happened."""
        delivery, event, raw_subscriber, breaker = await self.ledger.attempt_context(item)
        if not delivery:
            # Its record outlived ROUTER_RETENTION before an attempt: the backlog is longer
            # than the retention. Counted and logged, never silent.
            await self.ledger.ack(item)
            self.metrics.delivered("expired").inc()
            log.warning("delivery %s expired before it could be attempted", item.delivery_id)
            return
        if DeliveryStatus(delivery["status"]) in TERMINAL:
            await self.ledger.ack(item)  # a stale duplicate of finished work
            return
        if not event:
            await self._skip(item, "event expired before delivery")
            return
        if raw_subscriber is None:
            await self._skip(item, "subscriber deleted")
            return
        subscriber = self._subscriber(raw_subscriber)
        refusal = entitlement_refusal(
            subscriber, event["event"], event["location_id"], event["company_id"], self.catalog
        )
        if refusal is not None:
            await self._skip(item, refusal)
            return
        probing = await self._breaker_gate(item, breaker)
        if probing is None:
            return
        try:
            await self._attempt(item, delivery, event, subscriber)
        finally:
            if probing:
                await self.ledger.release_probe(item.subscriber_id)

    def _subscriber(self, raw: bytes) -> Subscriber:
        """Parse a subscriber's JSON once per version of it, not once per attempt."""
        subscriber = self._subscribers.get(raw)
        if subscriber is None:
            if len(self._subscribers) >= 10_000:
                self._subscribers.clear()
            subscriber = self._subscribers[raw] = Subscriber.model_validate_json(raw)
        return subscriber

    async def _breaker_gate(self, item: WorkItem, breaker: dict[str, str]) -> bool | None:
        """False: attempt normally. True: attempt as the breaker's probe. None: deferred."""
        if int(breaker.get("failures", 0)) < self.settings.breaker_threshold:
            return False
        now = now_ms()
        open_until = int(breaker.get("open_until", 0))
        probe_ttl = int((self.settings.delivery_timeout + 5) * 1000)
        if now < open_until or not await self.ledger.acquire_probe(item.subscriber_id, probe_ttl):
            # Wait, out of the shared queue, until a probe has succeeded. The release loop
            # (`WorkerGroup`) brings the work back once the breaker lets attempts through;
            # a probe in flight elsewhere is given that loop's period to report.
            await self.ledger.park([item])
            self._parked.add(item.subscriber_id)
            if len(self._held_until) >= 10_000:  # subscribers never attempted again
                self._held_until = {s: t for s, t in self._held_until.items() if t > now}
            self._held_until[item.subscriber_id] = max(open_until, now + BREAKER_HOLD_MS)
            return None
        return True

    async def _skip(self, item: WorkItem, reason: str) -> None:
        await self.ledger.finish(item, status=DeliveryStatus.skipped, fields={"reason": reason})
        self.metrics.delivered("skipped").inc()

    async def _attempt(
        self, item: WorkItem, delivery: dict[str, str], event: dict[str, Any], sub: Subscriber
    ) -> None:
        assert self.session is not None
        number = int(delivery.get("attempts", 0)) + 1
        now = now_ms()
        headers = delivery_headers(
            item.delivery_id,
            now // 1000,
            event["body"],
            sub.signing_secrets(now),
            event["event"],
            number,
            item.event_id,
        )
        result = await post_event(
            self.session,
            sub.url,
            event["body"],
            headers,
            allow_private=self.settings.allow_private_targets,
            timeout=self.settings.delivery_timeout,
        )
        self._free_slot(item)
        self.metrics.attempt_seconds.observe(result.duration_ms / 1000)
        record = {
            "attempt": number,
            "at": rfc3339(now),
            "status_code": result.status_code,
            "error": result.error,
            "duration_ms": result.duration_ms,
            "response_body": result.response_body,
        }
        fields: dict[str, str | int] = {
            "attempts": number,
            "last_status_code": result.status_code or "",
            "last_error": result.error or "",
            "next_attempt_at": "",
        }
        if result.succeeded:
            self._held_until.pop(sub.id, None)  # its breaker closes with this success
            await self.ledger.finish(
                item, status=DeliveryStatus.succeeded, attempt=record, fields=fields, breaker=True
            )
            self.metrics.delivered("succeeded").inc()
            if event["received_at"]:
                self.metrics.end_to_end_seconds.observe((now_ms() - event["received_at"]) / 1000)
            return
        if result.status_code == 410:
            reason = "receiver answered 410 Gone; subscriber disabled"
            fields["reason"] = reason
            await self.ledger.finish(
                item, status=DeliveryStatus.dead, attempt=record, fields=fields
            )
            await self.store.set_status(sub.id, SubscriberStatus.disabled, reason)
            self.metrics.delivered("dead").inc()
            log.warning("subscriber %s answered 410 Gone: disabled", sub.id)
            return
        failures = int(delivery.get("schedule_index", 0)) + 1
        delay = self.policy.next_delay(failures, result.retry_after)
        fields["schedule_index"] = failures
        breaker_args = {
            "breaker": False,
            "breaker_threshold": self.settings.breaker_threshold,
            "probe_interval_ms": int(self.settings.breaker_probe_interval * 1000),
        }
        if delay is None:
            fields["reason"] = f"gave up after {number} attempts"
            await self.ledger.finish(
                item, status=DeliveryStatus.dead, attempt=record, fields=fields, **breaker_args
            )
            self.metrics.delivered("dead").inc()
            return
        due = now_ms() + int(delay * 1000)
        fields["next_attempt_at"] = due
        await self.ledger.finish(
            item,
            status=DeliveryStatus.failed,
            attempt=record,
            fields=fields,
            retry_at=due,
            **breaker_args,
        )
        self.metrics.delivered("failed").inc()
