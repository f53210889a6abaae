"""B: delivery throughput at fan-out 10, the router's deliveries/s against a bare client's.

Ten subscribers, all entitled to the events, point at ten paths of one receiver process. The
router's round accepts the events first (`serve --no-workers`), then starts `serve`, which
dispatches and delivers them; the rate is the receiver's, from its first arrival to its last.
The baseline (`bench/baseline_client.py`) is a bare aiohttp client on uvloop posting the same
bodies (built before its clock starts) to the same ten paths, `CONCURRENCY` (100) in flight,
as issue 16 measured it; the router runs with its defaults. Each round measures both back to back
(the order alternating between rounds); the ratio is taken within the round. The router's
Redis is the benchmark's own, fsyncing every write (see bench/README.md for what that and
the rest of the setup change against earlier runs of B).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.harness import Bench
from bench.procs import python_module
from bench.report import join, paired_row
from bench.stats import alternating, arrival_rate, ratio


@dataclass(frozen=True)
class Size:
    events: int = 3000


FULL, QUICK = Size(), Size(events=300)
FAN_OUT = 10
# The baseline's posts in flight, as in issue 16. The router's defaults allow up to 256
# (ROUTER_SUBSCRIBER_CONCURRENCY 32 for each of 10 subscribers, under ROUTER_WORKER_CONCURRENCY
# 256); with 10 per subscriber, 100 in all, its rate was the same (bench/README.md).
CONCURRENCY = 100
TARGET = 0.65  # issue 16


async def run(bench: Bench, size: Size) -> None:
    rounds: list[dict[str, Any]] = []
    async with bench.receiving() as port:
        urls = [f"http://127.0.0.1:{port}/b/{i}" for i in range(FAN_OUT)]
        for number, sides in alternating(bench.repeats, ("baseline", "router")):
            result: dict[str, Any] = {}
            for side in sides:
                if side == "baseline":
                    result.update(await _baseline_round(bench, port, urls, size.events))
                else:
                    router = await bench.deliver_preloaded(
                        f"b{number}",
                        port,
                        urls,
                        size.events,
                        ["serve"],
                        profile_as="B" if number == 0 else None,
                    )
                    result |= {
                        "router": router,
                        "router_rate": arrival_rate(router["receiver"]),
                        "router_cpu": router["cpu"],
                        "redis_cpu": router["redis_cpu"],
                    }
            result["ratio"] = ratio(result["router_rate"], result["baseline_rate"])
            rounds.append(result)
    bench.report.details["B"] = {"concurrency": CONCURRENCY, "rounds": rounds}
    notes = dict.fromkeys(_arrived(**r["router"]) for r in rounds)
    bench.add(
        paired_row(
            "B",
            f"deliveries/s, fan-out {FAN_OUT}, {size.events} events",
            "dlv/s",
            f"≥ {TARGET:.2f}",
            TARGET,
            rounds,
            cpu_unit="delivery",
            extra=join(*notes),
        )
    )


async def _baseline_round(bench: Bench, port: int, urls: list[str], events: int) -> dict[str, Any]:
    await bench.receiver_reset(port)
    client = await bench.run_process(
        "baseline-client",
        [
            *python_module("bench.baseline_client"),
            "--urls",
            ",".join(urls),
            "--events",
            str(events),
            "--concurrency",
            str(CONCURRENCY),
        ],
        timeout=600,
    )
    receiver = await bench.receiver_stats(port)
    return {
        "baseline_client": client,
        "baseline_receiver": receiver,
        "baseline_rate": arrival_rate(receiver),
        "baseline_cpu": client["cpu_s"] * 1e6 / client["posts"] if client["posts"] else None,
    }


def _arrived(receiver: dict[str, Any], expected: int, **_: Any) -> str:
    stats = receiver
    note = f"{stats['count']}/{expected} arrived"
    if stats["unique_webhook_ids"] != stats["count"]:
        note += f", {stats['count'] - stats['unique_webhook_ids']} duplicates"
    return note + (" (stalled)" if stats.get("stalled") else "")
