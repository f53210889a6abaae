"""Operational events (issue 18, part 3): the router's own `router.*` events, routed to the
subscribers granted `router.operations`, delivered like any other event, and never about the
delivery of another operational event.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from router.core.metrics import Metrics
from router.http.app import create_app
from router.http.context import LEDGER, METRICS, REFUSALS
from router.http.verification import IngestState, Refusal, RefusalMonitor
from router.pipeline.operational import OperationalEvents
from router.storage.client import CommandRunner
from subscriptions.catalog import (
    ROUTER_EVENTS,
    ROUTER_SCOPE,
    Catalog,
    CatalogData,
    CatalogError,
    load_catalog,
)
from tests.conftest import make_ledger, make_settings
from tests.payloads import LOCATION_ID, encode, platform_event
from tests.receivers import Receiver, verify_signature
from tests.test_delivery import FAST, Router, until


@pytest.fixture
async def receiver() -> Any:
    async with Receiver() as running:
        yield running


async def start(aiohttp_client: Any, redis: Redis, key_prefix: str, **overrides: Any) -> Router:
    settings = make_settings(key_prefix, **{**FAST, **overrides})
    return Router(await aiohttp_client(create_app(settings, redis=redis, run_workers=True)))


def emitted(router: Router, event: str, outcome: str = "emitted") -> float:
    app = router.client.app
    assert app is not None
    value = app[METRICS].registry.get_sample_value(
        "router_operational_events_total", {"event": event, "outcome": outcome}
    )
    return value or 0.0


def payloads(hits: list[Any]) -> dict[str, dict[str, Any]]:
    """The operational events received, by type (each received once)."""
    by_type = {hit.header("X-Router-Event"): json.loads(hit.body) for hit in hits}
    assert len(by_type) == len(hits), [h.header("X-Router-Event") for h in hits]
    return by_type


# ---------------------------------------------------------------- the router's scope


def test_the_router_scope_is_added_beside_the_platforms_and_kept_out_of_its_data() -> None:
    platform = load_catalog()
    catalog = platform.with_router_scope()
    assert catalog.with_router_scope() is catalog
    for event in ROUTER_EVENTS:
        assert catalog.required_scope(event) == ROUTER_SCOPE
        assert platform.required_scope(event) is None
    assert catalog.to_data() == platform.to_data()
    assert [s.name for s in catalog.router_scopes()] == [ROUTER_SCOPE]
    with pytest.raises(CatalogError, match="router's own scope"):
        catalog.with_overlay({"events": {"SomethingNew": ROUTER_SCOPE}})
    kept = catalog.with_overlay({"events": {"SomethingNew": "contacts.readonly"}})
    assert kept.required_scope("router.delivery.dead") == ROUTER_SCOPE
    assert kept.to_data()["scopes"] == kept.with_overlay({}).to_data()["scopes"]


def test_a_platform_catalog_may_not_take_the_routers_names() -> None:
    data = load_catalog().to_data()
    data["scopes"][0]["events"].append("router.breaker.opened")
    with pytest.raises(CatalogError, match=r"router\.breaker\.opened"):
        Catalog(CatalogData.model_validate(data)).with_router_scope()


async def test_catalog_lists_the_router_scope_as_the_routers(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    body = await (await client.get("/v1/catalog", headers=admin_headers)).json()
    assert ROUTER_SCOPE not in [s["name"] for s in body["scopes"]]
    (router_scope,) = body["router_scopes"]
    assert router_scope["name"] == ROUTER_SCOPE
    assert router_scope["events"] == list(ROUTER_EVENTS)
    one = await client.get("/v1/catalog/events/router.breaker.opened", headers=admin_headers)
    assert (await one.json())["scope"] == ROUTER_SCOPE
    sub = {"name": "ops", "url": "http://127.0.0.1:9/ops", "scopes": [ROUTER_SCOPE]}
    resp = await client.post("/v1/subscribers", json=sub, headers=admin_headers)
    assert resp.status == 201, await resp.text()


@pytest.mark.parametrize(
    ("path", "field"),
    [("/webhooks", "type"), ("/webhooks/router.delivery.dead", "event_type")],
)
async def test_nobody_may_post_the_routers_own_events(
    client: TestClient, path: str, field: str
) -> None:
    body = encode({"type": "router.delivery.dead", "subscriber_id": "sub_x", "reason": "forged"})
    resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 422
    (error,) = (await resp.json())["errors"]
    assert error["extensions"]["field"] == field


# ---------------------------------------------------------------- delivered like any event


async def test_a_410_tells_operations_of_the_dead_delivery_and_the_disabled_subscriber(
    aiohttp_client: Any, redis: Redis, key_prefix: str, receiver: Receiver
) -> None:
    router = await start(aiohttp_client, redis, key_prefix, partitions=2)
    ops = await router.subscribe(receiver.url("/ops"), [ROUTER_SCOPE])
    bound = await router.subscribe(
        receiver.url("/tenant-ops"), [ROUTER_SCOPE], location_ids=[LOCATION_ID]
    )
    receiver.program("/gone", then=410)
    gone = await router.subscribe(receiver.url("/gone"), ["contacts.readonly"])
    event_id = await router.publish("ContactCreate")

    hits = await receiver.wait_for("/ops", 2)
    for hit in hits:
        verify_signature(ops["secret"], hit)
    got = payloads(hits)
    dead = got["router.delivery.dead"]
    assert dead["subscriber_id"] == gone["id"]
    assert dead["event_id"] == event_id
    assert dead["event"] == "ContactCreate"
    assert dead["counts"] == {"attempts": 1}
    assert "410" in dead["reason"]
    disabled = got["router.subscriber.disabled"]
    assert disabled["subscriber_id"] == gone["id"]
    assert disabled["status"] == "disabled"
    # Tenant-less: a tenant-bound subscriber never hears about other subscribers.
    verdict = await router.call(
        "GET",
        f"/v1/subscribers/{bound['id']}/explain",
        params={"event": "router.delivery.dead"},
    )
    assert verdict["entitled"] is False
    assert receiver.requests("/tenant-ops") == []


async def test_a_breaker_opening_and_closing_is_announced(
    aiohttp_client: Any, redis: Redis, key_prefix: str, receiver: Receiver
) -> None:
    router = await start(
        aiohttp_client,
        redis,
        key_prefix,
        retry_schedule=(0.1,) * 4,
        breaker_threshold=2,
        breaker_probe_interval=0.3,
    )
    await router.subscribe(receiver.url("/ops"), [ROUTER_SCOPE])
    receiver.program("/flaky", 500, 503)
    flaky = await router.subscribe(receiver.url("/flaky"), ["contacts.readonly"])
    await router.publish("ContactCreate")

    got = payloads(await receiver.wait_for("/ops", 2))
    opened = got["router.breaker.opened"]
    assert opened["subscriber_id"] == flaky["id"]
    assert opened["counts"] == {"failures": 2}
    assert "HTTP 503" in opened["reason"]
    assert got["router.breaker.closed"]["subscriber_id"] == flaky["id"]
    await asyncio.sleep(0.3)
    assert len(receiver.requests("/ops")) == 2


async def test_an_operator_pausing_a_subscriber_is_announced_once(
    aiohttp_client: Any, redis: Redis, key_prefix: str, receiver: Receiver
) -> None:
    router = await start(aiohttp_client, redis, key_prefix)
    await router.subscribe(receiver.url("/ops"), [ROUTER_SCOPE])
    app = await router.subscribe(receiver.url("/app"), ["contacts.readonly"])
    for _ in range(2):
        await router.call("PATCH", f"/v1/subscribers/{app['id']}", json={"status": "paused"})

    (hit,) = await receiver.wait_for("/ops", 1)
    body = json.loads(hit.body)
    assert body["type"] == "router.subscriber.disabled"
    assert (body["subscriber_id"], body["status"]) == (app["id"], "paused")
    await asyncio.sleep(0.3)
    assert len(receiver.requests("/ops")) == 1


async def test_operational_deliveries_breed_no_operational_events(
    aiohttp_client: Any, redis: Redis, key_prefix: str, receiver: Receiver
) -> None:
    # The only receiver of operational events fails everything: its deliveries die and its
    # breaker opens, and none of that may be announced (to it, failing again, and so on).
    router = await start(
        aiohttp_client,
        redis,
        key_prefix,
        retry_schedule=(0.1,),
        breaker_threshold=2,
        breaker_probe_interval=0.2,
    )
    receiver.program("/ops", then=500)
    ops = await router.subscribe(receiver.url("/ops"), [ROUTER_SCOPE])
    receiver.program("/app", then=500)
    await router.subscribe(receiver.url("/app"), ["contacts.readonly"])
    await router.publish("ContactCreate")

    hits = await receiver.wait_for("/ops", 4)  # two events, two attempts each
    assert {h.header("X-Router-Event") for h in hits} == {
        "router.delivery.dead",
        "router.breaker.opened",
    }
    dead = await until(
        lambda: router.deliveries(subscriber_id=ops["id"]),
        lambda page: len(page["items"]) == 2 and all(d["status"] == "dead" for d in page["items"]),
    )
    assert len(dead["items"]) == 2
    breaker = await redis.hgetall(router.client.app[LEDGER].keys.breaker(ops["id"]))
    assert int(breaker[b"failures"]) >= 2  # its breaker did open, unannounced
    await asyncio.sleep(0.5)
    assert emitted(router, "router.delivery.dead") == 1
    assert emitted(router, "router.breaker.opened") == 1
    assert len(receiver.requests("/ops")) == 4


async def test_refused_ingest_is_announced_as_verification_failing(
    aiohttp_client: Any, redis: Redis, key_prefix: str, receiver: Receiver
) -> None:
    router = await start(
        aiohttp_client,
        redis,
        key_prefix,
        verify="standard",
        ingest_secret="whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    )
    app = router.client.app
    assert app is not None
    app[REFUSALS].check_every = 0  # judge at every refusal, not once a second
    ops = await router.subscribe(receiver.url("/ops"), [ROUTER_SCOPE])
    for _ in range(RefusalMonitor.MIN_REFUSED + 2):
        resp = await router.client.post(
            "/webhooks",
            data=encode(platform_event("ContactCreate")),
            headers={"Content-Type": "application/json"},
        )
        assert resp.status == 401

    (hit,) = await receiver.wait_for("/ops", 1)
    verify_signature(ops["secret"], hit)
    body = json.loads(hit.body)
    assert body["type"] == "router.verification.failing"
    assert body["subscriber_id"] is None
    assert body["counts"]["refused"] == RefusalMonitor.MIN_REFUSED
    assert body["counts"]["signature_missing"] == RefusalMonitor.MIN_REFUSED
    await asyncio.sleep(0.3)  # once a window, not once a refusal
    assert len(receiver.requests("/ops")) == 1


# ---------------------------------------------------------------- emission


def test_the_monitor_calls_on_failing_once_a_window_while_failing() -> None:
    alerts: list[IngestState] = []
    monitor = RefusalMonitor(window=60, on_failing=alerts.append, check_every=0)
    for _ in range(RefusalMonitor.MIN_REFUSED - 1):
        monitor.refused(Refusal("signature_invalid", "bad"))
    assert alerts == []
    for _ in range(10):
        monitor.refused(Refusal("signature_invalid", "bad"))
    assert len(alerts) == 1
    assert alerts[0].refused == RefusalMonitor.MIN_REFUSED


async def test_an_event_waits_out_a_brief_outage_and_is_stored(
    redis: Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = make_ledger(redis, key_prefix)
    metrics = Metrics()
    events = OperationalEvents(ledger, metrics)
    accept = ledger.accept
    outage = 2

    async def flaky(incoming: Any) -> Any:
        nonlocal outage
        if outage:
            outage -= 1
            raise ConnectionError("Redis is down")
        return await accept(incoming)

    monkeypatch.setattr(ledger, "accept", flaky)
    events.emit("router.breaker.closed", subscriber_id="sub_x", reason="an attempt succeeded")
    await events.close(timeout=5)
    sample = metrics.registry.get_sample_value(
        "router_operational_events_total",
        {"event": "router.breaker.closed", "outcome": "emitted"},
    )
    assert sample == 1
    stream = await CommandRunner(redis).one(("XLEN", ledger.keys.events_stream(0)))
    assert stream == 1


async def test_an_event_is_dropped_loudly_when_redis_stays_away(
    redis: Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    ledger = make_ledger(redis, key_prefix)
    metrics = Metrics()
    events = OperationalEvents(ledger, metrics, give_up_after=0.3, max_queued=2)

    async def down(incoming: Any) -> Any:
        raise ConnectionError("Redis is down")

    monkeypatch.setattr(ledger, "accept", down)
    for _ in range(3):  # the third finds the queue full
        events.emit("router.delivery.dead", subscriber_id="sub_x", reason="gave up")
    await events.close(timeout=5)
    sample = metrics.registry.get_sample_value(
        "router_operational_events_total",
        {"event": "router.delivery.dead", "outcome": "dropped"},
    )
    assert sample == 3
    assert caplog.text.count("operational event router.delivery.dead dropped") == 3
    with pytest.raises(ValueError, match="not one of the router's events"):
        events.emit("ContactCreate", reason="not ours")
