"""C: end-to-end latency at a fixed offered rate, fan-out 1.

One subscriber on a receiver; `serve` ingests, dispatches and delivers, on the benchmark's
Redis. The load generator, on the same machine, offers a fixed rate of events (issue 16's
2,000 events/s, and 500 events/s) with up to 256 requests in flight, and records for every
accepted event when it sent the POST and when it read the 202; the receiver records when the
delivery arrived. The target's latency is accepted -> delivered (202 read -> arrival); send ->
delivered, which adds ingest, is in the note. Each round runs every rate on a fresh prefix
and `serve` process; the rows give the median over the rounds and the spread. The note also
counts the AOF rewrites Redis ran during each round: they, not the router, make the tail at
2,000 events/s on a 2-core machine (bench/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.harness import Bench, strip
from bench.report import fmt, join, rounds_row, span
from bench.stats import alternating, distribution, latencies, median, percentile


@dataclass(frozen=True)
class Size:
    rates: tuple[float, ...] = (2000, 500)
    seconds: float = 15


FULL, QUICK = Size(), Size(seconds=4)
TARGET_MS = 50  # p99 at 2,000 events/s, issue 16
TARGET_RATE = 2000


async def run(bench: Bench, size: Size) -> None:
    results: dict[float, list[dict[str, Any]]] = {rate: [] for rate in size.rates}
    async with bench.receiving() as port:
        url = f"http://127.0.0.1:{port}/c/0"
        for number, rates in alternating(bench.repeats, size.rates):
            for rate in rates:
                name = f"c{number}-{rate:g}"
                rewrites = await bench.aof_rewrites()
                load, stats, arrivals = await bench.fixed_rate(
                    name, port, [url], rate, size.seconds, healthy=1
                )
                measured = _measure(load, stats, arrivals)
                measured["aof_rewrites"] = await bench.aof_rewrites() - rewrites
                results[rate].append(measured)
    bench.report.details["C"] = {f"{rate:g}": rounds for rate, rounds in results.items()}
    for rate, rounds in results.items():
        judged = rate == TARGET_RATE
        accepted = [r["accepted_ms"] for r in rounds]
        label = f"@ {rate:,.0f} ev/s, fan-out 1"
        bench.add(
            rounds_row("C", f"accepted→delivered p50 {label}", "ms", [a["p50"] for a in accepted])
        )
        bench.add(
            rounds_row(
                "C",
                f"accepted→delivered p99 {label}",
                "ms",
                [a["p99"] for a in accepted],
                target=f"≤ {TARGET_MS} ms" if judged else "",
                passes=(lambda x: x <= TARGET_MS) if judged else None,
                note=_note(rounds),
            )
        )


def _measure(
    load: dict[str, Any], stats: dict[str, Any], arrivals: dict[str, Any]
) -> dict[str, Any]:
    accepted = {e: ms for (e, _), ms in latencies(load["accepts"], arrivals).items()}
    sent = {e: ms for (e, _), ms in latencies(load["sends"], arrivals).items()}
    start = load["first_send"]
    by_second: dict[int, list[float]] = {}
    for event_id, ms in accepted.items():
        by_second.setdefault(int(load["sends"][event_id] - start), []).append(ms)
    return {
        "loadgen": strip(load),
        "receiver": stats,
        "accepted_ms": distribution(accepted.values()),
        "sent_ms": distribution(sent.values()),
        "per_second_accepted_ms": {
            sec: {"n": len(v), "p99": percentile(sorted(v), 99)}
            for sec, v in sorted(by_second.items())
        },
    }


def _note(rounds: list[dict[str, Any]]) -> str:
    def ranged(values: list[Any], unit: str = "ms") -> str:
        return f"{fmt(median(values), unit)} ({span(values)})"

    delivered = sum(r["accepted_ms"]["n"] for r in rounds)
    offered = sum(r["loadgen"]["accepted"] for r in rounds)
    behind = max((r["loadgen"]["behind_ms"] or {}).get("max", 0.0) for r in rounds)
    return join(
        "p99 per round " + ", ".join(fmt(r["accepted_ms"]["p99"]) for r in rounds) + " ms",
        "sent→delivered p99 " + ranged([r["sent_ms"]["p99"] for r in rounds]),
        "max " + ranged([r["accepted_ms"]["max"] for r in rounds]),
        "achieved " + ranged([r["loadgen"]["accepted_per_s"] for r in rounds], "ev/s"),
        f"{delivered}/{offered} delivered",
        f"sends at most {fmt(behind)} ms behind schedule",
        "Redis AOF rewrites per round " + ", ".join(str(r["aof_rewrites"]) for r in rounds),
    )
