"""Payload filters through the router: the API (create, PATCH, refusals naming the path,
the OpenAPI document), fan-out that skips subscribers whose filter the payload fails, the
check again before every attempt, and `explain` naming the predicate that failed. On both
stores (the `redis` fixture)."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from redis.asyncio import Redis

from router.commands.subscribers import register as register_cli
from router.core.records import payload_of
from router.http.app import create_app
from router.pipeline import dispatch
from router.storage.ledger import Ledger
from tests.conftest import make_settings
from tests.receivers import Receiver
from tests.test_delivery import FAST, Router

URL = "https://example.com/hook"
OPPORTUNITIES = ["opportunities.readonly"]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as running:
        yield running


async def start(aiohttp_client: Any, redis: Redis, key_prefix: str, **overrides: Any) -> Router:
    settings = make_settings(key_prefix, **{**FAST, **overrides})
    return Router(await aiohttp_client(create_app(settings, redis=redis, run_workers=True)))


@pytest.fixture
async def api(aiohttp_client: Any, redis: Redis, key_prefix: str) -> Router:
    """The app without its workers: the API alone."""
    settings = make_settings(key_prefix)
    return Router(await aiohttp_client(create_app(settings, redis=redis)))


# ---------------------------------------------------------------------------------- API
async def test_a_filter_round_trips_through_create_get_and_patch(api: Router) -> None:
    document = {"pipelineId": "p1", "contact.tags": {"$contains": "vip"}}
    created = await api.subscribe(URL, OPPORTUNITIES, filter=document)
    assert created["filter"] == document
    path = f"/v1/subscribers/{created['id']}"
    assert (await api.call("GET", path))["filter"] == document
    changed = {"$or": [{"monetaryValue": {"$gte": 1000}}, {"status": {"$in": ["won"]}}]}
    assert (await api.call("PATCH", path, json={"filter": changed}))["filter"] == changed
    assert (await api.call("PATCH", path, json={"name": "renamed"}))["filter"] == changed
    assert (await api.call("PATCH", path, json={"filter": {}}))["filter"] is None
    await api.call("PATCH", path, json={"filter": changed})
    assert (await api.call("PATCH", path, json={"filter": None}))["filter"] is None


async def test_a_subscriber_without_a_filter_shows_null(api: Router) -> None:
    assert (await api.subscribe(URL, OPPORTUNITIES))["filter"] is None


async def test_an_invalid_filter_is_refused_naming_each_path(api: Router) -> None:
    bad = {
        "contact.tags": {"$in": "vip"},
        "pipelineId": {"$regex": "p.*"},
        "$or": [{"a": {"$gt": [1]}}],
    }
    resp = await api.client.post(
        "/v1/subscribers",
        json={"name": "app", "url": URL, "scopes": OPPORTUNITIES, "filter": bad},
        headers=api.admin,
    )
    assert resp.status == 422
    errors = (await resp.json())["errors"]
    assert [e["extensions"]["field"] for e in errors] == [
        "filter.contact.tags.$in",
        "filter.pipelineId.$regex",
        "filter.$or.0.a.$gt",
    ]
    assert errors[0]["message"] == "filter.contact.tags.$in: expected an array"
    assert {e["extensions"]["code"] for e in errors} == {"VALIDATION_FAILED"}
    created = await api.subscribe(URL, OPPORTUNITIES)
    resp = await api.client.patch(
        f"/v1/subscribers/{created['id']}", json={"filter": {"a..b": 1}}, headers=api.admin
    )
    assert resp.status == 422
    assert [e["extensions"]["field"] for e in (await resp.json())["errors"]] == ["filter.a..b"]
    assert (await api.call("GET", f"/v1/subscribers/{created['id']}"))["filter"] is None


async def test_the_openapi_document_describes_the_grammar(api: Router) -> None:
    document = await api.call("GET", "/openapi.json")
    schemas = document["components"]["schemas"]
    root = schemas["PayloadFilter"]
    assert "$exists" in root["description"] and "missing path" in root["description"]
    assert set(root["properties"]) == {"$and", "$or", "$not"}
    assert set(schemas["FilterOperators"]["properties"]) == {
        "$eq",
        "$ne",
        "$in",
        "$nin",
        "$exists",
        "$gt",
        "$gte",
        "$lt",
        "$lte",
        "$contains",
    }
    created = schemas["SubscriberCreate"]["properties"]["filter"]
    assert {"$ref": "#/components/schemas/PayloadFilter"} in created["anyOf"]
    # The deepest level combines nothing further.
    assert "properties" not in schemas["PayloadFilterLevel3"]


def test_the_cli_sends_the_filter_as_json() -> None:
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    common = ["--api-url", "http://router", "--name", "a", "--url", URL, "--scope", "x"]
    args = parser.parse_args(["subscribers", "add", *common, "--filter", '{"pipelineId": "p1"}'])
    assert args.filter == {"pipelineId": "p1"}
    cleared = parser.parse_args(["subscribers", "update", "sub_1", "--no-filter"])
    assert cleared.no_filter
    with pytest.raises(SystemExit):
        parser.parse_args(["subscribers", "add", *common, "--filter", '["pipelineId"]'])


# ------------------------------------------------------------------------------ routing
@pytest.fixture
def body_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Every event whose body the dispatcher reads (with its routing fields or alone) and
    every body it parses, as ("read", event id) and ("parsed", body)."""
    reads: list[tuple[str, Any]] = []
    routing_fields, event_bodies = Ledger.routing_fields, Ledger.event_bodies

    async def fields(self: Ledger, event_ids: Sequence[str], *, with_body: bool = False) -> Any:
        reads.extend(("read", e) for e in event_ids if with_body)
        return await routing_fields(self, event_ids, with_body=with_body)

    async def bodies(self: Ledger, event_ids: Sequence[str]) -> list[bytes | None]:
        reads.extend(("read", e) for e in event_ids)
        return await event_bodies(self, event_ids)

    def parsed(body: bytes | str | None) -> dict[str, Any] | None:
        reads.append(("parsed", body))
        return payload_of(body)

    monkeypatch.setattr(Ledger, "routing_fields", fields)
    monkeypatch.setattr(Ledger, "event_bodies", bodies)
    monkeypatch.setattr(dispatch, "payload_of", parsed)
    return reads


async def test_fan_out_skips_subscribers_whose_filter_the_payload_fails(
    aiohttp_client: Any,
    redis: Redis,
    key_prefix: str,
    receiver: Receiver,
    body_reads: list[tuple[str, Any]],
) -> None:
    router = await start(aiohttp_client, redis, key_prefix)
    everyone = await router.subscribe(receiver.url("/all"), OPPORTUNITIES)
    unfiltered = await router.publish("OpportunityCreate", pipelineId="p1")
    await router.dispatched(unfiltered, 1)
    assert body_reads == []  # no filter anywhere: no body read at fan-out

    p1 = await router.subscribe(receiver.url("/p1"), OPPORTUNITIES, filter={"pipelineId": "p1"})
    big = await router.subscribe(
        receiver.url("/big"),
        OPPORTUNITIES,
        filter={"$and": [{"monetaryValue": {"$gte": 1000}}, {"$not": {"status": "lost"}}]},
    )
    first = await router.publish("OpportunityCreate", pipelineId="p1", monetaryValue=10)
    second = await router.publish("OpportunityCreate", pipelineId="p2", monetaryValue=5000)
    third = await router.publish("OpportunityCreate", pipelineId="p2", status="lost")
    assert {d["subscriber_id"] for d in await router.dispatched(first, 2)} == {
        everyone["id"],
        p1["id"],
    }
    assert {d["subscriber_id"] for d in await router.dispatched(second, 2)} == {
        everyone["id"],
        big["id"],
    }
    assert [d["subscriber_id"] for d in await router.dispatched(third, 1)] == [everyone["id"]]
    await receiver.wait_for("/all", 4)
    await receiver.wait_for("/p1", 1)
    await receiver.wait_for("/big", 1)
    assert [len(receiver.requests(p)) for p in ("/p1", "/big")] == [1, 1]
    # Each event's body was read and parsed once, whatever the number of filters.
    assert sorted(e for kind, e in body_reads if kind == "read") == sorted([first, second, third])
    assert len([b for kind, b in body_reads if kind == "parsed"]) == 3


async def test_a_filter_changed_after_fan_out_stops_the_next_attempt(
    aiohttp_client: Any, redis: Redis, key_prefix: str, receiver: Receiver
) -> None:
    router = await start(aiohttp_client, redis, key_prefix, retry_schedule=(1.5, 1.5))
    receiver.program("/crm", then=500)
    sub = await router.subscribe(receiver.url("/crm"), OPPORTUNITIES, filter={"pipelineId": "p1"})
    event_id = await router.publish("OpportunityCreate", pipelineId="p1")
    delivery_id = await router.delivery_for(event_id, sub["id"])
    await router.settled(delivery_id, "failed")
    await router.call(
        "PATCH", f"/v1/subscribers/{sub['id']}", json={"filter": {"pipelineId": "p9"}}
    )
    delivery = await router.settled(delivery_id, "skipped")
    assert delivery["reason"] == 'filter: pipelineId $eq "p9" got "p1"'
    assert len(receiver.requests("/crm")) == 1


async def test_a_matching_filter_lets_retries_through(
    aiohttp_client: Any, redis: Redis, key_prefix: str, receiver: Receiver
) -> None:
    router = await start(aiohttp_client, redis, key_prefix)
    receiver.program("/crm", 500)
    sub = await router.subscribe(
        receiver.url("/crm"), OPPORTUNITIES, filter={"pipelineId": {"$in": ["p1", "p2"]}}
    )
    event_id = await router.publish("OpportunityCreate", pipelineId="p2")
    delivery = await router.settled(await router.delivery_for(event_id, sub["id"]), "succeeded")
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 200]


# ------------------------------------------------------------------------------ explain
async def test_explain_names_the_predicate_that_failed(api: Router) -> None:
    sub = await api.subscribe(URL, OPPORTUNITIES, filter={"pipelineId": "p1"})
    path = f"/v1/subscribers/{sub['id']}/explain"

    async def explain(payload: dict[str, Any] | None) -> dict[str, Any]:
        body: dict[str, Any] = {"event": "OpportunityCreate"}
        if payload is not None:
            body["payload"] = payload
        return await api.call("POST", path, json=body)

    refused = await explain({"pipelineId": "p2"})
    assert refused["entitled"] is False
    assert refused["reasons"] == ['filter: pipelineId $eq "p1" got "p2"']
    assert (await explain({}))["reasons"] == ['filter: pipelineId $eq "p1" got nothing']
    entitled = await explain({"pipelineId": "p1"})
    assert entitled["entitled"] is True and entitled["reasons"] == []
    unchecked = await api.call("GET", path, params={"event": "OpportunityCreate"})
    assert unchecked["reasons"] == ["filter: no payload to check it against"]
    assert (await explain(None))["entitled"] is False
    await api.call(
        "POST", path, 422, json={"event": "NoSuchEvent", "payload": {"pipelineId": "p1"}}
    )


async def test_explain_lists_the_filter_after_the_other_reasons(api: Router) -> None:
    sub = await api.subscribe(URL, ["contacts.readonly"], filter={"pipelineId": "p1"})
    verdict = await api.call(
        "POST",
        f"/v1/subscribers/{sub['id']}/explain",
        json={"event": "OpportunityCreate", "payload": {"pipelineId": 7}},
    )
    assert verdict["reasons"] == [
        "missing scope opportunities.readonly",
        'filter: pipelineId $eq "p1" got 7',
    ]
