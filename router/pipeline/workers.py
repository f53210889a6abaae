"""The background side of a process: dispatcher, delivery worker, retry scheduler, the
release of parked work, and the heartbeat that keeps other processes off its work.

`webhook-router serve` runs a `WorkerGroup` inside the web app; `webhook-router worker` runs
one alone. Any number of processes may run against one Redis: they share the work through
consumer groups, and whichever is alive moves due retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
from collections.abc import Awaitable, Callable

from router.core.metrics import Metrics
from router.pipeline.attempt import Attempts
from router.pipeline.delivery import DeliveryWorker
from router.pipeline.dispatch import Dispatcher
from router.pipeline.operational import OperationalEvents
from router.settings import Settings
from router.storage.client import UNAVAILABLE
from router.storage.ledger import MOVE_DUE_LIMIT, Ledger
from subscriptions.catalog import Catalog
from subscriptions.ids import now_ms
from subscriptions.store import SubscriberStore

log = logging.getLogger("router.workers")

RETRY_POLL_SECONDS = 0.2
TRIM_EVERY_SECONDS = 60.0
PARKED_RELEASE_SECONDS = 1.0
# Held work first in its order is normally woken by its predecessor; one held just as that
# finished is found by the release loop once it has waited this long.
ORDER_STRANDED_AFTER_MS = 2000
HEARTBEAT_EVERY_SECONDS = 2.0
HEARTBEAT_TTL_MS = 10_000  # a process silent this long is presumed dead; its work is taken over


def consumer_name() -> str:
    """Unique per process start, so a restarted process never inherits a dead one's entries
    except through reclaiming."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class WorkerGroup:
    """Starts and drains the background loops of one process."""

    def __init__(
        self,
        *,
        settings: Settings,
        catalog: Catalog,
        store: SubscriberStore,
        ledger: Ledger,
        metrics: Metrics,
        operations: OperationalEvents,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.consumer = consumer = consumer_name()
        self.dispatcher = Dispatcher(ledger, store, metrics, consumer, settings.reclaim_after)
        attempts = Attempts(
            ledger=ledger,
            store=store,
            catalog=catalog,
            settings=settings,
            metrics=metrics,
            operations=operations,
        )
        self.worker = DeliveryWorker(
            ledger=ledger, attempts=attempts, settings=settings, consumer=consumer
        )
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start the loops; a Redis that is down now is waited for in the background."""
        self._tasks = [
            asyncio.create_task(self._heartbeat()),
            asyncio.create_task(self._supervise("dispatcher", self.dispatcher.run)),
            asyncio.create_task(self._supervise("worker", self.worker.run)),
            asyncio.create_task(self._schedule_retries()),
            asyncio.create_task(self._release_parked()),
        ]

    async def stop(self) -> None:
        """Stop taking work, finish or hand back what is in flight, within the delivery
        timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.delivery_timeout
        self._stopping.set()
        await asyncio.wait(self._tasks, timeout=min(2.0, self.settings.delivery_timeout))
        await self.worker.drain(max(0.0, deadline - loop.time()))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(*UNAVAILABLE):
            await self.ledger.heartbeats.forget(self.consumer)

    async def _heartbeat(self) -> None:
        """Keep this process's consumer marked alive, so others leave its work alone."""
        while not self._stopping.is_set():
            with contextlib.suppress(*UNAVAILABLE):
                await self.ledger.heartbeats.beat(self.consumer, HEARTBEAT_TTL_MS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), HEARTBEAT_EVERY_SECONDS)

    async def _supervise(self, name: str, loop: Callable[[asyncio.Event], Awaitable[None]]) -> None:
        """Run one loop; an unexpected crash is logged and the loop restarted."""
        while not self._stopping.is_set():
            try:
                await self._ensure_groups()
                await loop(self._stopping)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s loop crashed; restarting in 1s", name)
                await asyncio.sleep(1.0)

    async def _ensure_groups(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                await self.ledger.ensure_groups()
                return
            except UNAVAILABLE:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _schedule_retries(self) -> None:
        """Move due retries to the ready queue; trim expired index entries now and then."""
        loop = asyncio.get_running_loop()
        await self._ensure_groups()
        next_trim = loop.time()
        while not self._stopping.is_set():
            try:
                moved = 0
                for partition in self.ledger.partitions:
                    moved = max(moved, await self.ledger.move_due_retries(partition))
                if loop.time() >= next_trim:
                    next_trim = loop.time() + TRIM_EVERY_SECONDS
                    await self.ledger.trim()
            except UNAVAILABLE:
                moved = 0
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("retry scheduler failed; retrying")
                moved = 0
                await asyncio.sleep(1.0)
            # After a full batch more may be due already: go again without waiting.
            if moved < MOVE_DUE_LIMIT:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), RETRY_POLL_SECONDS)

    async def _release_parked(self) -> None:
        """Give each subscriber with parked work a batch back when its breaker lets attempts
        through: whatever process parked it, and whether or not that process still runs. A
        subscriber that still has no room parks it again, a small amount of churn per second
        instead of its whole backlog."""
        batch = self.settings.subscriber_concurrency
        while not self._stopping.is_set():
            try:
                for subscriber_id, partition, can in await self.ledger.parked_subscribers():
                    if can:
                        await self.ledger.release_parked(subscriber_id, partition, batch)
                await self.ledger.wake_stranded_orders(now_ms() - ORDER_STRANDED_AFTER_MS)
            except UNAVAILABLE:
                pass
            except Exception:
                log.exception("releasing parked work failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), PARKED_RELEASE_SECONDS)


async def run_until_signalled(group: WorkerGroup) -> None:
    """Run `group` until SIGTERM or SIGINT, then drain it (used by `worker`)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await group.start()
    await stop.wait()
    log.info("draining: finishing attempts in flight")
    await group.stop()
