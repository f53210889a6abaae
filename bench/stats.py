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
