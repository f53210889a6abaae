"""A revoked grant and a paused subscriber stop their pending retries: nothing arrives after."""

from __future__ import annotations

import asyncio
import time

import pytest

from .harness import (
    CONTACT_CREATE,
    OUTSIDER,
    DeliveryLedger,
    LoadResult,
    burst,
    count_deliveries,
    mixed_payloads,
    read_records,
    wait_until,
)

pytestmark = pytest.mark.faults

EVENTS = 500  # x 2 failing subscribers = 1,000 pending retries
DELIVERY_TIMEOUT = 2.0
GRACE = DELIVERY_TIMEOUT + 0.5  # attempts already in flight at the change may still land


async def test_revoked_grant_and_paused_subscriber_receive_nothing_more(cluster, report) -> None:
    started = time.monotonic()
    c = cluster(
        ROUTER_RETRY_SCHEDULE="5,5,5,5,5,5",
        ROUTER_DELIVERY_TIMEOUT=str(DELIVERY_TIMEOUT),
        # Keep every retry reaching the receiver: an open breaker would hide them.
        ROUTER_BREAKER_THRESHOLD="1000000",
    )
    rx = await c.receiver()
    await c.serve()
    await c.subscribe("healthy", rx.url("healthy"), ["contacts.readonly"])
    revoked = await c.subscribe(
        "revoked", rx.url("revoked", "500"), ["contacts.readonly", "locations.readonly"]
    )
    paused = await c.subscribe("paused", rx.url("paused", "500"), ["contacts.readonly"])
    await c.subscribe(OUTSIDER, rx.url(OUTSIDER), ["contacts.write"])
    ledger = DeliveryLedger([rx], {CONTACT_CREATE: {"healthy"}}, {OUTSIDER})

    load = await burst(
        f"{c.base_url}/webhooks", mixed_payloads(EVENTS, (CONTACT_CREATE,)), LoadResult()
    )

    def failing_pairs() -> int:
        return len({(r["event_id"], r["marker"]) for r in read_records([rx]) if r["status"] == 500})

    assert await wait_until(lambda: failing_pairs() >= 2 * EVENTS, 60), failing_pairs()
    pending = await count_deliveries(c, revoked, "failed") + await count_deliveries(
        c, paused, "failed"
    )
    await c.api("POST", f"/v1/subscribers/{revoked}/grants", {"remove": ["contacts.readonly"]})
    revoked_at = time.time()
    await c.api("PATCH", f"/v1/subscribers/{paused}", {"status": "paused"})
    paused_at = time.time()

    async def all_skipped() -> bool:
        return (
            await count_deliveries(c, revoked, "skipped") == EVENTS
            and await count_deliveries(c, paused, "skipped") == EVENTS
        )

    deadline = time.monotonic() + 60
    while not await all_skipped():
        if time.monotonic() > deadline:
            states = {
                (name, status): await count_deliveries(c, sub, status)
                for name, sub in (("revoked", revoked), ("paused", paused))
                for status in ("pending", "failed", "skipped", "dead", "succeeded")
            }
            raise AssertionError(f"pending retries were not all skipped: {states}")
        await asyncio.sleep(1.0)
    await asyncio.sleep(GRACE)
    assert await ledger.wait_complete(load, timeout=30)

    records = read_records([rx])
    late = [
        r
        for r in records
        if (r["marker"] == "revoked" and r["t"] > revoked_at + GRACE)
        or (r["marker"] == "paused" and r["t"] > paused_at + GRACE)
    ]
    after_change = sum(
        1
        for r in records
        if (r["marker"] == "revoked" and r["t"] > revoked_at)
        or (r["marker"] == "paused" and r["t"] > paused_at)
    )
    tally = ledger.tally(load)
    report(
        tally.line(
            "grant revoked + subscriber paused with 1,000 retries pending",
            time.monotonic() - started,
            f"pending-at-change={pending} arrivals-in-grace={after_change - len(late)} "
            f"arrivals-after-grace={len(late)}",
        )
    )
    assert pending >= 2 * EVENTS * 0.9, "the retries were not pending when the grant changed"
    assert late == [], late[:5]
    assert tally.lost == 0 and tally.trespass == 0
