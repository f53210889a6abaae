"""A: ingest throughput, the router's accepted events/s against a bare aiohttp app's.

The baseline (`bench/baseline_ingest.py`) validates the same body with pydantic and answers
202, on uvloop, without Redis. The router is `webhook-router serve --no-workers`, so nothing
but ingest runs in it, on the benchmark's Redis (fsync on every write by default). The load
is `wrk` with 64 connections (bench/wrk.py), or the Python load generator where wrk is not
installed (the row's note says which), posting 1 KB ContactCreate bodies as fast as they are
answered, after a 1 s warm-up. Each round measures both sides back to back (the order
alternating between rounds), each router round on a fresh key prefix and process; the ratio
is taken within the round.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from bench import wrk
from bench.harness import Bench, strip
from bench.report import join, paired_row
from bench.stats import alternating, per_unit, ratio


@dataclass(frozen=True)
class Size:
    seconds: float = 10
    connections: int = 64


FULL, QUICK = Size(), Size(seconds=3)
TARGET = 0.90  # issue 16


async def run(bench: Bench, size: Size) -> None:
    rounds: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        baseline, port = await bench.server(stack, "bench.baseline_ingest", "/healthz")
        health = await bench.request("GET", f"http://127.0.0.1:{port}/healthz")
        url = f"http://127.0.0.1:{port}/webhooks"
        await max_rate(bench, url, size.connections, 1)  # warm-up
        for number, sides in alternating(bench.repeats, ("baseline", "router")):
            result: dict[str, Any] = {}
            for side in sides:
                if side == "baseline":
                    cpu = baseline.cpu_seconds()
                    load = await max_rate(bench, url, size.connections, size.seconds)
                    result["baseline"] = strip(load)
                    result["baseline_rate"] = load["accepted_per_s"]
                    result["baseline_cpu"] = per_unit(cpu, baseline.cpu_seconds(), load["accepted"])
                else:
                    result.update(await _router_round(bench, size, number))
            result["ratio"] = ratio(result["router_rate"], result["baseline_rate"])
            rounds.append(result)
    generator = rounds[0]["router"]["generator"]
    bench.report.details["A"] = {
        "router_command": "serve --no-workers",
        "generator": generator,
        "baseline_loop": health["loop"],
        "rounds": rounds,
    }
    bench.add(
        paired_row(
            "A",
            f"ingest accepted/s, {size.connections} conns, {size.seconds:g} s",
            "ev/s",
            f"≥ {TARGET:.2f}",
            TARGET,
            rounds,
            cpu_unit="event",
            extra=join(
                f"load: {generator}",
                *dict.fromkeys(not_accepted(r["router"]) for r in rounds),
            ),
        )
    )


async def _router_round(bench: Bench, size: Size, number: int) -> dict[str, Any]:
    """One round against the router: its own key prefix and `serve --no-workers`."""
    async with bench.keyspace(f"a{number}") as (prefix, stack):
        proc, api = await bench.serve(stack, f"serve-a{number}", prefix, "serve --no-workers")
        url = f"{api}/webhooks"
        await max_rate(bench, url, size.connections, 1)  # warm-up
        cpu, redis_cpu = proc.cpu_seconds(), await bench.redis_cpu()
        with bench.profiled(proc, "A", first=number == 0):
            load = await max_rate(bench, url, size.connections, size.seconds)
        return {
            "router": strip(load),
            "router_rate": load["accepted_per_s"],
            "router_cpu": per_unit(cpu, proc.cpu_seconds(), load["accepted"]),
            "redis_cpu": per_unit(redis_cpu, await bench.redis_cpu(), load["accepted"]),
            "router_rss": proc.rss_bytes(),
        }


async def max_rate(bench: Bench, url: str, connections: int, seconds: float) -> dict[str, Any]:
    """Max-rate load for `seconds`: wrk when installed, else bench/loadgen.py."""
    if wrk.available():
        load = await wrk.run(url, connections, seconds, bench.logdir)
        return load | {"generator": f"{wrk.version()}, {load['generator']}"}
    load = await bench.loadgen(url, connections=connections, duration=seconds)
    return load | {"generator": "bench/loadgen.py (wrk not installed)"}


def not_accepted(load: dict[str, Any]) -> str:
    other = {k: v for k, v in load["statuses"].items() if k not in ("202", "2xx")}
    parts = [f"{v} x {k}" for k, v in other.items()]
    parts += [f"{v} x {k}" for k, v in load["errors"].items()]
    return ("not accepted: " + ", ".join(parts)) if parts else ""
