"""D: dispatch cost against the number of registered subscribers, and of payload filters.

Ten subscribers are entitled to the events; the others (up to 10,000 registered in all)
hold an unrelated scope, so the events are routed to the same ten whatever the count. In the
filtered case, all 1,000 subscribers hold the events' scope and each carries a payload
filter (three shapes: an equality with a `$contains`, an `$in` with an equality, an `$or` of
two equalities, on four paths); the ten pass theirs and the others fail, so the deliveries
are the same ten per event and the difference is the filters' cost: reading and parsing each
event's body once, and testing the filters. It is compared with 10 entitled of 1,000 without
filters, within the round. The
load generator posts events at max rate into `serve`; the rate is events accepted per second
until every delivery exists (the deliveries index holds events x 10 entries). Delivery is
throttled to one attempt at a time (`ROUTER_WORKER_CONCURRENCY=1`) so that it does not compete
with dispatch. Each round measures every count (in an order alternating between rounds) on a
fresh prefix and `serve` process; the ratio compares each count with the smallest, within
the round.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from bench import fixtures
from bench.harness import Bench, strip
from bench.report import rounds_row
from bench.stats import alternating, ratio


@dataclass(frozen=True)
class Size:
    events: int = 5000
    registered: tuple[int, ...] = (10, 1000, 10_000)


FULL, QUICK = Size(), Size(events=1000, registered=(10, 100, 1000))
FAN_OUT = 10
TARGET = 0.90
MEASUREMENT = "accepted+dispatched ev/s, 10 entitled of"
FILTERED = 1000  # subscribers holding the scope, each with a payload filter
FILTERED_SIDE = "filtered"
# The bench events' values (contact_create.json): the ten's filter holds, the others' fail.
PASSING_FILTER = {"assignedTo": "bnchUser000000000001", "tags": {"$contains": "bench lead"}}


def failing_filter(i: int) -> dict[str, Any]:
    """Subscriber i's filter, one of three shapes, which the bench events fail."""
    shape = i % 3
    if shape == 0:
        return {"assignedTo": f"bnchUser{i:012d}", "tags": {"$contains": "bench lead"}}
    if shape == 1:
        return {"source": {"$in": [f"form {i}", f"import {i}"]}, "dnd": False}
    return {"$or": [{"companyName": f"Company {i}"}, {"customFields.0.value": f"Corp {i}"}]}


async def run(bench: Bench, size: Size) -> None:
    rounds: list[dict[int | str, Any]] = []
    sides: list[int | str] = [*size.registered, FILTERED_SIDE]
    async with bench.receiving() as port:
        for number, order in alternating(bench.repeats, sides):
            rounds.append({s: await _measure(bench, number, size.events, s, port) for s in order})
    bench.report.details["D"] = rounds
    low, high = size.registered[0], size.registered[-1]
    for registered in size.registered:
        rates = [r[registered]["rate"] for r in rounds]
        if registered == low:
            bench.add(rounds_row("D", f"{MEASUREMENT} {low:,}", "ev/s", rates))
            continue
        judged = registered == high
        bench.add(
            rounds_row(
                "D",
                f"{MEASUREMENT} {registered:,}",
                "ev/s",
                rates,
                baselines=[r[low]["rate"] for r in rounds],
                ratios=[ratio(r[registered]["rate"], r[low]["rate"]) for r in rounds],
                target=f"≥ {TARGET:.2f}" if judged else "",
                passes=(lambda x: x >= TARGET) if judged else None,
            )
        )
    filtered = [r[FILTERED_SIDE]["rate"] for r in rounds]
    bench.add(
        rounds_row(
            "D",
            f"{MEASUREMENT} {FILTERED:,} holding the scope, each with a payload filter",
            "ev/s",
            filtered,
            baselines=[r[FILTERED]["rate"] for r in rounds],
            ratios=[ratio(r[FILTERED_SIDE]["rate"], r[FILTERED]["rate"]) for r in rounds],
            target=f"≥ {TARGET:.2f} (vs {FILTERED:,} without)",
            passes=lambda x: x >= TARGET,
        )
    )


async def _measure(
    bench: Bench, number: int, events: int, side: int | str, port: int
) -> dict[str, Any]:
    """One side of a round: `side` subscribers registered (10 entitled), or FILTERED_SIDE."""
    async with bench.keyspace(f"d{number}-{side}") as (prefix, stack):
        started = time.monotonic()
        other = f"http://127.0.0.1:{port}/other"
        if side == FILTERED_SIDE:
            await bench.register_filtered_out(prefix, FILTERED - FAN_OUT, other, failing_filter)
        else:
            await bench.register_unrelated(prefix, int(side) - FAN_OUT, other)
        # Delivery throttled to one at a time: D measures accept + dispatch.
        _, api = await bench.serve(
            stack, f"serve-d{number}-{side}", prefix, "serve", ROUTER_WORKER_CONCURRENCY=1
        )
        await bench.register(
            api,
            [f"http://127.0.0.1:{port}/d/{i}" for i in range(FAN_OUT)],
            payload_filter=PASSING_FILTER if side == FILTERED_SIDE else None,
        )
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
