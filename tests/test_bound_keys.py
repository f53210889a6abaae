"""Subscriber-bound API keys (issue 17, part 1) and `GET /v1/whoami`.

A key bound to subscriber A sees and acts on A alone: its record (secret masked), its
deliveries and attempts, `explain`, replay, rotating its own secret. Every other subscriber's
data is 404, with the same body as data that does not exist; operations that would change
what A is entitled to, or touch the registry, are refused. The exhaustive walk of every
route is `test_bound_keys_property.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from router.core.records import DeliveryStatus
from router.core.scopes import OPERATOR_SCOPES
from router.http.context import KEYRING, LEDGER
from router.http.openapi import build_openapi
from router.http.routes import RESOURCES
from tests.conftest import ADMIN_TOKEN
from tests.history_data import delivery_of, incoming, settle, store_event

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
EVERY_SCOPE = list(OPERATOR_SCOPES)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Side:
    """One subscriber's share of the world: its record, a bound key, its events."""

    id: str
    url: str
    secret: str
    headers: dict[str, str]
    key_id: str
    own_event: str  # has a delivery to this subscriber only
    dead: str  # a dead delivery (of the shared event)
    succeeded: str  # a succeeded delivery (of its own event)


@dataclass
class World:
    a: Side
    b: Side
    shared_event: str  # has a delivery to both


async def new_subscriber(client: TestClient, name: str) -> dict[str, Any]:
    resp = await client.post(
        "/v1/subscribers",
        json={
            "name": name,
            "url": f"https://{name}.example.com/hook-{name}",
            "scopes": ["contacts.readonly"],
        },
        headers=ADMIN,
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def bound_key(
    client: TestClient,
    subscriber_id: str | None,
    scopes: list[str] = EVERY_SCOPE,
    headers: dict[str, str] = ADMIN,
) -> Any:
    body: dict[str, Any] = {"name": "portal", "scopes": scopes}
    if subscriber_id is not None:
        body["subscriber_id"] = subscriber_id
    return await client.post("/v1/api-keys", json=body, headers=headers)


async def build_world(app: web.Application, client: TestClient) -> World:
    """Subscribers A and B, each with a bound key holding every scope; an event delivered to
    both (A's delivery and B's both dead), and one to each alone (succeeded)."""
    subs = [await new_subscriber(client, name) for name in ("alpha", "bravo")]
    ledger = app[LEDGER]
    shared = await store_event(ledger, incoming(), [s["id"] for s in subs])
    own = [await store_event(ledger, incoming(), [s["id"]]) for s in subs]
    outcomes = {delivery_of(shared, s["id"]): DeliveryStatus.dead for s in subs}
    outcomes |= {
        delivery_of(e, s["id"]): DeliveryStatus.succeeded for e, s in zip(own, subs, strict=True)
    }
    await settle(ledger, outcomes)
    sides = []
    for sub, event in zip(subs, own, strict=True):
        key = await (await bound_key(client, sub["id"])).json()
        sides.append(
            Side(
                id=sub["id"],
                url=sub["url"],
                secret=sub["secret"],
                headers=bearer(key["token"]),
                key_id=key["id"],
                own_event=event,
                dead=delivery_of(shared, sub["id"]),
                succeeded=delivery_of(event, sub["id"]),
            )
        )
    return World(a=sides[0], b=sides[1], shared_event=shared)


@pytest.fixture
async def world(app: web.Application, client: TestClient) -> World:
    return await build_world(app, client)


# --- minting ---


async def test_a_bound_key_is_created_bound_and_its_token_carries_the_binding(
    app: web.Application, client: TestClient
) -> None:
    sub = await new_subscriber(client, "alpha")
    resp = await bound_key(client, sub["id"], ["read_deliveries"])
    assert resp.status == 201
    created = await resp.json()
    assert created["subscriber_id"] == sub["id"]
    principal = await app[KEYRING].principal_for_token(created["token"])
    assert principal is not None and principal.subscriber_id == sub["id"]
    shown = await (await client.get(f"/v1/api-keys/{created['id']}", headers=ADMIN)).json()
    assert shown["subscriber_id"] == sub["id"]


async def test_binding_to_a_subscriber_that_does_not_exist_is_422_naming_subscriber_id(
    client: TestClient,
) -> None:
    resp = await bound_key(client, "sub_nobody")
    assert resp.status == 422
    [item] = (await resp.json())["errors"]
    assert item["extensions"]["field"] == "subscriber_id"
    listing = await (await client.get("/v1/api-keys", headers=ADMIN)).json()
    assert listing["items"] == []


@pytest.mark.parametrize("target", ["other", "none", "missing"])
async def test_a_bound_key_cannot_mint_for_another_subscriber_or_unbound(
    client: TestClient, world: World, target: str
) -> None:
    subscriber_id = {"other": world.b.id, "none": None, "missing": "sub_nobody"}[target]
    resp = await bound_key(client, subscriber_id, headers=world.a.headers)
    assert resp.status == 422
    [item] = (await resp.json())["errors"]
    assert item["extensions"]["field"] == "subscriber_id"
    listing = await (await client.get("/v1/api-keys", headers=ADMIN)).json()
    assert len(listing["items"]) == 2  # the world's two keys, nothing minted


async def test_a_bound_key_refused_for_another_subscriber_learns_nothing_of_it(
    client: TestClient, world: World
) -> None:
    other = await bound_key(client, world.b.id, headers=world.a.headers)
    missing = await bound_key(client, "sub_nobody", headers=world.a.headers)
    assert (await other.json())["errors"][0]["message"].replace(world.b.id, "X") == (
        await missing.json()
    )["errors"][0]["message"].replace("sub_nobody", "X")


async def test_a_bound_key_may_mint_for_its_own_subscriber_within_its_scopes(
    client: TestClient, world: World
) -> None:
    resp = await bound_key(client, world.a.id, ["read_deliveries"], headers=world.a.headers)
    assert resp.status == 201
    assert (await resp.json())["subscriber_id"] == world.a.id


async def test_a_bound_key_without_write_api_keys_cannot_mint(
    client: TestClient, world: World
) -> None:
    weak = await (await bound_key(client, world.a.id, ["read_deliveries"])).json()
    resp = await bound_key(client, world.a.id, ["read_deliveries"], headers=bearer(weak["token"]))
    assert resp.status == 403
    assert (await resp.json())["errors"][0]["extensions"]["requiredScope"] == "write_api_keys"


async def test_a_bound_key_sees_and_manages_only_its_subscribers_keys(
    client: TestClient, world: World
) -> None:
    _, operator = await _operator_key(client)
    listing = await (await client.get("/v1/api-keys", headers=world.a.headers)).json()
    assert [k["id"] for k in listing["items"]] == [world.a.key_id]
    for key_id in (world.b.key_id, operator):
        for method, path in (
            ("GET", f"/v1/api-keys/{key_id}"),
            ("PATCH", f"/v1/api-keys/{key_id}"),
            ("POST", f"/v1/api-keys/{key_id}/regenerate"),
            ("DELETE", f"/v1/api-keys/{key_id}"),
        ):
            body = {"scopes": ["read_events"]} if method == "PATCH" else None
            resp = await client.request(method, path, json=body, headers=world.a.headers)
            assert resp.status == 404, (method, path)
    assert (await client.get(f"/v1/api-keys/{world.b.key_id}", headers=ADMIN)).status == 200


async def _operator_key(client: TestClient) -> tuple[str, str]:
    created = await (await bound_key(client, None, ["read_events"])).json()
    return created["token"], created["id"]


# --- whoami ---


async def test_whoami_names_the_admin_token(client: TestClient) -> None:
    resp = await client.get("/v1/whoami", headers=ADMIN)
    assert resp.status == 200
    assert await resp.json() == {"name": "admin", "scopes": EVERY_SCOPE, "subscriber_id": None}


async def test_whoami_names_an_operator_key_with_any_scope(client: TestClient) -> None:
    token, _ = await _operator_key(client)
    resp = await client.get("/v1/whoami", headers=bearer(token))
    assert await resp.json() == {"name": "portal", "scopes": ["read_events"], "subscriber_id": None}


async def test_whoami_names_a_bound_keys_subscriber(client: TestClient, world: World) -> None:
    resp = await client.get("/v1/whoami", headers=world.a.headers)
    assert await resp.json() == {
        "name": "portal",
        "scopes": EVERY_SCOPE,
        "subscriber_id": world.a.id,
    }


async def test_whoami_without_a_live_token_is_401(client: TestClient) -> None:
    assert (await client.get("/v1/whoami")).status == 401
    assert (await client.get("/v1/whoami", headers=bearer("wrk_nope"))).status == 401


# --- what a bound key sees ---


async def test_a_bound_key_reads_its_own_subscriber_with_the_secret_masked(
    client: TestClient, world: World
) -> None:
    resp = await client.get(f"/v1/subscribers/{world.a.id}", headers=world.a.headers)
    assert resp.status == 200
    text = await resp.text()
    assert world.a.id in text and world.a.secret not in text


async def test_another_subscriber_is_404_exactly_like_one_that_does_not_exist(
    client: TestClient, world: World
) -> None:
    for suffix in ("", "/explain?event=ContactCreate", "/secret/rotate", "/replay"):
        method = "GET" if suffix in ("", "/explain?event=ContactCreate") else "POST"
        other = await client.request(
            method, f"/v1/subscribers/{world.b.id}{suffix}", headers=world.a.headers
        )
        missing = await client.request(
            method, f"/v1/subscribers/sub_nobody{suffix}", headers=world.a.headers
        )
        assert other.status == missing.status == 404, suffix
        assert await other.read() == await missing.read()


async def test_the_subscriber_listing_holds_only_its_own(client: TestClient, world: World) -> None:
    listing = await (await client.get("/v1/subscribers", headers=world.a.headers)).json()
    assert [s["id"] for s in listing["items"]] == [world.a.id]
    paused = await client.get("/v1/subscribers?status=paused", headers=world.a.headers)
    assert (await paused.json())["items"] == []


async def test_deliveries_are_its_own_only(client: TestClient, world: World) -> None:
    listing = await (await client.get("/v1/deliveries", headers=world.a.headers)).json()
    assert {d["id"] for d in listing["items"]} == {world.a.dead, world.a.succeeded}
    asked = await client.get(f"/v1/deliveries?subscriber_id={world.b.id}", headers=world.a.headers)
    assert (await asked.json())["items"] == []
    own = await (await client.get(f"/v1/deliveries/{world.a.dead}", headers=world.a.headers)).json()
    assert own["attempts"][0]["response_body"] == f"answer of {world.a.id}"
    for path in (f"/v1/deliveries/{world.b.dead}", f"/v1/deliveries/{world.b.dead}/retry"):
        method = "GET" if path.endswith(world.b.dead) else "POST"
        assert (await client.request(method, path, headers=world.a.headers)).status == 404


async def test_events_are_those_delivered_to_it_with_only_its_deliveries(
    client: TestClient, world: World
) -> None:
    listing = await (await client.get("/v1/events", headers=world.a.headers)).json()
    assert [e["id"] for e in listing["items"]] == [world.a.own_event, world.shared_event]
    shared = await client.get(f"/v1/events/{world.shared_event}", headers=world.a.headers)
    assert [d["id"] for d in (await shared.json())["deliveries"]] == [world.a.dead]
    other = await client.get(f"/v1/events/{world.b.own_event}", headers=world.a.headers)
    missing = await client.get("/v1/events/evt_nope", headers=world.a.headers)
    assert other.status == missing.status == 404
    admin = await (await client.get(f"/v1/events/{world.shared_event}", headers=ADMIN)).json()
    assert {d["id"] for d in admin["deliveries"]} == {world.a.dead, world.b.dead}


async def test_it_replays_its_dead_retries_and_rotates_its_own_secret(
    client: TestClient, world: World
) -> None:
    resp = await client.post(f"/v1/subscribers/{world.a.id}/replay", headers=world.a.headers)
    assert await resp.json() == {"requeued": 1}
    retry = await client.post(f"/v1/deliveries/{world.a.succeeded}/retry", headers=world.a.headers)
    assert retry.status == 202
    rotated = await client.post(
        f"/v1/subscribers/{world.a.id}/secret/rotate", headers=world.a.headers
    )
    assert rotated.status == 200
    assert (await rotated.json())["secret"] != world.a.secret
    explained = await client.get(
        f"/v1/subscribers/{world.a.id}/explain?event=ContactCreate", headers=world.a.headers
    )
    assert explained.status == 200
    b_dead = await (await client.get(f"/v1/deliveries/{world.b.dead}", headers=ADMIN)).json()
    assert b_dead["status"] == "dead"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/subscribers", {"name": "x", "url": "https://x.example/h", "scopes": ["x"]}),
        ("PATCH", "/v1/subscribers/{a}", {"status": "paused"}),
        ("DELETE", "/v1/subscribers/{a}", None),
        ("POST", "/v1/subscribers/{a}/grants", {"add": ["contacts.write"]}),
    ],
)
async def test_it_cannot_change_the_registry_even_for_its_own_subscriber(
    client: TestClient, world: World, method: str, path: str, body: dict[str, Any] | None
) -> None:
    resp = await client.request(
        method, path.format(a=world.a.id), json=body, headers=world.a.headers
    )
    assert resp.status == 403
    assert (await resp.json())["errors"][0]["extensions"]["code"] == "SUBSCRIBER_BOUND"
    after = await (await client.get(f"/v1/subscribers/{world.a.id}", headers=ADMIN)).json()
    assert after["status"] == "active" and after["scopes"] == ["contacts.readonly"]


async def test_the_catalog_is_open_to_it(client: TestClient, world: World) -> None:
    assert (await client.get("/v1/catalog", headers=world.a.headers)).status == 200


# --- the declaration ---


def test_every_token_operation_states_what_a_bound_key_may_do() -> None:
    document = build_openapi(RESOURCES)
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if operation["security"]:
                assert operation["x-subscriber-bound-key"] in (
                    "deny",
                    "subscriber_path",
                    "filter",
                    "open",
                ), (method, path)
                if operation["x-subscriber-bound-key"] == "subscriber_path":
                    assert "{subscriber_id}" in path


def test_operations_default_to_refusing_a_bound_key() -> None:
    denied = {(op.method, op.path) for r in RESOURCES for op in r.operations if op.bound == "deny"}
    assert ("POST", "/v1/subscribers") in denied
    assert ("PATCH", "/v1/subscribers/{subscriber_id}") in denied
