"""Where an event is accepted: `POST /webhooks` and `POST /webhooks/{event_type}`.

An event is answered 202 only once its own write is confirmed by Redis. Writes of concurrent
requests share one script call (`router.batching`), so a burst costs a few round trips, not one
per event. When the event cannot be made durable — Redis unreachable, or the dispatch backlog
over `ROUTER_MAX_BACKLOG` — the answer is 429 with Retry-After: the platform retries a webhook
only on 429, so any other status would lose it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import ResponseError

from router.connections import UNAVAILABLE, refusing_writes
from router.context import CATALOG, LEDGER, METRICS, SETTINGS, VERIFIER
from router.errors import ApiError, bad_request, too_many_requests, validation_failed
from router.ledger import EventStatus, IncomingEvent, Overloaded
from router.operations import Resource, read_body
from router.verification import timestamp_refusal
from subscriptions.ids import new_id, now_ms

log = logging.getLogger("router.ingest")
resource = Resource("ingest")

MAX_EVENT_NAME = 200  # as documented for every path parameter
REDIS_DOWN_RETRY_AFTER = 10
OVERLOAD_RETRY_AFTER = 30


class WebhookEvent(BaseModel):
    """The platform's event: a JSON object whose `type` names the event (or an alias the
    catalog maps). `locationId` and `companyId` (strings) select the tenant, `webhookId`
    deduplicates, `timestamp` (RFC 3339) is checked when verifying. Documentation only: the
    raw body is stored and delivered byte for byte."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(min_length=1, description="The event, e.g. ContactCreate")


class NamedWebhookEvent(BaseModel):
    """Any JSON object: the URL names the event (the payload's `type` may be SMS, Email...)."""

    model_config = ConfigDict(extra="allow")


class Accepted(BaseModel):
    event_id: str = Field(description="The stored event (the original's id for a duplicate)")
    type: str = Field(description="The event name routing used (after aliases)")
    status: EventStatus


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_body(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or 400. Strict: UTF-8 only (no encoded surrogates), no
    NaN/Infinity — whatever is accepted here must be deliverable to every receiver."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # orjson refuses some valid JSON (integers beyond 64 bits, escaped lone surrogates);
        # the stdlib takes those, and its own limits (nesting depth) become a 400.
        try:
            payload = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
        except (ValueError, RecursionError):
            raise bad_request("Body is not valid JSON (UTF-8)") from None
    if not isinstance(payload, dict):
        raise bad_request("Body must be a JSON object")
    return payload


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # an escaped lone surrogate
        return False
    return True


def _optional_str(payload: dict[str, Any], field: str) -> str | None:
    """A routing field: absent or non-string → None; a string Redis cannot store → 422."""
    value = payload.get(field)
    if not isinstance(value, str) or not value:
        return None
    if not _encodable(value):
        raise validation_failed([(field, "must be valid Unicode text")])
    return value


def _check_content_type(request: web.Request) -> None:
    # Parsed by hand: aiohttp's `request.content_type` raises on some malformed headers.
    ctype = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type must be application/json")


async def _ingest(request: web.Request, path_event: str | None) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    _check_content_type(request)
    raw = await read_body(request)
    verifier = app[VERIFIER]
    if verifier is not None and (reason := verifier.refusal(raw, request.headers)):
        app[METRICS].events_refused.labels(reason="signature").inc()
        raise ApiError(401, "UNAUTHENTICATED", reason)
    payload = _parse_body(raw)
    payload_type = payload.get("type")
    if path_event is None and not isinstance(payload_type, str):
        raise validation_failed([("type", "a string `type` naming the event is required")])
    if path_event is None and not payload_type:
        raise validation_failed([("type", "must not be empty")])
    if isinstance(payload_type, str) and not _encodable(payload_type):
        raise validation_failed([("type", "must be valid Unicode text")])
    if verifier is not None and (
        reason := timestamp_refusal(payload, settings.timestamp_tolerance)
    ):
        app[METRICS].events_refused.labels(reason="timestamp").inc()
        raise ApiError(401, "UNAUTHENTICATED", reason)
    if path_event is not None and not _encodable(path_event):
        raise validation_failed([("event_type", "must be valid Unicode text")])
    if path_event is not None and len(path_event) > MAX_EVENT_NAME:
        raise validation_failed([("event_type", f"longer than {MAX_EVENT_NAME} characters")])
    catalog = app[CATALOG]
    event_name = catalog.event_for_payload_type(path_event or payload_type)
    webhook_id = _optional_str(payload, "webhookId") or request.headers.get("webhook-id") or None
    incoming = IncomingEvent(
        event_id=new_id("evt"),
        body=raw,
        event=event_name,
        payload_type=payload_type if isinstance(payload_type, str) else "",
        location_id=_optional_str(payload, "locationId"),
        company_id=_optional_str(payload, "companyId"),
        webhook_id=webhook_id[:512] if webhook_id else None,
        received_at=now_ms(),
        routable=catalog.required_scope(event_name) is not None,
    )
    try:
        status, event_id = await app[LEDGER].accept(incoming)
    except Overloaded:
        app[METRICS].events_refused.labels(reason="overloaded").inc()
        raise too_many_requests(
            "Dispatch backlog is full; retry later", OVERLOAD_RETRY_AFTER
        ) from None
    except UNAVAILABLE:
        app[METRICS].events_refused.labels(reason="redis_unavailable").inc()
        log.warning("event not accepted: Redis unavailable")
        raise too_many_requests(
            "Event store unavailable; retry later", REDIS_DOWN_RETRY_AFTER
        ) from None
    except ResponseError as exc:
        if not refusing_writes(exc):
            raise
        app[METRICS].events_refused.labels(reason="redis_unavailable").inc()
        log.warning("event not accepted: Redis refuses writes (%s)", str(exc).split(" ", 1)[0])
        raise too_many_requests(
            "Event store refuses writes for now; retry later", REDIS_DOWN_RETRY_AFTER
        ) from None
    # Only catalog events become label values: arbitrary `type` strings must not be able to
    # create unbounded metric series.
    label = event_name if incoming.routable else "unroutable"
    app[METRICS].received(label, status.value).inc()
    # Serialised directly (the hot path); the shape is the `Accepted` model.
    body = {"event_id": event_id, "type": event_name, "status": status.value}
    return web.Response(status=202, body=orjson.dumps(body), content_type="application/json")


_INGEST_ERRORS = (400, 401, 413, 415, 422, 429)


@resource.post(
    "/webhooks",
    summary="Accept a platform webhook event (its `type` names the event)",
    scope=None,
    documented_body=WebhookEvent,
    response=Accepted,
    status=202,
    errors=_INGEST_ERRORS,
)
async def ingest(request: web.Request) -> web.Response:
    return await _ingest(request, None)


@resource.post(
    "/webhooks/{event_type}",
    summary="Accept a platform webhook event whose name is given by the URL",
    scope=None,
    documented_body=NamedWebhookEvent,
    response=Accepted,
    status=202,
    errors=_INGEST_ERRORS,
)
async def ingest_named(request: web.Request) -> web.Response:
    return await _ingest(request, request.match_info["event_type"])
