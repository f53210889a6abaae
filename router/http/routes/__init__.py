"""The HTTP API, one module per resource (one noun and its verbs)."""

from __future__ import annotations

from router.http.operations import Resource
from router.http.routes import (
    api_keys,
    backfill,
    catalog,
    deliveries,
    events,
    health,
    ingest,
    metrics,
    openapi,
    subscribers,
    ui,
    whoami,
)

# Every resource the app serves; /openapi.json documents exactly these (the UI's files aside).
RESOURCES: tuple[Resource, ...] = (
    health.resource,
    ingest.resource,
    catalog.resource,
    subscribers.resource,
    api_keys.resource,
    whoami.resource,
    deliveries.resource,
    backfill.resource,
    events.resource,
    metrics.resource,
    openapi.resource,
    ui.resource,
)
