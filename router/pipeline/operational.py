"""The router's own events (`subscriptions.catalog.ROUTER_EVENTS`, scope `router.operations`):
what operators would otherwise learn only by looking.

Each is accepted into the ledger like a platform event, so from there on nothing about it is
special: stored, fanned out by the routing rule to the subscribers granted `router.operations`,
signed, retried, dead-lettered, replayable. It belongs to no tenant (no location, no company),
so the rule gives it to those subscribers only if they have no tenant binding: a tenant's app
never hears of other tenants' subscribers.

An operational event is never emitted about the delivery of another one (`Attempts` checks the
event it attempted): a receiver of operational events that fails, trips its breaker or answers
410 produces no more of them, so they cannot feed on themselves.

Emitting never waits on Redis: `emit` queues the event in the process and one background task
accepts the queue in order. While Redis is unreachable or refuses writes, an event is retried
for up to `give_up_after` seconds; then, or when `max_queued` are already waiting, it is
dropped with a warning and counted (`router_operational_events{outcome="dropped"}`): best
effort, never silent. Each event carries a webhook id of its own, so an accept retried after
an unconfirmed write is found as a duplicate, not stored twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Mapping

import orjson
from redis.exceptions import ResponseError

from router.core.metrics import Metrics
from router.core.records import IncomingEvent
from router.storage.client import UNAVAILABLE, refusing_writes
from router.storage.ledger import Ledger, Overloaded
from subscriptions.catalog import ROUTER_EVENTS
from subscriptions.ids import now_ms, rfc3339

log = logging.getLogger("router.operational")

MAX_QUEUED = 1000
GIVE_UP_AFTER = 60.0  # seconds an event is retried while Redis is unavailable
RETRY_FIRST, RETRY_MAX = 0.2, 5.0  # seconds between accepts while Redis is unavailable


class OperationalEvents:
    """Queues the router's own events and accepts them in the background."""

    def __init__(
        self,
        ledger: Ledger,
        metrics: Metrics,
        *,
        max_queued: int = MAX_QUEUED,
        give_up_after: float = GIVE_UP_AFTER,
    ) -> None:
        self.ledger = ledger
        self.metrics = metrics
        self.max_queued = max_queued
        self.give_up_after = give_up_after
        self._queue: deque[tuple[float, IncomingEvent]] = deque()
        self._sender: asyncio.Task[None] | None = None

    def emit(
        self,
        event: str,
        /,
        *,
        reason: str,
        subscriber_id: str | None = None,
        counts: Mapping[str, int] | None = None,
        **details: str,
    ) -> None:
        """Queue `event` (one of ROUTER_EVENTS) for acceptance; returns at once. Its body:
        `type`, `timestamp`, `subscriber_id` (null when none applies), `reason`, `counts`,
        then `details`."""
        if event not in ROUTER_EVENTS:
            raise ValueError(f"{event} is not one of the router's events")
        if len(self._queue) >= self.max_queued:
            self._dropped(event, f"{self.max_queued} operational events already waiting")
            return
        now = now_ms()
        body = {
            "type": event,
            "timestamp": rfc3339(now),
            "subscriber_id": subscriber_id,
            "reason": reason,
            "counts": dict(counts or {}),
            **details,
        }
        webhook_id = f"router-{secrets.token_hex(12)}"
        incoming = IncomingEvent(
            event_id=self.ledger.new_event_id(webhook_id=webhook_id, body_digest=None),
            body=orjson.dumps(body),
            event=event,
            payload_type=event,
            location_id=None,
            company_id=None,
            webhook_id=webhook_id,
            body_digest=None,
            received_at=now,
            routable=True,
        )
        self._queue.append((time.monotonic(), incoming))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send())

    async def close(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the queue to be accepted; what is left is dropped
        (logged and counted)."""
        if self._sender is not None and not self._sender.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._sender), timeout)
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        while self._queue:
            _, incoming = self._queue.popleft()
            self._dropped(incoming.event, "the process stopped before Redis took it")

    async def _send(self) -> None:
        delay = RETRY_FIRST
        while self._queue:
            queued_at, incoming = self._queue[0]
            try:
                await self.ledger.accept(incoming)
            except (*UNAVAILABLE, Overloaded, ResponseError) as exc:
                not_now = not isinstance(exc, ResponseError) or refusing_writes(exc)
                if not_now and time.monotonic() - queued_at < self.give_up_after:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
                    continue
                self._queue.popleft()
                self._dropped(incoming.event, f"not stored: {exc!r}")
                continue
            self._queue.popleft()
            delay = RETRY_FIRST
            self.metrics.operational_events.labels(event=incoming.event, outcome="emitted").inc()

    def _dropped(self, event: str, why: str) -> None:
        log.warning("operational event %s dropped: %s", event, why)
        self.metrics.operational_events.labels(event=event, outcome="dropped").inc()
