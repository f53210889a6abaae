"""Redis (AOF, fsync always) stopped for 5 s during a burst: 429s, never 5xx, nothing lost."""

from __future__ import annotations

import asyncio
import time

import pytest

from .harness import LoadResult, burst, mixed_payloads, register_standard, wait_until

pytestmark = pytest.mark.faults

EVENTS = 3000
RATE = 250  # events per second: a 12 s burst, so the outage lands in the middle of it
OUTAGE_SECONDS = 5.0


async def test_redis_stopped_during_burst_gives_429s_and_loses_nothing_acknowledged(
    cluster, private_redis, report
) -> None:
    started = time.monotonic()
    c = cluster(redis=private_redis.url)
    receiver = await c.receiver()
    serve = await c.serve()
    ledger = await register_standard(c, receiver)
    load = LoadResult()
    sending = asyncio.create_task(
        burst(
            f"{c.base_url}/webhooks",
            mixed_payloads(EVENTS),
            load,
            concurrency=64,
            rate=RATE,
            retry_429_after=1.0,
        )
    )
    assert await wait_until(lambda: len(load.accepted) >= EVENTS // 4, 60)
    private_redis.stop()
    accepted_before_stop = len(load.accepted)
    await asyncio.sleep(OUTAGE_SECONDS)
    await private_redis.start()
    await sending

    assert await ledger.wait_complete(load, timeout=180), sorted(ledger.missing(load))[:10]
    await asyncio.sleep(1.0)
    tally = ledger.tally(load)
    report(
        tally.line(
            "Redis stopped 5 s mid-burst (AOF fsync always)",
            time.monotonic() - started,
            f"accepted-before-stop={accepted_before_stop} 429s={load.statuses[429]} "
            f"5xx={load.server_errors} conn-errors={load.connection_errors}",
        )
    )
    assert serve.alive
    assert load.server_errors == 0, load.statuses
    assert load.statuses[429] > 0, "the outage never showed as 429: did it overlap the burst?"
    assert load.given_up == 0 and len(load.accepted) == EVENTS
    assert tally.lost == 0
    assert tally.trespass == 0
