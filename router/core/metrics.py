"""The service's Prometheus instruments: one registry per process, served at `GET /metrics`
(`router.http.routes.metrics`, which also reads the queue depths at scrape time)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class Metrics:
    """The service's instruments."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_received = Counter(
            "router_events_received",
            "Events answered 202, by event and status",
            ["event", "status"],
            registry=r,
        )
        self.events_refused = Counter(
            "router_events_refused", "Events not accepted, by reason", ["reason"], registry=r
        )
        self.deliveries = Counter(
            "router_deliveries",
            "Delivery outcomes (attempt results and final states)",
            ["outcome"],
            registry=r,
        )
        self.attempt_seconds = Histogram(
            "router_attempt_duration_seconds",
            "Time one delivery attempt took",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "router_delivery_latency_seconds",
            "From event accepted to delivered",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "router_queue_depth", "Items waiting, by queue", ["queue"], registry=r
        )
        self._received: dict[tuple[str, str], Any] = {}
        self._delivered: dict[str, Any] = {}
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

    def received(self, event: str, status: str) -> Any:
        """The events-received counter for one (event, status), looked up once (hot path)."""
        child = self._received.get((event, status))
        if child is None:
            child = self._received[(event, status)] = self.events_received.labels(
                event=event, status=status
            )
        return child

    def delivered(self, outcome: str) -> Any:
        """The deliveries counter for one outcome, looked up once (hot path)."""
        child = self._delivered.get(outcome)
        if child is None:
            child = self._delivered[outcome] = self.deliveries.labels(outcome=outcome)
        return child
