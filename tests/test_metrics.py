"""The router's own instruments (`router.core.metrics`): what a scrape shows must be what
prometheus-client's own Counter and Histogram would show for the same updates."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from router.core.metrics import LATENCY_BUCKETS, Metrics, Tally, Timings


def _samples(registry: CollectorRegistry, skip_created: bool = True) -> list[str]:
    """The exposition's sample lines (prometheus-client's own add `_created` series, which
    the router's do not carry)."""
    lines = generate_latest(registry).decode().splitlines()
    return [line for line in lines if not (skip_created and "_created" in line)]


@pytest.mark.parametrize(
    "values",
    [
        [],
        [0.0],
        [0.005, 0.01, 3600],  # on the bounds: counted in their own bucket (`le`)
        [0.0049, 0.0051, 0.3, 0.3, 7.5, 3600.5, 1e9],
        [0.001 * i for i in range(1, 2000, 7)],
    ],
    ids=["none", "zero", "bounds", "spread", "many"],
)
def test_timings_expose_what_a_prometheus_histogram_would(values: list[float]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    timings = Timings("t_seconds", "Some timings", LATENCY_BUCKETS, ours)
    reference = Histogram("t_seconds", "Some timings", buckets=LATENCY_BUCKETS, registry=theirs)
    for value in values:
        timings.observe(value)
        reference.observe(value)
    assert _samples(ours) == _samples(theirs)
    assert ours.get_sample_value("t_seconds_count") == len(values)


def test_tally_exposes_what_a_labelled_prometheus_counter_would() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    tally = Tally("things", "Things seen", ["kind", "status"], ours)
    reference = Counter("things", "Things seen", ["kind", "status"], registry=theirs)
    for kind, status, amount in [("a", "ok", 1), ("b", "ok", 3), ("a", "ok", 1), ("a", "no", 2)]:
        tally.add((kind, status), amount)
        reference.labels(kind=kind, status=status).inc(amount)
    assert _samples(ours) == _samples(theirs)
    assert ours.get_sample_value("things_total", {"kind": "a", "status": "ok"}) == 2


def test_a_name_taken_twice_is_refused() -> None:
    registry = CollectorRegistry()
    Tally("things", "Things seen", ["kind"], registry)
    with pytest.raises(ValueError, match="Duplicated"):
        Counter("things", "Other things", registry=registry)


def test_metrics_count_what_the_pipeline_reports() -> None:
    metrics = Metrics()
    metrics.received("ContactCreate", "accepted")
    metrics.received("ContactCreate", "accepted")
    metrics.received("unroutable", "unroutable")
    metrics.delivered("created", 10)
    metrics.delivered("succeeded")
    metrics.end_to_end_seconds.observe(0.02)
    sample = metrics.registry.get_sample_value
    assert (
        sample("router_events_received_total", {"event": "ContactCreate", "status": "accepted"})
        == 2
    )
    assert (
        sample("router_events_received_total", {"event": "unroutable", "status": "unroutable"}) == 1
    )
    assert sample("router_deliveries_total", {"outcome": "created"}) == 10
    assert sample("router_deliveries_total", {"outcome": "succeeded"}) == 1
    assert sample("router_delivery_latency_seconds_bucket", {"le": "0.01"}) == 0
    assert sample("router_delivery_latency_seconds_bucket", {"le": "0.025"}) == 1
    assert sample("router_attempt_duration_seconds_count") == 0
