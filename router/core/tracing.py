"""OpenTelemetry traces: a span per ingest request, per dispatch of an event and per delivery
attempt, all in the trace of the request that brought the event in.

Tracing is on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
set, unless `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. `configure()` then
installs the SDK's tracer provider with a batching OTLP/HTTP exporter, and the SDK reads the
other standard variables itself (service name, resource attributes, sampler, headers, timeout,
batching). Off, OpenTelemetry is never imported and each hook below is one check of a module
global: the decorators call straight through, `traceparent()` is None, `inject()` does nothing.

The ingest span's W3C `traceparent` is stored with the event, written by the accept script in
the call that stores the event and read back by the reads dispatch and attempts make anyway
(all only while tracing is on): the dispatch and attempt spans, in whichever process and however
much later, are children of the ingest span, and each attempt's context goes out with its POST.

Attribute names are OpenTelemetry's semantic conventions where one exists (`http.*`, `url.*`,
`server.*`, `error.type`); the router's own are under `webhook.`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from functools import wraps
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast
from urllib.parse import urlsplit

import orjson

from router.core.outcome import Outcome
from router.core.records import WorkItem
from router.settings import SettingsError
from subscriptions.models import Subscriber

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# The signal's own variable first: it wins over the general one, as in the SDK.
PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
PROTOCOL = "http/protobuf"  # the one the shipped exporter speaks
SERVICE_NAME = "webhook-router"  # unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES name one

EVENT_ID = "webhook.event.id"
EVENT_TYPE = "webhook.event.type"
EVENT_STATUS = "webhook.event.status"  # accepted, duplicate or unroutable
SUBSCRIBER_ID = "webhook.subscriber.id"
DELIVERY_ID = "webhook.delivery.id"
ATTEMPT = "webhook.delivery.attempt"  # 1 for the first
OUTCOME = "webhook.delivery.outcome"  # the delivery's state after the attempt
SUBSCRIBERS = "webhook.dispatch.subscribers"  # how many deliveries the event fanned out to
HTTP_METHOD = "http.request.method"
HTTP_ROUTE = "http.route"
HTTP_STATUS = "http.response.status_code"
RESEND_COUNT = "http.request.resend_count"
URL_PATH = "url.path"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
ERROR_TYPE = "error.type"


class Request(Protocol):
    """What the ingest span reads of a request (an aiohttp request: the core imports no
    aiohttp)."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def path(self) -> str: ...


class Response(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def body(self) -> Any: ...


_Rq = TypeVar("_Rq", bound=Request)
_Rs = TypeVar("_Rs", bound=Response)
_Post = TypeVar("_Post", bound=Callable[..., Awaitable[Outcome]])
# A dispatch plan as the ledger takes it: (entry id, event id, event name, subscriber ids).
Plan = tuple[str, str, str, Sequence[str]]


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether `environ` asks for traces. Raises SettingsError, naming the variable, for an
    exporter or protocol this router does not ship."""
    if not any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES):
        return False
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    if exporter == "none":
        return False
    if exporter != "otlp":
        raise SettingsError(f"OTEL_TRACES_EXPORTER: {exporter!r} is not supported; use otlp")
    for name in PROTOCOL_VARIABLES:
        if protocol := environ.get(name, "").strip():
            if protocol != PROTOCOL:
                raise SettingsError(f"{name}: {protocol!r} is not supported; use {PROTOCOL}")
            break
    return True


def configure() -> bool:
    """Turn tracing on for this process if the environment asks for it (`wanted`): the SDK's
    tracer provider, made the global one, exporting in batches over OTLP/HTTP from a thread of
    its own, and flushed at exit. Returns whether tracing is on."""
    if not wanted(os.environ):
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    install(provider)
    return True


def install(provider: TracerProvider | None) -> None:
    """Record spans with `provider` from now on; None turns tracing off again. (`configure`
    calls it; tests give a provider with an in-memory exporter.)"""
    global _on
    _on = None if provider is None else _Tracing(provider)


def enabled() -> bool:
    return _on is not None


def traceparent() -> str | None:
    """The current span's W3C traceparent, to be stored with the event; None when off."""
    if _on is None:
        return None
    carrier: dict[str, str] = {}
    _on.w3c.inject(carrier)
    return carrier.get("traceparent")


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's context to an outgoing request's headers (`traceparent`, and
    whatever else `OTEL_PROPAGATORS` names); nothing when off."""
    if _on is not None:
        _on.propagate.inject(headers)


def ingest_span(
    handler: Callable[[_Rq, str | None], Awaitable[_Rs]],
) -> Callable[[_Rq, str | None], Awaitable[_Rs]]:
    """Decorates the ingest handler `(request, event name from the path or None)`: a server
    span per request, continuing the caller's trace if it sent one, with the answer's status
    and the accepted event's id, type and status."""

    @wraps(handler)
    def traced(request: _Rq, path_event: str | None) -> Awaitable[_Rs]:
        if _on is None:
            return handler(request, path_event)
        route = "/webhooks" if path_event is None else "/webhooks/{event_type}"
        return _on.ingest(handler(request, path_event), request, route)

    return traced


def dispatched(started_ns: int, plans: Sequence[Plan], routing: Sequence[Any]) -> None:
    """A span per event of a dispatch batch begun at `started_ns` (`time.time_ns()`) and done
    now, from the batch's plans and, in the same order, the events' fields as dispatch read
    them (None for an expired event)."""
    if _on is not None:
        _on.dispatched(started_ns, plans, routing)


def attempt_span(post: _Post) -> _Post:
    """Decorates the method making one attempt, `(self, item, delivery, event, subscriber,
    ...) -> Outcome`: a client span per attempt, current while it runs (so `inject` sends
    it), with the attempt's number, status code and outcome."""

    @wraps(post)
    def traced(
        owner: Any,
        item: WorkItem,
        delivery: dict[str, str],
        event: dict[str, Any],
        subscriber: Subscriber,
        *rest: Any,
    ) -> Awaitable[Outcome]:
        posting = post(owner, item, delivery, event, subscriber, *rest)
        if _on is None:
            return posting
        return _on.attempt(posting, item, delivery, event, subscriber)

    return cast(_Post, traced)


class _Tracing:
    """The hooks' work while tracing is on; OpenTelemetry is imported here, not before."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import context, propagate, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.tracer = provider.get_tracer("webhook-router")
        self.propagate = propagate
        self.w3c = TraceContextTextMapPropagator()
        self.trace = trace
        self.kinds = trace.SpanKind
        self.root = context.Context()  # no parent: a span that starts a trace of its own

    def parent(self, traceparent: str | None) -> Context:
        if not traceparent:
            return self.root
        return self.w3c.extract({"traceparent": traceparent}, self.root)

    async def ingest(self, handling: Awaitable[_Rs], request: Request, route: str) -> _Rs:
        with self.tracer.start_as_current_span(
            f"POST {route}",
            context=self.propagate.extract(request.headers, self.root),
            kind=self.kinds.SERVER,
            attributes={HTTP_METHOD: "POST", HTTP_ROUTE: route, URL_PATH: request.path},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                response = await handling
            except Exception as exc:
                # The envelope's errors carry their status; anything else is answered 500.
                status = getattr(exc, "status", None)
                status = status if isinstance(status, int) else 500
                self._answered(span, status)
                if status >= 500:
                    span.record_exception(exc)
                raise
            self._answered(span, response.status)
            if response.status == 202 and span.is_recording():
                accepted = orjson.loads(response.body)
                span.set_attributes(
                    {
                        EVENT_ID: accepted["event_id"],
                        EVENT_TYPE: accepted["type"],
                        EVENT_STATUS: accepted["status"],
                    }
                )
            return response

    def _answered(self, span: Span, status: int) -> None:
        span.set_attribute(HTTP_STATUS, status)
        if status >= 500:  # a server span's 4xx is the client's error, not the server's
            span.set_attribute(ERROR_TYPE, str(status))
            span.set_status(self.trace.StatusCode.ERROR)

    def dispatched(self, started_ns: int, plans: Sequence[Plan], routing: Sequence[Any]) -> None:
        ended = time.time_ns()
        for (_, event_id, event, subscribers), fields in zip(plans, routing, strict=True):
            span = self.tracer.start_span(
                "dispatch",
                context=self.parent(fields.get("traceparent") if fields else None),
                kind=self.kinds.CONSUMER,
                attributes={EVENT_ID: event_id, EVENT_TYPE: event, SUBSCRIBERS: len(subscribers)},
                start_time=started_ns,
            )
            span.end(ended)

    async def attempt(
        self,
        posting: Awaitable[Outcome],
        item: WorkItem,
        delivery: dict[str, str],
        event: dict[str, Any],
        subscriber: Subscriber,
    ) -> Outcome:
        number = int(delivery.get("attempts", 0)) + 1
        url = urlsplit(subscriber.url)
        # Not `url.full`: a subscriber's URL may carry its own token in the query string.
        attributes: dict[str, str | int] = {
            HTTP_METHOD: "POST",
            SERVER_ADDRESS: url.hostname or "",
            SERVER_PORT: url.port or (443 if url.scheme == "https" else 80),
            EVENT_ID: item.event_id,
            EVENT_TYPE: event.get("event") or "",
            SUBSCRIBER_ID: item.subscriber_id,
            DELIVERY_ID: item.delivery_id,
            ATTEMPT: number,
        }
        if number > 1:
            attributes[RESEND_COUNT] = number - 1
        with self.tracer.start_as_current_span(
            "POST",
            context=self.parent(event.get("traceparent")),
            kind=self.kinds.CLIENT,
            attributes=attributes,
        ) as span:
            outcome = await posting
            logged = outcome.attempt or {}
            code, error = logged.get("status_code"), logged.get("error")
            span.set_attribute(OUTCOME, outcome.status.value)
            if code is not None:
                span.set_attribute(HTTP_STATUS, code)
            if code is None or not 200 <= code < 300:
                # Semantic conventions: the status code, or `_OTHER` when there was no answer.
                span.set_attribute(ERROR_TYPE, "_OTHER" if code is None else str(code))
                span.set_status(self.trace.StatusCode.ERROR, error or f"HTTP {code}")
            return outcome


_on: _Tracing | None = None
