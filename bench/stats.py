"""The arithmetic of the results: paired rounds, medians, spreads, percentiles, rates.

A measurement is repeated in rounds. Where it has a baseline, each round runs the baseline
and the router back to back, in an order that alternates between rounds, and takes the ratio
within the round: a machine that speeds up or slows down during the scenario then favours
neither side. The table gives the median over the rounds and their spread (min-max).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def alternating(repeats: int, sides: Sequence[T]) -> Iterator[tuple[int, tuple[T, ...]]]:
    """Round numbers with the order of their sides: as given in even rounds, reversed in odd
    ones."""
    for number in range(repeats):
        yield number, tuple(sides) if number % 2 == 0 else tuple(reversed(sides))


def present(values: Iterable[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def median(values: Iterable[float | None]) -> float | None:
    values = present(values)
    return statistics.median(values) if values else None


def spread(values: Iterable[float | None]) -> tuple[float, float] | None:
    """(min, max) of the values that are there, or None without any."""
    values = present(values)
    return (min(values), max(values)) if values else None


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return value / base


def percentile(ordered: list[float], p: float) -> float | None:
    """The `p`th percentile (nearest rank) of an already sorted list."""
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
    return ordered[index]


def per_unit(before: float | None, after: float | None, units: int) -> float | None:
    """CPU microseconds per unit of work between two readings (None if either is missing)."""
    if before is None or after is None or units <= 0:
        return None
    return round((after - before) * 1e6 / units, 1)


def arrival_rate(stats: dict[str, Any]) -> float | None:
    """Arrivals per second at a receiver, from its first arrival to its last."""
    if not stats.get("first") or stats["count"] < 2 or stats["last"] <= stats["first"]:
        return None
    return (stats["count"] - 1) / (stats["last"] - stats["first"])


def latencies(
    starts: dict[str, float], arrivals: dict[str, list[Any]], paths: Iterable[str] | None = None
) -> dict[tuple[str, str], float]:
    """Milliseconds from each event's start (`starts`: event id -> time.time()) to the first
    arrival of its delivery at each path (of `paths`, or all), keyed by (event id, path)."""
    keep = None if paths is None else set(paths)
    first: dict[tuple[str, str], float] = {}
    for t, event_id, path in zip(
        arrivals["t"], arrivals["event_id"], arrivals["path"], strict=True
    ):
        if keep is None or path in keep:
            first.setdefault((event_id, path), t)
    return {k: (t - starts[k[0]]) * 1e3 for k, t in first.items() if k[0] in starts}


def distribution(values: Iterable[float]) -> dict[str, float | int | None]:
    """Count, p50, p95, p99 and max of `values`."""
    ordered = sorted(values)
    return (
        {"n": len(ordered)}
        | {name: percentile(ordered, p) for name, p in (("p50", 50), ("p95", 95), ("p99", 99))}
        | {"max": ordered[-1] if ordered else None}
    )
