"""The dispatcher's round trips: what a batch waits for before its deliveries are created.

Under `appendfsync always` every round trip waits for Redis's fsync, and each one a batch
waits for in turn delays the next read of the events stream: the version check of the
entitlement cache and the read of the events' routing fields are independent, so they are
in flight together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from router.core.metrics import Metrics
from router.pipeline.dispatch import Dispatcher
from subscriptions.catalog import load_catalog
from subscriptions.routing import Audience


class Overlap:
    """Two calls that each finish only once the other has started: awaited one after the
    other, the first never finishes."""

    def __init__(self) -> None:
        self.started = {"version": asyncio.Event(), "routing": asyncio.Event()}

    async def meet(self, mine: str, other: str) -> None:
        self.started[mine].set()
        await self.started[other].wait()


class Store:
    def __init__(self, overlap: Overlap) -> None:
        self.catalog = load_catalog()
        self.overlap = overlap
        self.audiences: list[tuple[str, str | None, str | None]] = []

    async def version(self) -> bytes:
        await self.overlap.meet("version", "routing")
        return b"1"

    async def audience(self, event: str, location: str | None, company: str | None) -> Audience:
        self.audiences.append((event, location, company))
        return Audience([])


class Ledger:
    def __init__(self, overlap: Overlap) -> None:
        self.overlap = overlap
        self.created: list[Any] = []

    async def routing_fields(self, event_ids: Sequence[str], *, with_body: bool) -> list[Any]:
        await self.overlap.meet("routing", "version")
        return [
            {"event": "ContactCreate", "location_id": "loc-1", "company_id": None}
            for _ in event_ids
        ]

    async def enter_orders(self, orders: Sequence[Any]) -> None:
        assert not orders

    async def create_deliveries(self, plans: Sequence[Any]) -> int:
        self.created.extend(plans)
        return 0


async def test_the_version_check_and_the_routing_read_are_in_flight_together() -> None:
    overlap = Overlap()
    store, ledger = Store(overlap), Ledger(overlap)
    dispatcher = Dispatcher(ledger, store, Metrics(), "d-1", reclaim_after=60)  # type: ignore[arg-type]
    batch = [("1-0", "evt-1"), ("2-0", "evt-2")]
    await asyncio.wait_for(dispatcher.dispatch(batch), timeout=2)
    # The batch was dispatched in full: every event planned, its audience asked once.
    assert [plan[:3] for plan in ledger.created] == [
        ("1-0", "evt-1", "ContactCreate"),
        ("2-0", "evt-2", "ContactCreate"),
    ]
    assert store.audiences == [("ContactCreate", "loc-1", None)]
