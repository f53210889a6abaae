"""A router process killed with SIGKILL mid-burst loses nothing it acknowledged."""

from __future__ import annotations

import asyncio
import time

import pytest

from .harness import LoadResult, burst, mixed_payloads, register_standard, wait_until

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("events", [2000, 5000])
async def test_serve_killed_mid_burst_then_restarted_delivers_every_accepted_event(
    cluster, report, events: int
) -> None:
    started = time.monotonic()
    c = cluster()
    receiver = await c.receiver()
    serve = await c.serve()
    ledger = await register_standard(c, receiver)
    load = LoadResult()
    sending = asyncio.create_task(
        burst(f"{c.base_url}/webhooks", mixed_payloads(events), load, concurrency=32)
    )
    assert await wait_until(lambda: len(load.accepted) >= events // 3, 120)
    serve.kill()
    accepted_at_kill = len(load.accepted)
    await asyncio.sleep(1.0)
    await c.serve()
    await sending

    assert await ledger.wait_complete(load, timeout=180), sorted(ledger.missing(load))[:10]
    await asyncio.sleep(1.0)  # let stragglers to the outsider show up, if any were sent
    tally = ledger.tally(load)
    report(
        tally.line(
            f"serve SIGKILL mid-burst ({events} events)",
            time.monotonic() - started,
            f"accepted-before-kill={accepted_at_kill} conn-errors={load.connection_errors}",
        )
    )
    assert load.given_up == 0 and load.server_errors == 0, load.statuses
    assert tally.lost == 0
    assert tally.trespass == 0
    assert len(load.accepted) == events  # every event eventually acknowledged (after retries)
