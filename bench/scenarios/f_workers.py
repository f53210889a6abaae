"""F: delivery throughput with one and with two `webhook-router worker` processes.

As B's router round (fan-out 10, events accepted first by `serve --no-workers`), but the
events are dispatched and delivered by `worker` processes. On two cores shared with the
receiver and Redis, a second process can add little; the row reports what it adds. Each
round runs both (in an order alternating between rounds); the ratio is taken within it.
"""

from __future__ import annotations

import os
from typing import Any

from bench.harness import Bench
from bench.report import rounds_row
from bench.scenarios import b_fanout
from bench.scenarios.b_fanout import FAN_OUT, Size
from bench.stats import alternating, arrival_rate, ratio

FULL, QUICK = b_fanout.FULL, b_fanout.QUICK  # B's events


async def run(bench: Bench, size: Size) -> None:
    rounds: list[dict[int, Any]] = []
    async with bench.receiving() as port:
        urls = [f"http://127.0.0.1:{port}/f/{i}" for i in range(FAN_OUT)]
        for number, counts in alternating(bench.repeats, (1, 2)):
            result = {}
            for workers in counts:
                result[workers] = await bench.deliver_preloaded(
                    f"f{number}-{workers}", port, urls, size.events, ["worker"] * workers
                )
                result[workers]["rate"] = arrival_rate(result[workers]["receiver"])
            rounds.append(result)
    bench.report.details["F"] = rounds
    one = [r[1]["rate"] for r in rounds]
    two = [r[2]["rate"] for r in rounds]
    bench.add(rounds_row("F", f"deliveries/s, 1 worker process, fan-out {FAN_OUT}", "dlv/s", one))
    bench.add(
        rounds_row(
            "F",
            "deliveries/s, 2 worker processes",
            "dlv/s",
            two,
            baselines=one,
            ratios=[ratio(b, a) for a, b in zip(one, two, strict=True)],
            target="report",
            note=f"{os.cpu_count()} cores shared with the receiver and Redis",
        )
    )
