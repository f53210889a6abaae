"""OpenTelemetry traces (README, "Traces"): a span per ingest request, dispatch and delivery
attempt, all in one trace through the traceparent stored with the event; nothing at all when
tracing is off; and a real `webhook-router serve` exporting over OTLP/HTTP."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from redis.asyncio import Redis

from router.core import tracing
from router.http.app import create_app
from router.http.context import LEDGER
from router.settings import SettingsError
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.payloads import LOCATION_ID, encode, platform_event
from tests.receivers import Receiver

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FAST: dict[str, Any] = {"retry_schedule": (0.2, 0.2), "reclaim_after": 2, "delivery_timeout": 2}
DEADLINE = 10.0
# A caller's trace context, as the W3C example spells one.
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test, every span kept in memory (installed before the app is built,
    as `serve` does)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.install(None)
    provider.shutdown()


async def until(check: Callable[[], Any], deadline: float = DEADLINE) -> Any:
    """Poll `check` until it returns something truthy; fail after `deadline` seconds."""
    give_up = time.monotonic() + deadline
    while not (value := check()):
        assert time.monotonic() < give_up, "not reached in time"
        await asyncio.sleep(0.05)
    return value


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


async def start_router(
    aiohttp_client: Callable[..., Awaitable[TestClient]], redis: Redis, key_prefix: str
) -> TestClient:
    settings = make_settings(key_prefix, **FAST)
    return await aiohttp_client(create_app(settings, redis=redis, run_workers=True))


async def subscribe(client: TestClient, url: str) -> str:
    body = {"name": "traced", "url": url, "scopes": ["contacts.readonly"]}
    resp = await client.post("/v1/subscribers", json=body, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


async def publish(client: TestClient, headers: dict[str, str] | None = None) -> str:
    body = encode(platform_event("ContactCreate", locationId=LOCATION_ID))
    resp = await client.post(
        "/webhooks", data=body, headers={"Content-Type": "application/json", **(headers or {})}
    )
    assert resp.status == 202, await resp.text()
    return (await resp.json())["event_id"]


def traceparent_of(span: ReadableSpan) -> str:
    context = span.context
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


async def test_ingest_dispatch_and_attempt_spans_share_the_ingest_trace(
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    redis: Redis,
    key_prefix: str,
    spans: InMemorySpanExporter,
) -> None:
    async with Receiver() as receiver:
        client = await start_router(aiohttp_client, redis, key_prefix)
        subscriber_id = await subscribe(client, receiver.url("/hook"))
        event_id = await publish(client)
        [hit] = await receiver.wait_for("/hook", 1)
        [attempt] = await until(lambda: named(spans, "POST"))
        [ingest] = named(spans, "POST /webhooks")
        [dispatch] = named(spans, "dispatch")

    assert ingest.kind == SpanKind.SERVER and ingest.parent is None
    assert ingest.attributes == {
        "http.request.method": "POST",
        "http.route": "/webhooks",
        "url.path": "/webhooks",
        "http.response.status_code": 202,
        "webhook.event.id": event_id,
        "webhook.event.type": "ContactCreate",
        "webhook.event.status": "accepted",
    }
    # Dispatch and the attempt ran in other tasks, from what Redis gave back: children of the
    # ingest span all the same.
    for child in (dispatch, attempt):
        assert child.context.trace_id == ingest.context.trace_id
        assert child.parent is not None and child.parent.span_id == ingest.context.span_id
    assert dispatch.kind == SpanKind.CONSUMER
    assert dispatch.attributes == {
        "webhook.event.id": event_id,
        "webhook.event.type": "ContactCreate",
        "webhook.dispatch.subscribers": 1,
    }
    assert attempt.kind == SpanKind.CLIENT
    assert attempt.status.status_code == StatusCode.UNSET
    assert attempt.attributes is not None
    assert dict(attempt.attributes) == {
        "http.request.method": "POST",
        "server.address": "127.0.0.1",
        "server.port": int(receiver.base_url.rsplit(":", 1)[1]),
        "webhook.event.id": event_id,
        "webhook.event.type": "ContactCreate",
        "webhook.subscriber.id": subscriber_id,
        "webhook.delivery.id": attempt.attributes["webhook.delivery.id"],
        "webhook.delivery.attempt": 1,
        "http.response.status_code": 200,
        "webhook.delivery.outcome": "succeeded",
    }
    assert str(attempt.attributes["webhook.delivery.id"]).startswith("dlv_")
    # The receiver is handed the attempt's context, and the event record keeps the ingest's.
    assert hit.header("traceparent") == traceparent_of(attempt)
    stored = await redis.hget(client.app[LEDGER].keys.event(event_id), "traceparent")
    assert stored == traceparent_of(ingest).encode()


async def test_every_attempt_of_a_retried_delivery_joins_the_trace(
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    redis: Redis,
    key_prefix: str,
    spans: InMemorySpanExporter,
) -> None:
    async with Receiver() as receiver:
        receiver.program("/flaky", 500)
        client = await start_router(aiohttp_client, redis, key_prefix)
        await subscribe(client, receiver.url("/flaky"))
        await publish(client)
        await receiver.wait_for("/flaky", 2)
        attempts = await until(lambda: len(named(spans, "POST")) == 2 and named(spans, "POST"))
        [ingest] = named(spans, "POST /webhooks")

    first, second = attempts  # finished in this order: the second waited for the retry
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes["webhook.delivery.attempt"] == 1
    assert first.attributes["http.response.status_code"] == 500
    assert first.attributes["webhook.delivery.outcome"] == "failed"
    assert first.attributes["error.type"] == "500"
    assert first.status.status_code == StatusCode.ERROR
    assert "http.request.resend_count" not in first.attributes
    assert second.attributes["webhook.delivery.attempt"] == 2
    assert second.attributes["http.request.resend_count"] == 1
    assert second.attributes["webhook.delivery.outcome"] == "succeeded"
    for attempt in (first, second):
        assert attempt.parent is not None and attempt.parent.span_id == ingest.context.span_id


async def test_ingest_continues_the_callers_trace_and_records_refusals(
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    redis: Redis,
    key_prefix: str,
    spans: InMemorySpanExporter,
) -> None:
    client = await aiohttp_client(create_app(make_settings(key_prefix), redis=redis))
    await publish(client, {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
    resp = await client.post(
        "/webhooks/ContactCreate", data=b"{", headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400

    [accepted] = named(spans, "POST /webhooks")
    assert f"{accepted.context.trace_id:032x}" == CALLER_TRACE
    assert accepted.parent is not None and f"{accepted.parent.span_id:016x}" == CALLER_SPAN
    [refused] = named(spans, "POST /webhooks/{event_type}")
    assert refused.attributes is not None
    assert refused.attributes["http.response.status_code"] == 400
    assert refused.attributes["url.path"] == "/webhooks/ContactCreate"
    assert "webhook.event.id" not in refused.attributes
    # A refusal is the caller's error: the server span is not marked failed.
    assert refused.status.status_code == StatusCode.UNSET


async def test_with_tracing_off_nothing_is_traced_or_stored(
    aiohttp_client: Callable[..., Awaitable[TestClient]], redis: Redis, key_prefix: str
) -> None:
    assert not tracing.enabled()
    async with Receiver() as receiver:
        client = await start_router(aiohttp_client, redis, key_prefix)
        await subscribe(client, receiver.url("/hook"))
        event_id = await publish(client)
        [hit] = await receiver.wait_for("/hook", 1)
    assert hit.header("traceparent") is None
    fields = await redis.hgetall(client.app[LEDGER].keys.event(event_id))
    assert b"event" in fields and b"traceparent" not in fields


def _environment(**otel: str) -> dict[str, str]:
    """This process's environment without any OTEL_* variable, plus `otel`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return env | otel


def test_off_loads_no_tracing_sdk_and_sets_no_tracer_provider() -> None:
    """A whole process with tracing unset: the app built, an event accepted, dispatched and
    delivered, and no tracer provider set, nor the SDK's tracing or an exporter loaded.
    (redis-py itself imports OpenTelemetry's metrics SDK when it is installed.)"""
    script = textwrap.dedent(
        """
        import asyncio, sys
        from aiohttp import web
        from aiohttp.test_utils import TestClient, TestServer
        from opentelemetry import trace
        from router.core import tracing
        from router.http.app import create_app
        from router.settings import Settings

        async def main():
            hits = []
            async def hook(request):
                hits.append(dict(request.headers))
                return web.Response()
            receiver = web.Application()
            receiver.router.add_post("/hook", hook)
            async with TestServer(receiver) as hook_server:
                assert not tracing.configure()
                settings = Settings.model_validate(
                    {"admin_token": "a" * 20, "allow_private_targets": True}
                )
                app = create_app(settings, run_workers=True)
                async with TestClient(TestServer(app)) as c:
                    admin = {"Authorization": "Bearer " + "a" * 20}
                    sub = {"name": "s", "url": str(hook_server.make_url("/hook")),
                           "scopes": ["contacts.readonly"]}
                    r = await c.post("/v1/subscribers", json=sub, headers=admin)
                    assert r.status == 201, r.status
                    r = await c.post("/webhooks", data=b'{"type":"ContactCreate"}',
                                     headers={"Content-Type": "application/json"})
                    assert r.status == 202, r.status
                    for _ in range(200):
                        if hits:
                            break
                        await asyncio.sleep(0.05)
            assert len(hits) == 1 and "traceparent" not in hits[0], hits

        asyncio.run(main())
        print(type(trace.get_tracer_provider()).__name__)
        print(sorted(m for m in sys.modules
                     if m.startswith(("opentelemetry.sdk.trace", "opentelemetry.exporter"))))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=_environment(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["ProxyTracerProvider", "[]"]


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            True,
        ),
    ],
)
def test_which_environments_turn_tracing_on(environ: dict[str, str], on: bool) -> None:
    assert tracing.wanted(environ) is on


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
        ("OTEL_TRACES_EXPORTER", "zipkin"),
    ],
)
def test_what_the_router_cannot_export_is_refused_naming_the_variable(
    variable: str, value: str
) -> None:
    with pytest.raises(SettingsError, match=f"^{variable}: '{value}' is not supported"):
        tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", variable: value})


def _router() -> list[str]:
    script = Path(sys.executable).parent / "webhook-router"
    return [str(script)] if script.exists() else [sys.executable, "-m", "router"]


def test_serve_stops_at_start_on_an_unsupported_protocol() -> None:
    env = _environment(
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_EXPORTER_OTLP_PROTOCOL="grpc"
    )
    done = subprocess.run(
        [*_router(), "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "error: OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' is not supported" in done.stderr


class Collector:
    """An OTLP/HTTP traces endpoint: accepts POST /v1/traces (protobuf) and keeps each
    export's spans."""

    def __init__(self) -> None:
        self.requests = 0
        self.spans: list[tuple[str, dict[str, Any]]] = []  # (span name, resource attributes)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Collector:
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _export(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(await request.read())
        self.requests += 1
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                self.spans += [(span.name, resource) for span in scope_spans.spans]
        return web.Response(body=b"", content_type="application/x-protobuf")

    def names(self) -> set[str]:
        return {name for name, _ in self.spans}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    async with Collector() as running:
        yield running


async def test_serve_exports_its_spans_to_an_otlp_http_endpoint(collector: Collector) -> None:
    port = _free_port()
    env = _environment(
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.url,
        OTEL_SERVICE_NAME="router-under-test",
        OTEL_BSP_SCHEDULE_DELAY="100",  # export every 0.1 s, not every 5 s
    )
    env.pop("REDIS_URL", None)  # the embedded store: one process, nothing left behind
    env |= {
        "ROUTER_PORT": str(port),
        "ROUTER_ADMIN_TOKEN": ADMIN_TOKEN,
        "ROUTER_ALLOW_PRIVATE_TARGETS": "true",
        "ROUTER_LOG_LEVEL": "warning",
    }
    base = f"http://127.0.0.1:{port}"
    router = await asyncio.create_subprocess_exec(*_router(), "serve", env=env)
    try:
        async with Receiver() as receiver, aiohttp.ClientSession() as http:

            async def healthy() -> bool:
                try:
                    async with http.get(f"{base}/healthz") as resp:
                        return resp.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            give_up = time.monotonic() + 60
            while not await healthy():
                assert router.returncode is None and time.monotonic() < give_up
                await asyncio.sleep(0.1)
            subscriber = {
                "name": "otlp",
                "url": receiver.url("/hook"),
                "scopes": ["contacts.readonly"],
            }
            async with http.post(f"{base}/v1/subscribers", json=subscriber, headers=ADMIN) as r:
                assert r.status == 201
            body = encode(platform_event("ContactCreate", locationId=LOCATION_ID))
            headers = {"Content-Type": "application/json"}
            async with http.post(f"{base}/webhooks", data=body, headers=headers) as resp:
                assert resp.status == 202
            [hit] = await receiver.wait_for("/hook", 1)
            assert hit.header("traceparent") is not None
            await until(lambda: {"POST /webhooks", "dispatch", "POST"} <= collector.names())
    finally:
        router.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(router.wait(), 30) == 0
    assert collector.requests >= 1
    assert {resource["service.name"] for _, resource in collector.spans} == {"router-under-test"}
