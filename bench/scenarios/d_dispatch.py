"""D: dispatch cost against the number of registered subscribers.

Ten subscribers are entitled to the events; the others (up to 10,000 registered in all)
hold an unrelated scope, so the events are routed to the same ten whatever the count. The
load generator posts events at max rate into `serve`; the rate is events accepted per second
until every delivery exists (the deliveries index holds events x 10 entries). Delivery is
throttled to one attempt at a time (`ROUTER_WORKER_CONCURRENCY=1`) so that it does not compete
with dispatch. The ratio compares each count with the smallest.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

from bench import fixtures
from bench.harness import Bench, strip
from bench.report import Row
from bench.stats import ratio


@dataclass(frozen=True)
class Size:
    events: int = 5000
    registered: tuple[int, ...] = (10, 1000, 10_000)


FULL, QUICK = Size(), Size(events=1000, registered=(10, 100, 1000))
FAN_OUT = 10
TARGET = 0.90


async def run(bench: Bench, size: Size) -> None:
    rates: dict[int, float] = {}
    details: dict[int, Any] = {}
    with contextlib.ExitStack() as outer:
        port = await bench.receiver(outer)
        for registered in size.registered:
            details[registered] = await _measure(bench, size.events, registered, port)
            rates[registered] = details[registered]["rate"]
    bench.report.details["D"] = details
    low, high = size.registered[0], size.registered[-1]
    for registered in size.registered:
        last = registered == high
        versus = ratio(rates[registered], rates[low]) if registered != low else None
        bench.add(
            Row(
                "D",
                f"accepted+dispatched ev/s, 10 entitled of {registered:,}",
                rates[registered],
                "ev/s",
                rates[low] if registered != low else None,
                versus,
                f"≥ {TARGET:.2f}" if last else "",
                (versus >= TARGET) if last and versus else None,
            )
        )


async def _measure(bench: Bench, events: int, registered: int, port: int) -> dict[str, Any]:
    async with bench.keyspace(f"d{registered}") as (prefix, stack):
        started = time.monotonic()
        await bench.register_unrelated(
            prefix, registered - FAN_OUT, f"http://127.0.0.1:{port}/other"
        )
        register_s = time.monotonic() - started
        # Delivery throttled to one at a time: D measures accept + dispatch.
        _, api = await bench.serve(
            stack, f"serve-d{registered}", prefix, "serve", ROUTER_WORKER_CONCURRENCY=1
        )
        await bench.register(api, [f"http://127.0.0.1:{port}/d/{i}" for i in range(FAN_OUT)])
        register_s = time.monotonic() - started
        load, done = await asyncio.gather(
            bench.loadgen(f"{api}/webhooks", connections=32, count=events),
            _dispatched(bench, prefix, events * FAN_OUT),
        )
    elapsed = done - load["first_send"]
    return {
        "loadgen": strip(load),
        "dispatched_at": done,
        "elapsed": elapsed,
        "rate": load["accepted"] / elapsed,
        "bulk_register_seconds": register_s,
    }


async def _dispatched(bench: Bench, prefix: str, deliveries: int, timeout: float = 300) -> float:
    """time.time() when the deliveries index holds `deliveries` entries."""
    index = fixtures.deliveries_index(prefix)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await bench.redis.zcard(index) >= deliveries:
            return time.time()
        await asyncio.sleep(0.01)
    raise TimeoutError(f"{deliveries} deliveries not created within {timeout:g}s")
