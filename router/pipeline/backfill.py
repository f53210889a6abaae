"""Backfill: deliveries for the retained events of a window that a subscriber is entitled to
now but has none for (it gained a scope, a tenant or an event after they were fanned out).

The window is read a page per partition at a time, each page awaited, so a large one never
holds up the server; who is entitled is the routing rule's answer today (the same one
dispatch and every attempt apply). A delivery is created only where none exists, inside the
one-slot script dispatch uses, so calling again schedules nothing twice. After every page the
cursor is recorded: a call repeated after a crash goes on from there instead of rereading
what was done.
"""

from __future__ import annotations

from collections.abc import Collection

from router.core.records import payload_of
from router.storage.backfill import BackfillStore, Cursor
from router.storage.ledger import Ledger, RoutingFields
from subscriptions.catalog import Catalog
from subscriptions.ids import id_floor
from subscriptions.models import Subscriber
from subscriptions.routing import entitlement_refusal

PAGE = 500  # events read, judged and scheduled per round trip


class Backfill:
    def __init__(self, ledger: Ledger, catalog: Catalog, *, page: int = PAGE) -> None:
        self.ledger = ledger
        self.catalog = catalog
        self.page = page
        self.store = BackfillStore(ledger.runner, ledger.keys, retention=ledger.retention)

    async def run(
        self,
        subscriber: Subscriber,
        since_ms: int,
        until_ms: int,
        events: Collection[str] | None = None,
    ) -> int:
        """Schedule the subscriber's missing deliveries for the events received in
        [`since_ms`, `until_ms`) (only of `events`, if given); returns how many."""
        window = f"{since_ms} {until_ms} {','.join(sorted(events)) if events else '*'}"
        start = await self.store.cursor(subscriber.id, window) or Cursor(0, None)
        since, until = id_floor("evt", since_ms), id_floor("evt", until_ms)
        scheduled = 0
        for partition in range(start.partition, self.ledger.keys.partitions):
            after = start.after if partition == start.partition else None
            while ids := await self.store.events(partition, after, since, until, self.page):
                fields = await self.ledger.routing_fields(
                    ids, with_body=subscriber.filter is not None
                )
                due = [
                    (event_id, row["event"] or "")
                    for event_id, row in zip(ids, fields, strict=True)
                    if row is not None and self._entitled(subscriber, row, events)
                ]
                scheduled += await self.store.schedule(partition, subscriber.id, due)
                after = ids[-1]
                await self.store.save_cursor(subscriber.id, window, Cursor(partition, after))
        await self.store.clear_cursor(subscriber.id, window)
        return scheduled

    def _entitled(
        self, subscriber: Subscriber, row: RoutingFields, events: Collection[str] | None
    ) -> bool:
        event = row["event"] or ""
        if events is not None and event not in events:
            return False
        refusal = entitlement_refusal(
            subscriber,
            event,
            row["location_id"],
            row["company_id"],
            self.catalog,
            payload_of(row.get("body")),
        )
        return refusal is None
