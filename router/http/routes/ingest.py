"""Where an event is accepted: `POST /webhooks` and `POST /webhooks/{event_type}`.

An event is answered 202 only once its own write is confirmed by Redis. Writes of concurrent
requests share one script call (`router.storage.batching`), so a burst costs a few round trips,
not one per event; every input is checked here, before it joins a batch, so nothing one
request sends can fail another's write. When the event cannot be made durable — Redis
unreachable, or the dispatch backlog over `ROUTER_MAX_BACKLOG` — the answer is 429 with
Retry-After: the platform retries a webhook only on 429, so any other status would lose it.

What is accepted reads back as it arrived: the body is stored and delivered byte for byte,
and a body that could not be represented faithfully (a lone surrogate, a number beyond a
double, nesting deeper than `MAX_DEPTH`) is refused with a 400 instead.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import ResponseError

from router.core import tracing
from router.core.records import EventStatus, IncomingEvent
from router.core.signing import ROUTER_HEADERS, USER_AGENT
from router.http.context import CATALOG, LEDGER, METRICS, REFUSALS, SETTINGS, VERIFIER
from router.http.errors import (
    ApiError,
    bad_request,
    render_error,
    too_many_requests,
    validation_failed,
)
from router.http.operations import Resource, read_body
from router.http.verification import Refusal, timestamp_refusal
from router.storage.client import UNAVAILABLE, refusing_writes
from router.storage.ledger import Overloaded
from subscriptions.catalog import is_router_event
from subscriptions.ids import now_ms

log = logging.getLogger("router.ingest")
resource = Resource("ingest")

MAX_EVENT_NAME = 200  # as documented for every path parameter
MAX_WEBHOOK_ID = 512
MAX_DEPTH = 128  # nesting of arrays and objects; the platform's payloads use fewer than 10
REDIS_DOWN_RETRY_AFTER = 10
OVERLOAD_RETRY_AFTER = 30
# Every delivery a router (any deployment) makes carries these; an event that arrives with
# one was delivered by a router, and routing it again could loop. Compared case-insensitively
# and with `_` read as `-`, as gateways that rewrite header names do.
_LOOP_MARKS = {name.lower(): name for name in ROUTER_HEADERS}
_ROUTER_AGENT = USER_AGENT.split("/", 1)[0].lower() + "/"


class WebhookEvent(BaseModel):
    """The platform's event: a JSON object whose `type` names the event (or an alias the
    catalog maps). `locationId` and `companyId` (strings) select the tenant, `webhookId`
    deduplicates, `timestamp` (RFC 3339) is checked when verifying. Documentation only: the
    raw body is stored and delivered byte for byte."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(min_length=1, max_length=MAX_EVENT_NAME, description="e.g. ContactCreate")


class NamedWebhookEvent(BaseModel):
    """Any JSON object: the URL names the event (the payload's `type` may be SMS, Email...)."""

    model_config = ConfigDict(extra="allow")


class Accepted(BaseModel):
    event_id: str = Field(description="The stored event (the original's id for a duplicate)")
    type: str = Field(description="The event name routing used (after aliases)")
    status: EventStatus


def _too_deep(value: Any) -> bool:
    """True if `value` nests arrays and objects deeper than MAX_DEPTH (iterative: no
    recursion limit to hit)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


def _parse_body(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or 400. Strict, so that whatever is accepted can be read
    back and delivered faithfully: UTF-8 with no lone surrogates, no NaN/Infinity or numbers
    beyond a double (orjson refuses all of these), at most MAX_DEPTH levels."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"Body is not valid JSON (UTF-8): {exc.msg}") from None
    if not isinstance(payload, dict):
        raise bad_request("Body must be a JSON object")
    # Counting brackets is C-fast and bounds the depth from above: most bodies skip the walk.
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and _too_deep(payload):
        raise bad_request(f"Body nests arrays and objects deeper than {MAX_DEPTH} levels")
    return payload


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a percent-encoded lone surrogate in the path
        return False
    return True


def _optional_str(payload: dict[str, Any], field: str, limit: int = 1024) -> str | None:
    """A routing field: absent or non-string → None; one too long to be an id → 422."""
    value = payload.get(field)
    if not isinstance(value, str) or not value:
        return None
    if len(value) > limit:
        raise validation_failed([(field, f"longer than {limit} characters")])
    return value


def _header(headers: Mapping[str, str], name: str, limit: int) -> str | None:
    """A header this service reads, or 400 naming it: printable ASCII, at most `limit`
    characters. (Undecodable bytes arrive as surrogates, which no store or signature check
    can take.)"""
    value = headers.get(name)
    if value is None:
        return None
    if len(value) > limit or not value.isascii() or not value.isprintable():
        raise bad_request(f"Header {name} must be printable ASCII of at most {limit} characters")
    return value or None


def _router_mark(headers: Mapping[str, str]) -> str | None:
    """The router header this request carries (as the router spells it), or None."""
    for name in headers:
        if (mark := _LOOP_MARKS.get(name.lower().replace("_", "-"))) is not None:
            return mark
    if headers.get("User-Agent", "").lower().startswith(_ROUTER_AGENT):
        return "User-Agent"
    return None


def _check_content_type(headers: Mapping[str, str]) -> None:
    # Parsed by hand: aiohttp's `request.content_type` raises on some malformed headers.
    ctype = headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type must be application/json")


# Metric label of each refusal status (401s carry their own reason).
_REASONS = {
    400: "malformed",
    408: "timeout",
    410: "loop",
    413: "too_large",
    415: "media_type",
    422: "invalid",
}


class _Unauthenticated(ApiError):
    """A 401 that keeps its refusal's reason for the metric."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(401, "UNAUTHENTICATED", refusal.message)
        self.reason = refusal.reason


@dataclass(frozen=True, slots=True)
class Arrival:
    """What ingest reads of a request: an aiohttp request's, or one `serve` parsed itself
    (`router.http.fast_ingest`)."""

    app: web.Application
    path: str
    headers: Mapping[str, str]
    # The body, read only once the headers have been checked (413 and 408 are its to raise).
    read: Callable[[], Awaitable[bytes]]


def _arrival(request: web.Request) -> Arrival:
    return Arrival(request.app, request.path, request.headers, partial(read_body, request))


async def answer(arrival: Arrival) -> web.Response:
    """`POST /webhooks` for a request `serve` parsed itself: the route's answer, an error in
    the envelope exactly as `error_middleware` renders it for the route."""
    try:
        return await _ingest(arrival, None)
    except Exception as exc:
        return render_error(exc, "POST", arrival.path)


@tracing.ingest_span
async def _ingest(arrival: Arrival, path_event: str | None) -> web.Response:
    app = arrival.app
    try:
        response = await _accept(arrival, path_event)
    except ApiError as exc:
        if exc.status != 429:
            if isinstance(exc, _Unauthenticated):
                reason = exc.reason
            else:
                reason = _REASONS.get(exc.status, "other")
            app[METRICS].events_refused.labels(reason=reason).inc()
            app[REFUSALS].refused(Refusal(reason, str(exc)))
        raise
    app[REFUSALS].accepted()
    return response


async def _accept(arrival: Arrival, path_event: str | None) -> web.Response:
    app, headers = arrival.app, arrival.headers
    settings = app[SETTINGS]
    if (mark := _router_mark(headers)) is not None:
        raise ApiError(
            410,
            "LOOP_DETECTED",
            f"This request was delivered by a webhook-router ({mark}); routing it "
            "again could loop, so it is refused for good",
        )
    webhook_header = _header(headers, "webhook-id", MAX_WEBHOOK_ID)
    _check_content_type(headers)
    raw = await arrival.read()
    verifier = app[VERIFIER]
    if verifier is not None and (refusal := verifier.refusal(raw, headers)):
        raise _Unauthenticated(refusal)
    payload = _parse_body(raw)
    payload_type = payload.get("type")
    if path_event is None and not isinstance(payload_type, str):
        raise validation_failed([("type", "a string `type` naming the event is required")])
    if path_event is None and not payload_type:
        raise validation_failed([("type", "must not be empty")])
    if isinstance(payload_type, str) and len(payload_type) > MAX_EVENT_NAME:
        raise validation_failed([("type", f"longer than {MAX_EVENT_NAME} characters")])
    if verifier is not None and (
        refusal := timestamp_refusal(payload, settings.timestamp_tolerance)
    ):
        raise _Unauthenticated(refusal)
    if path_event is not None and len(path_event) > MAX_EVENT_NAME:
        raise validation_failed([("event_type", f"longer than {MAX_EVENT_NAME} characters")])
    if path_event is not None and not _encodable(path_event):
        raise validation_failed([("event_type", "must be valid Unicode text")])
    catalog = app[CATALOG]
    event_name = catalog.event_for_payload_type(path_event or payload_type)
    if is_router_event(event_name):
        # Only the router emits these; one posted here would reach its operators as its own.
        field = "type" if path_event is None else "event_type"
        raise validation_failed([(field, f"{event_name} is the router's own event")])
    webhook_id = _optional_str(payload, "webhookId", MAX_WEBHOOK_ID) or webhook_header
    # With verification on, a signed body seen before is a replay whatever its fields say:
    # the platform's envelope fields are optional, the signature covers the body.
    body_digest = hashlib.sha256(raw).hexdigest() if verifier is not None else None
    ledger = app[LEDGER]
    incoming = IncomingEvent(
        event_id=ledger.new_event_id(webhook_id=webhook_id, body_digest=body_digest),
        body=raw,
        event=event_name,
        payload_type=payload_type if isinstance(payload_type, str) else "",
        location_id=_optional_str(payload, "locationId"),
        company_id=_optional_str(payload, "companyId"),
        webhook_id=webhook_id,
        body_digest=body_digest,
        received_at=now_ms(),
        routable=catalog.required_scope(event_name) is not None,
        traceparent=tracing.traceparent(),
    )
    try:
        status, event_id = await ledger.accept(incoming)
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
    app[METRICS].received(label, status)  # a StrEnum: its value, as label and in JSON
    # Serialised directly (the hot path); the shape is the `Accepted` model.
    body = {"event_id": event_id, "type": event_name, "status": status}
    return web.Response(status=202, body=orjson.dumps(body), content_type="application/json")


_INGEST_ERRORS = (400, 401, 410, 413, 415, 422, 429)


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
    return await _ingest(_arrival(request), None)


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
    return await _ingest(_arrival(request), request.match_info["event_type"])
