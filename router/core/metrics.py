"""The service's Prometheus instruments: one registry per process, served at `GET /metrics`
(`router.http.routes.metrics`, which also reads the queue depths at scrape time).

The instruments every event or delivery updates are the router's own (`Tally`, `Timings`):
plain counts in the event loop's thread, read by the registry at scrape time. prometheus-
client's own take a lock per update and walk a histogram's buckets in Python, three such
updates per delivery cost about 5% of its instructions (`python -m bench.instructions
--delivery`). The rest are prometheus-client's.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class Tally(Collector):
    """A counter by one tuple of label values, counted with `add(values)`. Updated only from
    the event loop's thread (no lock); read at scrape time."""

    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation, self.labels = name, documentation, list(labels)
        self.counts: dict[tuple[str, ...], int] = {}
        registry.register(self)

    def add(self, values: tuple[str, ...], amount: int = 1) -> None:
        self.counts[values] = self.counts.get(values, 0) + amount

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labels)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for values, count in list(self.counts.items()):
            family.add_metric(list(values), count)
        yield family


class Timings(Collector):
    """A histogram of seconds over fixed buckets, `observe(seconds)`: one bisect and two
    additions, from the event loop's thread only (no lock); read at scrape time."""

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = [float(b) for b in buckets]
        self.counts = [0] * (len(self.bounds) + 1)  # the last: over every bound (+Inf)
        self.sum = 0.0
        registry.register(self)

    def observe(self, seconds: float) -> None:
        # Prometheus buckets are `le` (less than or equal): bisect_left puts a value equal
        # to a bound in that bound's bucket.
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[Metric]:
        cumulative, buckets = 0, []
        for bound, count in zip([*map(_le, self.bounds), "+Inf"], self.counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            self.name, self.documentation, buckets=buckets, sum_value=self.sum
        )


def _le(bound: float) -> str:
    """A bucket bound as prometheus-client writes it (`0.005`, `1.0`, `3600.0`)."""
    return repr(float(bound))


class Metrics:
    """The service's instruments."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_received = Tally(
            "router_events_received",
            "Events answered 202, by event and status",
            ["event", "status"],
            r,
        )
        self.events_refused = Counter(
            "router_events_refused", "Events not accepted, by reason", ["reason"], registry=r
        )
        self.deliveries = Tally(
            "router_deliveries",
            "Delivery outcomes (attempt results and final states)",
            ["outcome"],
            r,
        )
        self.attempt_seconds = Timings(
            "router_attempt_duration_seconds", "Time one delivery attempt took", LATENCY_BUCKETS, r
        )
        self.end_to_end_seconds = Timings(
            "router_delivery_latency_seconds",
            "From event accepted to delivered",
            LATENCY_BUCKETS,
            r,
        )
        self.queue_depth = Gauge(
            "router_queue_depth", "Items waiting, by queue", ["queue"], registry=r
        )
        self.operational_events = Counter(
            "router_operational_events",
            "The router's own events (router.*), by event and outcome: emitted (stored for "
            "delivery) or dropped (Redis unavailable too long, or too many waiting)",
            ["event", "outcome"],
            registry=r,
        )
        self.open_breakers = Gauge(
            "router_open_breakers", "Subscribers whose circuit breaker is open", registry=r
        )

    def received(self, event: str, status: str) -> None:
        """Count one event answered 202."""
        self.events_received.add((event, status))

    def delivered(self, outcome: str, count: int = 1) -> None:
        """Count `count` deliveries reaching `outcome`."""
        self.deliveries.add((outcome,), count)
