"""Schemathesis against the served `/openapi.json`, with every check enabled.

The app runs on a real port in a thread with its own event loop (aiohttp is neither ASGI nor
WSGI, and schemathesis calls it synchronously). Every operation is generated from the document
the app serves, positive and negative, with the admin token as the bearer scheme's credential.

Positive checks (a request the document allows is not refused as invalid) and negative
checks (one it forbids is refused) run on every operation, but for the known gaps below.
Catalog names are enums of the app's own catalog and the subscriber URL rule is a pattern, so
the document states what the server enforces. What no schema can state is a refusal that
depends on the network: a URL whose host resolves to an internal address (the SSRF guard), or
to the router's own listen address. The app here runs with the production default, private
targets refused (its document then takes receivers by DNS name only), as `webhook-router
serve` does; the generated names resolve to nothing here (the fixture decides so, rather
than the machine's DNS), and the fixed seed generates none on its port. Nor can a schema
state that a value names a stored record: an API key's `subscriber_id` must name a
subscriber that exists (422 naming the field otherwise, as issue 17 asks), so positive-data
acceptance is off for `POST /v1/api-keys`; nor that one field comes after another or within
the retention of now, so it is off for a backfill's window too. A future gap goes in
`KNOWN_GAPS` (one check off on one operation) with a test below that reproduces it.

Needs `schemathesis` (the `test` extra).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import requests
from aiohttp import web
from hypothesis import HealthCheck, settings
from redis.asyncio import Redis

from router.http.app import create_app
from subscriptions.keys import key_pattern
from tests.conftest import ADMIN_TOKEN, REAL_REDIS_URL, make_settings

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.config import SchemathesisConfig  # noqa: E402

MAX_EXAMPLES = 25
SEED = 20240601

# (method, path, check turned off, the test below that reproduces why).
KNOWN_GAPS: tuple[tuple[str, str, str, str], ...] = (
    (
        "POST",
        "/v1/api-keys",
        "positive_data_acceptance",
        "test_binding_a_key_to_a_subscriber_that_does_not_exist_is_422",
    ),
    (
        "POST",
        "/v1/subscribers/{subscriber_id}/backfill",
        "positive_data_acceptance",
        "test_a_backfill_window_is_judged_against_itself_and_the_clock",
    ),
)


class ServedApp:
    """The app on 127.0.0.1:<free port>, served from a thread running its own event loop."""

    def __init__(self, key_prefix: str) -> None:
        self.key_prefix = key_prefix
        self.loop = asyncio.new_event_loop()
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._redis: Redis | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    async def _start(self) -> None:
        if REAL_REDIS_URL:
            self._redis = Redis.from_url(REAL_REDIS_URL)
        else:
            self._redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        settings = make_settings(self.key_prefix, allow_private_targets=False)
        app = create_app(settings, redis=self._redis)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"

    async def _stop(self) -> None:
        assert self._runner is not None and self._redis is not None
        await self._runner.cleanup()
        if REAL_REDIS_URL:
            async for key in self._redis.scan_iter(match=key_pattern(self.key_prefix)):
                await self._redis.delete(key)
        await self._redis.aclose()


async def _resolves_to_nothing(host: str, port: int) -> list[Any]:
    return []


@pytest.fixture(scope="module")
def served() -> Iterator[ServedApp]:
    # Generated host names resolve to nothing, decided here rather than by the machine's DNS:
    # a resolver that drops some queries made each such request wait out the lookup's
    # timeout, and the run took hours. What the guard does with resolved addresses is
    # tested in test_trust_urls.py.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("router.pipeline.targets._resolve", _resolves_to_nothing)
        app = ServedApp("st" + uuid.uuid4().hex[:12])
        app.start()
        try:
            yield app
        finally:
            app.stop()


def _config(base_url: str) -> SchemathesisConfig:
    operations: list[dict[str, Any]] = [
        # Schemathesis leaves out the operation that served the document unless a filter
        # names it; it is an operation like any other here.
        {"include-method": "GET", "include-path": "/openapi.json", "enabled": True},
        *(
            {
                "include-method": method,
                "include-path": path,
                "checks": {check: {"enabled": False}},
            }
            for method, path, check, _ in KNOWN_GAPS
        ),
    ]
    return SchemathesisConfig.from_dict(
        {
            "base-url": base_url,
            "seed": SEED,
            "auth": {"openapi": {"bearerAuth": {"bearer": ADMIN_TOKEN}}},
            "checks": {"enabled": True},
            "generation": {"max-examples": MAX_EXAMPLES},
            "operations": operations,
        }
    )


@pytest.fixture(scope="module")
def api_schema(served: ServedApp) -> Any:
    return schemathesis.openapi.from_url(
        served.base_url + "/openapi.json", config=_config(served.base_url)
    )


schema = schemathesis.pytest.from_fixture("api_schema")


# The subscriber body's URL pattern (DNS names only, as a default `serve` takes) and the
# recursive payload-filter grammar make hypothesis discard many drawn bodies; that is the
# schema's shape, not a slow or broken strategy, so the health check does not apply.
@schema.parametrize()
@settings(suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
def test_served_api_conforms_to_its_openapi_document(case: Any) -> None:
    # A request that hangs fails here rather than holding the whole suite.
    case.call_and_validate(timeout=30)


# ---------------------------------------------------------------- what the document states


@pytest.fixture(scope="module")
def document(served: ServedApp) -> dict[str, Any]:
    return requests.get(served.base_url + "/openapi.json", timeout=10).json()


def _component(document: dict[str, Any], name: str) -> dict[str, Any]:
    return document["components"]["schemas"][name]


@pytest.mark.parametrize("path", ["/webhooks", "/webhooks/{event_type}"])
def test_ingest_documents_its_json_body(document: dict[str, Any], path: str) -> None:
    body = document["paths"][path]["post"]["requestBody"]
    assert body["required"] is True
    assert "application/json" in body["content"]


def test_subscriber_secret_rule_is_in_the_schema(document: dict[str, Any]) -> None:
    secret = _component(document, "SubscriberCreate")["properties"]["secret"]
    variants = secret.get("anyOf", [secret])
    assert any("pattern" in v for v in variants if v.get("type") == "string")


@pytest.mark.parametrize("field", ["name", "url", "scopes", "status"])
def test_subscriber_patch_schema_refuses_null_for_required_fields(
    document: dict[str, Any], field: str
) -> None:
    prop = _component(document, "SubscriberPatch")["properties"][field]
    variants = prop.get("anyOf", [prop])
    assert all(v.get("type") != "null" for v in variants)


def test_a_backfill_window_is_judged_against_itself_and_the_clock(served: ServedApp) -> None:
    # No schema can say that `until` comes after `since`, or that `since` is within the
    # retention of now: both are well-formed times, refused with 422 naming the field.
    url = served.base_url + "/v1/subscribers/sub_missing/backfill"
    for body, field in (
        ({"since": "2000-01-01T00:00:00Z", "until": "2000-01-02T00:00:00Z"}, "since"),
        ({"since": "2999-01-02T00:00:00Z", "until": "2999-01-01T00:00:00Z"}, "until"),
    ):
        response = requests.post(
            url, json=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
        )
        assert response.status_code == 422
        assert field in [e["extensions"]["field"] for e in response.json()["errors"]]


def test_over_long_request_line_status_is_documented(
    served: ServedApp, document: dict[str, Any]
) -> None:
    response = requests.get(
        served.base_url + "/v1/catalog/endpoints",
        params={"method": "GET", "path": "/" + "\U0001f600" * 2047},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )
    assert response.status_code < 500
    documented = document["paths"]["/v1/catalog/endpoints"]["get"]["responses"]
    assert str(response.status_code) in documented


def test_binding_a_key_to_a_subscriber_that_does_not_exist_is_422(served: ServedApp) -> None:
    response = requests.post(
        served.base_url + "/v1/api-keys",
        json={"name": "portal", "scopes": ["read_events"], "subscriber_id": "sub_nobody"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["extensions"]["field"] == "subscriber_id"
