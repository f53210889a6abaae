"""Where one delivery is attempted.

For a unit of ready work: read its context (delivery, event, subscriber, breaker) in a batch
shared with the attempts starting alongside; re-check the routing rule (a revoked grant, a
paused or deleted subscriber, a changed event or payload filter turns it `skipped`); wait behind the
subscriber's circuit breaker if it is open; POST the raw body with Standard Webhooks
signatures; and record what `router.core.outcome.judge` makes of the result, atomically with
the queue acknowledgement; then tell operators (`router.pipeline.operational`) of a breaker
that opened or closed, a delivery that died, a subscriber disabled. How many attempts run at
once, and what waits, is `router.pipeline.delivery`'s business.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from router.core import outcome as outcomes
from router.core import tracing
from router.core.metrics import Metrics
from router.core.outcome import Outcome
from router.core.records import (
    TERMINAL,
    AttemptContext,
    DeliveryStatus,
    WorkItem,
    payload_of,
    resource_of,
)
from router.core.retry import RetryPolicy
from router.core.signing import delivery_headers
from router.pipeline.client import DeliveryClient
from router.pipeline.operational import OperationalEvents
from router.settings import Settings
from router.storage.ledger import Ledger
from subscriptions.catalog import Catalog, is_router_event
from subscriptions.ids import now_ms
from subscriptions.models import Subscriber, SubscriberStatus
from subscriptions.routing import entitlement_refusal
from subscriptions.store import SubscriberStore

log = logging.getLogger("router.delivery")

BREAKER_HOLD_MS = 1000  # the shortest hold on work an open breaker sent back to be parked
MAX_RATE_WAIT = 1.0  # seconds; a longer wait is asked again (the limit may have changed)
DISPATCH_WAIT = 2.0  # seconds an ordered delivery waits for older events' dispatch, at most
DISPATCH_POLL = 0.01
STALE_HEADS = 5  # finished entries cleared from an order at one attempt, at most
SUBSCRIBER_CACHE = 10_000


class Held(NamedTuple):
    """The subscriber's open breaker holds its work until `until_ms`: park it till then."""

    until_ms: int


class Behind(NamedTuple):
    """An earlier delivery about the same resource comes first: hold this one until then."""

    resource: str


class OrderSlot(NamedTuple):
    """The resource an ordered subscriber's delivery is about."""

    subscriber_id: str
    resource: str


class Attempts:
    """Attempts deliveries and records their outcomes."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        store: SubscriberStore,
        catalog: Catalog,
        settings: Settings,
        metrics: Metrics,
        operations: OperationalEvents,
    ) -> None:
        self.ledger = ledger
        self.operations = operations
        self.store = store
        self.catalog = catalog
        self.settings = settings
        self.metrics = metrics
        self.policy = RetryPolicy(settings.retry_schedule)
        self._policies: dict[tuple[float, ...], RetryPolicy] = {}
        self.breaker_threshold = settings.breaker_threshold
        self.probe_interval_ms = int(settings.breaker_probe_interval * 1000)
        self._subscribers: dict[bytes, Subscriber] = {}  # parsed, by their exact JSON

    async def attempt(
        self,
        item: WorkItem,
        session: DeliveryClient,
        answered: Callable[[], None],
        context: AttemptContext | Exception | None = None,
    ) -> Outcome | Held | Behind | None:
        """Handle one unit of work: the outcome recorded, `Held` if the breaker sends it back,
        `Behind` if an earlier delivery about its resource must go first, or None if it needed
        nothing (a stale duplicate, an expired record). `answered` is called as soon as the
        receiver has answered, before the outcome is recorded. `context` is the attempt's, if
        it was read with the work; else it is read now."""
        if context is None:
            context = await self.ledger.attempt_context(item)
        elif isinstance(context, Exception):
            raise context
        delivery, event, raw_subscriber, breaker = context
        if not delivery:
            # Its record outlived ROUTER_RETENTION before an attempt: the backlog is longer
            # than the retention. Counted and logged, never silent.
            await self.ledger.ack(item)
            self.metrics.delivered("expired")
            log.warning("delivery %s expired before it could be attempted", item.delivery_id)
            return None
        if DeliveryStatus(delivery["status"]) in TERMINAL:
            await self.ledger.ack(item)  # a stale duplicate of finished work
            return None
        if not event:
            return await self.record(item, outcomes.skipped("event expired before delivery"))
        if raw_subscriber is None:
            return await self.record(item, outcomes.skipped("subscriber deleted"))
        subscriber = self._subscriber(raw_subscriber)
        order = self._order_slot(subscriber, event)
        # The body is in the context already; it is parsed only for a filter to see.
        payload = payload_of(event["body"]) if subscriber.filter is not None else None
        refusal = entitlement_refusal(
            subscriber,
            event["event"],
            event["location_id"],
            event["company_id"],
            self.catalog,
            payload,
        )
        if refusal is not None:
            return await self.record(item, outcomes.skipped(refusal), order)
        if order is not None and not await self._first_in_order(item, order):
            return Behind(order.resource)
        probing = await self._breaker_gate(item, breaker)
        if isinstance(probing, Held):
            return probing
        try:
            if subscriber.rate_limit is not None:
                await self._wait_for_rate(subscriber)
            return await self._post(
                item, delivery, event, subscriber, session, answered, order, not breaker
            )
        finally:
            if probing:
                await self.ledger.release_probe(item.subscriber_id)

    async def fail(self, item: WorkItem, error: BaseException) -> None:
        """Dead-letter a delivery whose handling met a bug, so it is not reclaimed forever."""
        log.error(
            "delivery %s failed unexpectedly (%s); dead-lettered",
            item.delivery_id,
            type(error).__name__,
            exc_info=error,
        )
        await self.record(item, outcomes.failed_internally(error))

    async def record(
        self,
        item: WorkItem,
        outcome: Outcome,
        order: OrderSlot | None = None,
        *,
        breaker_clear: bool = False,
    ) -> Outcome:
        await self._record(item, outcome, order, breaker_clear=breaker_clear)
        return outcome

    async def _record(
        self, item: WorkItem, outcome: Outcome, order: OrderSlot | None, *, breaker_clear: bool
    ) -> int:
        """Record the outcome; returns what it did to the breaker (`Ledger.finish`)."""
        turned = await self.ledger.finish(
            item,
            outcome,
            breaker_threshold=self.breaker_threshold,
            probe_interval_ms=self.probe_interval_ms,
            breaker_clear=breaker_clear,
        )
        self.metrics.delivered(outcome.metric)
        if order is not None and outcome.status in TERMINAL:
            # Finished, it no longer holds back the deliveries after it about its resource.
            await self.ledger.leave_order(order.subscriber_id, order.resource, item.delivery_id)
        return turned

    def _order_slot(self, subscriber: Subscriber, event: dict[str, Any]) -> OrderSlot | None:
        """The resource this delivery is ordered by, if the subscriber orders its deliveries
        and the event names one (an event without it is ordered with nothing)."""
        if subscriber.ordering != "resource":
            return None
        path = self.catalog.resource_key(event["event"])
        resource = None if path is None else resource_of(event["body"], path)
        return None if resource is None else OrderSlot(subscriber.id, resource)

    async def _first_in_order(self, item: WorkItem, order: OrderSlot) -> bool:
        """True if the delivery may be attempted now: first among its resource's pending
        deliveries, once every older event has been dispatched (an older one still waiting
        in another partition would otherwise be overtaken). An entry left by a delivery that
        finished without leaving (a crash) is cleared on the way."""
        deadline = time.monotonic() + DISPATCH_WAIT
        while (
            mark := await self.ledger.dispatch_watermark(item.event_id)
        ) is not None and mark < item.event_id:
            if time.monotonic() > deadline:
                break  # dispatch is stuck elsewhere; order as far as it has got
            await asyncio.sleep(DISPATCH_POLL)
        for _ in range(STALE_HEADS):
            first = await self.ledger.enter_order(
                order.subscriber_id, order.resource, item.delivery_id
            )
            if first == item.delivery_id:
                return True
            status = await self.ledger.delivery_status(first)
            if status is not None and DeliveryStatus(status) not in TERMINAL:
                return False
            await self.ledger.leave_order(order.subscriber_id, order.resource, first)
        return False

    async def _wait_for_rate(self, subscriber: Subscriber) -> None:
        """Wait until the subscriber's rate limit lets one more request go (booked then):
        throttled work waits in its slot, it is not failed."""
        limit = subscriber.rate_limit
        assert limit is not None
        while wait := await self.ledger.throttle(
            subscriber.id, per_second=limit.per_second, burst=limit.burst
        ):
            await asyncio.sleep(min(wait, MAX_RATE_WAIT))

    def _policy(self, subscriber: Subscriber) -> RetryPolicy:
        if subscriber.retry_schedule is None:
            return self.policy
        schedule = tuple(subscriber.retry_schedule)
        policy = self._policies.get(schedule)
        if policy is None:
            if len(self._policies) >= SUBSCRIBER_CACHE:
                self._policies.clear()
            policy = self._policies[schedule] = RetryPolicy(schedule)
        return policy

    def _subscriber(self, raw: bytes) -> Subscriber:
        """Parse a subscriber's JSON once per version of it, not once per attempt."""
        subscriber = self._subscribers.get(raw)
        if subscriber is None:
            if len(self._subscribers) >= SUBSCRIBER_CACHE:
                self._subscribers.clear()
            subscriber = self._subscribers[raw] = Subscriber.model_validate_json(raw)
        return subscriber

    async def _breaker_gate(self, item: WorkItem, breaker: dict[str, str]) -> bool | Held:
        """False: attempt normally. True: attempt as the breaker's probe. Held: wait, out of
        the shared queue, until a probe has succeeded (a probe in flight elsewhere is given
        the hold to report)."""
        if int(breaker.get("failures", 0)) < self.breaker_threshold:
            return False
        now = now_ms()
        open_until = int(breaker.get("open_until", 0))
        probe_ttl = int((self.settings.delivery_timeout + 5) * 1000)
        if now < open_until or not await self.ledger.acquire_probe(item.subscriber_id, probe_ttl):
            return Held(max(open_until, now + BREAKER_HOLD_MS))
        return True

    @tracing.attempt_span
    async def _post(
        self,
        item: WorkItem,
        delivery: dict[str, str],
        event: dict[str, Any],
        sub: Subscriber,
        session: DeliveryClient,
        answered: Callable[[], None],
        order: OrderSlot | None,
        breaker_clear: bool,
    ) -> Outcome:
        number = int(delivery.get("attempts", 0)) + 1
        started = now_ms()
        headers = delivery_headers(
            item.delivery_id,
            started // 1000,
            event["body"],
            sub.signing_secrets(started),
            event["event"],
            number,
            item.event_id,
        )
        result = await session.post(sub.url, event["body"], headers)
        answered()
        self.metrics.attempt_seconds.observe(result.duration_ms / 1000)
        outcome = outcomes.judge(
            result,
            attempt=number,
            failures=int(delivery.get("schedule_index", 0)),
            policy=self._policy(sub),
            started_ms=started,
            now_ms=now_ms(),
        )
        # A success closes the breaker; there is nothing to close if no failure was counted.
        turned = await self._record(item, outcome, order, breaker_clear=breaker_clear)
        if result.succeeded and event["received_at"]:
            self.metrics.end_to_end_seconds.observe((now_ms() - event["received_at"]) / 1000)
        if outcome.disable_reason is not None:
            await self.store.set_status(sub.id, SubscriberStatus.disabled, outcome.disable_reason)
            log.warning("subscriber %s answered 410 Gone: disabled", sub.id)
        # Never about an operational event's own delivery: those must not breed more.
        if not is_router_event(event["event"]):
            self._announce(item, event["event"], outcome, turned)
        return outcome

    def _announce(self, item: WorkItem, event: str, outcome: Outcome, turned: int) -> None:
        """Emit the operational events this attempt's outcome calls for."""
        emit, sub, fields = self.operations.emit, item.subscriber_id, outcome.fields
        code, error = fields.get("last_status_code"), fields.get("last_error")
        last = f"HTTP {code}" if code not in (None, "") else str(error or "no answer")
        if turned > 0:
            reason = f"{turned} consecutive failed attempts, the last: {last}"
            counts = {"failures": turned}
            emit("router.breaker.opened", subscriber_id=sub, reason=reason, counts=counts)
        elif turned < 0:
            emit("router.breaker.closed", subscriber_id=sub, reason="an attempt succeeded")
        if outcome.status is DeliveryStatus.dead:
            emit(
                "router.delivery.dead",
                subscriber_id=sub,
                reason=str(fields.get("reason", "")),
                counts={"attempts": int(fields["attempts"])},
                delivery_id=item.delivery_id,
                event_id=item.event_id,
                event=event,
            )
        if outcome.disable_reason is not None:
            emit(
                "router.subscriber.disabled",
                subscriber_id=sub,
                reason=outcome.disable_reason,
                status=SubscriberStatus.disabled.value,
            )
