"""C: end-to-end latency at a fixed rate, fan-out 1.

One subscriber on a receiver; `serve` ingests and delivers. The load generator offers a fixed
rate of events and records, for every accepted event, the time it sent it (time.time() just
before the POST); the receiver records when each event's delivery arrived. Latency is the
difference, so it counts ingest, dispatch and delivery.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from bench.harness import Bench, strip
from bench.report import Row, fmt
from bench.stats import percentile


@dataclass(frozen=True)
class Size:
    rate: float = 500
    seconds: float = 20


FULL, QUICK = Size(), Size(seconds=5)
TARGET_MS = 50


async def run(bench: Bench, size: Size) -> None:
    with contextlib.ExitStack() as outer:
        port = await bench.receiver(outer)
        async with bench.keyspace("c") as (prefix, stack):
            _, api = await bench.serve(stack, "serve-c", prefix, "serve")
            await bench.register(api, [f"http://127.0.0.1:{port}/c/0"])
            load = await bench.loadgen(
                f"{api}/webhooks",
                connections=32,
                duration=size.seconds,
                rate=size.rate,
                record=True,
            )
            stats = await bench.wait_arrivals(port, load["accepted"])
            arrivals = await bench.receiver_arrivals(port)
    sends: dict[str, float] = load["sends"]
    first_arrival: dict[str, float] = {}
    for t, event_id in zip(arrivals["t"], arrivals["event_id"], strict=True):
        first_arrival.setdefault(event_id, t)
    latency = {e: (first_arrival[e] - t) * 1000 for e, t in sends.items() if e in first_arrival}
    ordered = sorted(latency.values())
    pct = {p: percentile(ordered, p) for p in (50, 95, 99, 100)}
    start = load["first_send"]
    by_second: dict[int, list[float]] = {}
    for event_id, ms in latency.items():
        by_second.setdefault(int(sends[event_id] - start), []).append(ms)
    per_second = {
        sec: {"n": len(v), "p50": percentile(sorted(v), 50), "p99": percentile(sorted(v), 99)}
        for sec, v in sorted(by_second.items())
    }
    warm = sorted(ms for e, ms in latency.items() if sends[e] - start >= 1.0)
    bench.report.details["C"] = {
        "loadgen": strip(load),
        "receiver": stats,
        "matched": len(ordered),
        "latency_ms": pct,
        "achieved_rate": load["accepted_per_s"],
        "per_second": per_second,
    }
    note = (
        f"{len(ordered)}/{load['accepted']} delivered; max {fmt(pct[100])} ms; "
        f"p99 without the first second {fmt(percentile(warm, 99))} ms"
    )
    bench.add(Row("C", f"e2e p50 @ {size.rate:g} ev/s, fan-out 1", pct[50], "ms"))
    bench.add(Row("C", "e2e p95", pct[95], "ms"))
    bench.add(
        Row(
            "C",
            "e2e p99",
            pct[99],
            "ms",
            target=f"≤ {TARGET_MS} ms",
            passed=pct[99] is not None and pct[99] <= TARGET_MS,
            note=note,
        )
    )
