"""Retries that fall due while no worker runs are delivered once a worker starts."""

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
    mixed_payloads,
    read_records,
    wait_until,
)

pytestmark = pytest.mark.faults

EVENTS = 300
FIRST_RETRY = 3.0  # seconds after the failed first attempt (+/- 20 % jitter)


async def test_retries_due_while_no_worker_runs_are_delivered_when_one_starts(
    cluster, report
) -> None:
    started = time.monotonic()
    # Every first attempt fails: keep the breaker (not under test here) from deferring them.
    c = cluster(ROUTER_RETRY_SCHEDULE=f"{FIRST_RETRY:g},1,1", ROUTER_BREAKER_THRESHOLD="1000000")
    rx = await c.receiver()
    await c.serve(workers=False)
    first_worker = await c.worker()
    await c.subscribe("flaky", rx.url("flaky", "fail1"), ["contacts.readonly"])
    await c.subscribe("healthy", rx.url("healthy"), ["contacts.readonly"])
    await c.subscribe(OUTSIDER, rx.url(OUTSIDER), ["contacts.write"])
    ledger = DeliveryLedger([rx], {CONTACT_CREATE: {"flaky", "healthy"}}, {OUTSIDER})

    load = await burst(
        f"{c.base_url}/webhooks", mixed_payloads(EVENTS, (CONTACT_CREATE,)), LoadResult()
    )

    def first_failures() -> int:
        return sum(1 for r in read_records([rx]) if r["marker"] == "flaky" and r["status"] == 500)

    assert await wait_until(lambda: first_failures() >= EVENTS, 60), first_failures()
    assert first_worker.terminate() == 0, "SIGTERM must drain and exit 0"
    stopped_at = time.time()
    await asyncio.sleep(FIRST_RETRY * 1.2 + 2.0)  # every retry is now overdue
    idle_arrivals = sum(1 for r in read_records([rx]) if r["t"] > stopped_at)
    delivered_while_stopped = len(ledger.expected(load) - ledger.missing(load))
    await c.worker()

    assert await ledger.wait_complete(load, timeout=60), sorted(ledger.missing(load))[:10]
    await asyncio.sleep(1.0)
    tally = ledger.tally(load)
    retried = [r for r in read_records([rx]) if r["marker"] == "flaky" and r["status"] == 200]
    report(
        tally.line(
            "retries due while no worker runs",
            time.monotonic() - started,
            f"pairs-done-before-restart={delivered_while_stopped} "
            f"arrivals-while-stopped={idle_arrivals}",
        )
    )
    assert idle_arrivals == 0
    assert all(r["attempt"] >= 2 for r in retried)
    assert tally.lost == 0 and tally.trespass == 0
