"""Where an event is fanned out: one delivery per entitled subscriber.

The dispatcher reads the events stream in the `dispatch` consumer group. For each event it
asks `SubscriberStore.audience` who may receive it, applies their payload filters to the
event's body (read and parsed once, and only if a filter needs it), and creates their deliveries
together with the stream acknowledgement in one script. A dispatcher that dies mid-batch
leaves its entries pending; another claims them after `ROUTER_RECLAIM_AFTER` seconds, and
since delivery ids are derived from (event, subscriber), re-dispatch creates nothing twice.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, NamedTuple

from router.core import tracing
from router.core.metrics import Metrics
from router.core.records import delivery_id_for, payload_of
from router.pipeline.consumer import Consumer
from router.storage.ledger import Ledger, Plan, RoutingFields
from subscriptions.catalog import resource_value
from subscriptions.routing import Audience
from subscriptions.store import SubscriberStore

RoutingKey = tuple[str, str | None, str | None]


class Recipients(NamedTuple):
    """Who an (event, tenant) may go to before payload filters, and whether the event's
    payload must be read: for a filter, or to order a subscriber's deliveries by resource."""

    audience: Audience
    needs_payload: bool


class EntitlementCache:
    """Recipients per (event, location, company), valid while no subscriber changes.

    Every subscriber write bumps one version counter; the cache checks it once per batch, so
    a burst of events for the same tenants costs one Redis read, while a grant change is seen
    by the very next batch (and every attempt re-checks the rule anyway). Each version of a
    subscriber is parsed, and its payload filter compiled, once per entry.
    """

    def __init__(self, store: SubscriberStore, max_entries: int = 10_000) -> None:
        self.store = store
        self.catalog = store.catalog
        self.max_entries = max_entries
        self._version: bytes | None = None
        self._entries: dict[RoutingKey, Recipients] = {}
        self.wants_bodies = False  # some recipients seen since the last change need a payload

    async def refresh(self) -> None:
        version = await self.store.version()
        if version != self._version or len(self._entries) > self.max_entries:
            self._entries.clear()
            self._version = version
            self.wants_bodies = False

    async def recipients(self, key: RoutingKey) -> Recipients:
        if key not in self._entries:
            audience = await self.store.audience(*key)
            ordered = self.catalog.resource_key(key[0]) is not None and any(
                s.ordering == "resource" for s in audience.subscribers
            )
            self._entries[key] = Recipients(audience, audience.needs_payload or ordered)
            self.wants_bodies = self.wants_bodies or self._entries[key].needs_payload
        return self._entries[key]


class Dispatcher:
    def __init__(
        self,
        ledger: Ledger,
        store: SubscriberStore,
        metrics: Metrics,
        consumer: str,
        reclaim_after: float,
        batch_size: int = 200,
    ) -> None:
        self.ledger = ledger
        self.catalog = store.catalog
        self.cache = EntitlementCache(store)
        self.metrics = metrics
        self.consumer = consumer
        self.reclaim_after_ms = int(reclaim_after * 1000)
        self.batch_size = batch_size

    async def run(self, stopping: asyncio.Event) -> None:
        """Dispatch every partition until `stopping` is set; survives Redis outages by
        waiting them out."""
        await asyncio.gather(*(self._consumer(p).run(stopping) for p in self.ledger.partitions))

    def _consumer(self, partition: int) -> Consumer[tuple[str, str]]:
        ledger, consumer = self.ledger, self.consumer

        async def read(count: int, block_ms: int) -> list[tuple[str, str]]:
            return await ledger.read_events(partition, consumer, count, block_ms)

        async def claim(count: int) -> list[tuple[str, str]]:
            return await ledger.claim_stale_events(
                partition, consumer, self.reclaim_after_ms, count
            )

        return Consumer(
            "events",
            room=self._room,
            read=read,
            claim=claim,
            handle=self.dispatch,
            ensure_groups=ledger.ensure_groups,
            reclaim_after_ms=self.reclaim_after_ms,
        )

    async def _room(self) -> int:
        return self.batch_size

    async def _payloads(
        self, wanted: list[tuple[str, RoutingFields]]
    ) -> dict[str, dict[str, Any] | None]:
        """The parsed payloads of these events, each parsed once: their bodies as read with
        the routing fields, or else read now in one round trip."""
        unread = [event_id for event_id, fields in wanted if "body" not in fields]
        bodies = (
            dict(zip(unread, await self.ledger.event_bodies(unread), strict=True)) if unread else {}
        )
        return {
            event_id: payload_of(fields["body"] if "body" in fields else bodies[event_id])
            for event_id, fields in wanted
        }

    async def dispatch(self, batch: list[tuple[str, str]]) -> int:
        """Create the deliveries of a batch of (entry id, event id); returns how many."""
        started = time.time_ns()
        # Bodies are read only for events some subscriber filters or orders: with the routing
        # fields once the cache has met such a subscriber, on their own the first time; never
        # while no subscriber has a filter or orders by resource. The cache's version check
        # runs alongside (a refresh only ever stops bodies being wanted): every round trip a
        # batch waits for in turn delays the next read of the stream.
        _, routing = await asyncio.gather(
            self.cache.refresh(),
            self.ledger.routing_fields(
                [event_id for _, event_id in batch], with_body=self.cache.wants_bodies
            ),
        )
        found: list[tuple[str, str, str, Recipients | None]] = []
        wanted: list[tuple[str, RoutingFields]] = []
        for (entry_id, event_id), fields in zip(batch, routing, strict=True):
            if fields is None:  # expired before dispatch: nothing to deliver, just ack
                found.append((entry_id, event_id, "", None))
                continue
            event = fields["event"] or ""
            key = (event, fields["location_id"], fields["company_id"])
            recipients = await self.cache.recipients(key)
            found.append((entry_id, event_id, event, recipients))
            if recipients.needs_payload:
                wanted.append((event_id, fields))
        payloads = await self._payloads(wanted)
        plans: list[Plan] = []
        orders: list[tuple[str, str, str]] = []
        for entry_id, event_id, event, recipients in found:
            if recipients is None:
                plans.append((entry_id, event_id, "", []))
                continue
            payload = payloads.get(event_id)
            subscribers = recipients.audience.entitled(payload)
            plans.append((entry_id, event_id, event, [s.id for s in subscribers]))
            path = self.catalog.resource_key(event)
            resource = None if payload is None or path is None else resource_value(payload, path)
            if resource is not None:
                orders += [
                    (s.id, resource, delivery_id_for(event_id, s.id))
                    for s in subscribers
                    if s.ordering == "resource"
                ]
        # Entered in their resources' orders before they are queued, so no later delivery
        # about the same resource can be attempted before these are known to come first.
        await self.ledger.enter_orders(orders)
        created = await self.ledger.create_deliveries(plans)
        tracing.dispatched(started, plans, routing)
        self.metrics.delivered("created", created)
        return created
