"""One of two worker processes killed with SIGKILL mid-burst: the other finishes its work."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from .harness import LoadResult, burst, mixed_payloads, read_records, register_standard

pytestmark = pytest.mark.faults

EVENTS = 2000


async def test_worker_killed_mid_burst_leaves_its_deliveries_to_the_other(cluster, report) -> None:
    started = time.monotonic()
    c = cluster()
    receiver = await c.receiver()
    await c.serve(workers=False)
    doomed = await c.worker()
    survivor = await c.worker()
    ledger = await register_standard(c, receiver)
    load = LoadResult()
    sending = asyncio.create_task(
        burst(f"{c.base_url}/webhooks", mixed_payloads(EVENTS), load, concurrency=32)
    )
    while len(read_records([receiver])) < EVENTS // 2:
        await asyncio.sleep(0.05)
    doomed.kill()
    delivered_at_kill = len(read_records([receiver]))
    await sending

    assert await ledger.wait_complete(load, timeout=180), sorted(ledger.missing(load))[:10]
    await asyncio.sleep(1.0)
    tally = ledger.tally(load)
    reclaimed = sum(
        int(n) for n in re.findall(r"reclaimed (\d+) (?:deliveries|events)", survivor.log_text())
    )
    report(
        tally.line(
            "worker SIGKILL mid-burst (1 of 2)",
            time.monotonic() - started,
            f"delivered-before-kill={delivered_at_kill} reclaimed-by-survivor={reclaimed}",
        )
    )
    assert load.server_errors == 0 and len(load.accepted) == EVENTS, load.statuses
    assert tally.lost == 0
    assert tally.trespass == 0
