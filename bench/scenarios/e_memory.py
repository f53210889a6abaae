"""E: memory stays bounded: Redis and the router after 10x more events.

One subscriber; `serve` with a short retention and dedupe window, so that events and delivery
records expire during the run. Events flow at a fixed rate; memory is sampled as the first
`counts[0]` events are accepted and again at `counts[1]`, while the stream goes on (what the
router holds at that point of a steady flow, backlog included):
- the run's own keys: SCAN of the prefix and MEMORY USAGE of each key;
- the Redis server's `used_memory`, minus its value before the run;
- the router process's RSS.
One round only: the run alone takes 400 s at 500 events/s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bench import fixtures
from bench.harness import Bench
from bench.procs import Proc
from bench.report import Row
from bench.stats import ratio


@dataclass(frozen=True)
class Size:
    counts: tuple[int, int] = (20_000, 200_000)
    rate: float = 500
    retention: int = 10


FULL, QUICK = Size(), Size(counts=(2000, 10_000), retention=5)
BOUND = 1.5


async def run(bench: Bench, size: Size) -> None:
    first, total = size.counts
    samples: list[dict[str, Any]] = []
    async with bench.receiving() as port, bench.keyspace("e") as (prefix, stack):
        before = await bench.used_memory()
        proc, api = await bench.serve(
            stack,
            "serve-e",
            prefix,
            "serve",
            ROUTER_RETENTION=size.retention,
            ROUTER_DEDUPE_WINDOW=size.retention,
        )
        await bench.register(api, [f"http://127.0.0.1:{port}/e/0"])
        accepted = 0
        started = time.monotonic()
        for count in (first, total - first):
            load = await bench.loadgen(
                f"{api}/webhooks", connections=32, count=count, rate=size.rate
            )
            accepted += load["accepted"]
            sample = await _memory(bench, prefix, proc)
            sample |= {
                "events": accepted,
                "delivered": (await bench.receiver_stats(port))["count"],
                "seconds": time.monotonic() - started,
                "achieved_rate": load["accepted_per_s"],
            }
            samples.append(sample)
        final = await bench.wait_arrivals(port, accepted, drained=prefix)
    bench.report.details["E"] = {
        "delivered_in_the_end": final["count"],
        "used_memory_before": before,
        "samples": samples,
        "retention": size.retention,
        "rate": size.rate,
    }
    a, b = samples
    label = f"{first // 1000}k→{total // 1000}k"

    def row(measurement: str, key: str, bound: float | None, note: str = "") -> None:
        base = -before if key == "used_memory" else 0
        growth = ratio(b[key] + base, a[key] + base)
        bench.add(
            Row(
                "E",
                measurement,
                (b[key] + base) / 1e6,
                "MB",
                (a[key] + base) / 1e6,
                growth,
                f"≤ {bound}" if bound else "report",
                (growth is not None and growth <= bound) if bound else None,
                note,
            )
        )

    row(
        f"Redis memory of the run's keys, {label} events",
        "prefix_bytes",
        BOUND,
        f"keys {a['prefix_keys']}→{b['prefix_keys']}; retention {size.retention}s; "
        f"{final['count']}/{accepted} delivered in the end",
    )
    row(
        f"Redis used_memory growth over the run, {label}",
        "used_memory",
        None,
        "server-wide INFO used_memory minus its value before the run"
        + (
            " (the benchmark's own server: this run's keys and Redis's buffers)"
            if bench.own_redis
            else ": the server is shared, so other clients' keys count too"
        ),
    )
    row(f"router RSS, {label} events", "router_rss", BOUND)


async def _memory(bench: Bench, prefix: str, proc: Proc) -> dict[str, Any]:
    total = count = 0
    batch: list[bytes] = []

    async def measure() -> int:
        async with bench.redis.pipeline(transaction=False) as pipe:
            for key in batch:
                pipe.memory_usage(key)
            return sum(n or 0 for n in await pipe.execute())

    async for key in bench.redis.scan_iter(match=fixtures.key_pattern(prefix), count=1000):
        batch.append(key)
        count += 1
        if len(batch) >= 1000:
            total += await measure()
            batch = []
    if batch:
        total += await measure()
    return {
        "prefix_bytes": total,
        "prefix_keys": count,
        "used_memory": await bench.used_memory(),
        "router_rss": proc.rss_bytes() or 0,
    }
