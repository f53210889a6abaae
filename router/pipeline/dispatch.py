"""Where an event is fanned out: one delivery per entitled subscriber.

The dispatcher reads the events stream in the `dispatch` consumer group. For each event it
asks `SubscriberStore.entitled_subscribers` who may receive it, and creates their deliveries
together with the stream acknowledgement in one script. A dispatcher that dies mid-batch
leaves its entries pending; another claims them after `ROUTER_RECLAIM_AFTER` seconds, and
since delivery ids are derived from (event, subscriber), re-dispatch creates nothing twice.
"""

from __future__ import annotations

import asyncio
import time

from router.core import tracing
from router.core.metrics import Metrics
from router.core.records import delivery_id_for, resource_of
from router.pipeline.consumer import Consumer
from router.storage.ledger import Ledger, Plan
from subscriptions.models import Subscriber
from subscriptions.store import SubscriberStore

RoutingKey = tuple[str, str | None, str | None]


class EntitlementCache:
    """Entitled subscribers per (event, location, company), valid while no subscriber changes.

    Every subscriber write bumps one version counter; the cache checks it once per batch, so
    a burst of events for the same tenants costs one Redis read, while a grant change is seen
    by the very next batch (and every attempt re-checks the rule anyway).
    """

    def __init__(self, store: SubscriberStore, max_entries: int = 10_000) -> None:
        self.store = store
        self.max_entries = max_entries
        self._version: bytes | None = None
        self._entries: dict[RoutingKey, list[Subscriber]] = {}

    async def refresh(self) -> None:
        version = await self.store.version()
        if version != self._version or len(self._entries) > self.max_entries:
            self._entries.clear()
            self._version = version

    async def entitled(self, key: RoutingKey) -> list[Subscriber]:
        if key not in self._entries:
            self._entries[key] = await self.store.entitled_subscribers(*key)
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

    async def _order_entries(
        self, to_order: list[tuple[str, str, list[str]]]
    ) -> list[tuple[str, str, str]]:
        """(subscriber, resource, delivery id) for each ordered subscriber of each event that
        names a resource."""
        if not to_order:
            return []
        bodies = await self.ledger.event_bodies([event_id for event_id, _, _ in to_order])
        entries = []
        for (event_id, path, subscribers), body in zip(to_order, bodies, strict=True):
            resource = resource_of(body, path)
            if resource is not None:
                entries += [(s, resource, delivery_id_for(event_id, s)) for s in subscribers]
        return entries

    async def dispatch(self, batch: list[tuple[str, str]]) -> int:
        """Create the deliveries of a batch of (entry id, event id); returns how many."""
        started = time.time_ns()
        await self.cache.refresh()
        routing = await self.ledger.routing_fields([event_id for _, event_id in batch])
        plans: list[Plan] = []
        to_order: list[tuple[str, str, list[str]]] = []
        for (entry_id, event_id), fields in zip(batch, routing, strict=True):
            if fields is None:  # expired before dispatch: nothing to deliver, just ack
                plans.append((entry_id, event_id, "", []))
                continue
            event = fields["event"] or ""
            subscribers = await self.cache.entitled(
                (event, fields["location_id"], fields["company_id"])
            )
            plans.append((entry_id, event_id, event, [s.id for s in subscribers]))
            ordered = [s.id for s in subscribers if s.ordering == "resource"]
            if ordered and (path := self.catalog.resource_key(event)) is not None:
                to_order.append((event_id, path, ordered))
        # Entered in their resources' orders before they are queued, so no later delivery
        # about the same resource can be attempted before these are known to come first.
        await self.ledger.enter_orders(await self._order_entries(to_order))
        created = await self.ledger.create_deliveries(plans)
        tracing.dispatched(started, plans, routing)
        self.metrics.delivered("created").inc(created)
        return created
