"""F: delivery throughput with one and with two `webhook-router worker` processes.

As B's router round (fan-out 10, events accepted first by `serve --no-workers`), but the
events are dispatched and delivered by `worker` processes. On two cores shared with the
receiver and Redis, a second process can add little; the row reports what it adds.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from bench.harness import Bench
from bench.report import Row
from bench.scenarios import b_fanout
from bench.scenarios.b_fanout import FAN_OUT, Size
from bench.stats import arrival_rate, ratio

FULL, QUICK = b_fanout.FULL, b_fanout.QUICK  # B's events


async def run(bench: Bench, size: Size) -> None:
    rates: dict[int, float] = {}
    details: dict[int, Any] = {}
    with contextlib.ExitStack() as stack:
        port = await bench.receiver(stack)
        urls = [f"http://127.0.0.1:{port}/f/{i}" for i in range(FAN_OUT)]
        for workers in (1, 2):
            details[workers] = await bench.deliver_preloaded(
                f"f{workers}", port, urls, size.events, ["worker"] * workers
            )
            rates[workers] = arrival_rate(details[workers]["receiver"]) or 0.0
    bench.report.details["F"] = details
    bench.add(Row("F", f"deliveries/s, 1 worker process, fan-out {FAN_OUT}", rates[1], "dlv/s"))
    bench.add(
        Row(
            "F",
            "deliveries/s, 2 worker processes",
            rates[2],
            "dlv/s",
            rates[1],
            ratio(rates[2], rates[1]),
            "report",
            None,
            f"{os.cpu_count()} cores shared with receiver",
        )
    )
