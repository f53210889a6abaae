"""Operator API keys: the HTTP contract, and the rule that a token keeps its issued scopes."""

from __future__ import annotations

import asyncio
import hashlib
import re

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from router.http.context import KEYRING
from router.storage.keys import RouterKeys
from subscriptions.ids import parse_rfc3339
from subscriptions.keys import key_pattern

SUBSCRIBER = {"name": "app", "url": "https://example.com/hook", "scopes": ["contacts.readonly"]}
READ_SCOPES = ("read_subscribers", "read_deliveries", "read_events", "read_catalog")
TOKEN_FORMAT = re.compile(r"^wrk_[A-Za-z0-9_-]{43}$")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create_key(
    client: TestClient, admin_headers: dict[str, str], *scopes: str, name: str = "ci"
) -> dict:
    resp = await client.post(
        "/v1/api-keys", json={"name": name, "scopes": list(scopes)}, headers=admin_headers
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def can_write_subscribers(client: TestClient, token: str) -> int:
    """The status of a subscriber write with `token` (201 allowed, 403 refused, 401 dead)."""
    resp = await client.post("/v1/subscribers", json=SUBSCRIBER, headers=bearer(token))
    return resp.status


async def can_read_subscribers(client: TestClient, token: str) -> int:
    resp = await client.get("/v1/subscribers", headers=bearer(token))
    return resp.status


async def set_scopes(
    client: TestClient, admin_headers: dict[str, str], key_id: str, *scopes: str
) -> dict:
    resp = await client.patch(
        f"/v1/api-keys/{key_id}", json={"scopes": list(scopes)}, headers=admin_headers
    )
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def regenerate(client: TestClient, admin_headers: dict[str, str], key_id: str) -> dict:
    resp = await client.post(f"/v1/api-keys/{key_id}/regenerate", headers=admin_headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def errors_of(resp: ClientResponse) -> list[dict]:
    return (await resp.json())["errors"]


# --- create ---


async def test_create_returns_the_key_and_its_token_once(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await create_key(client, admin_headers, "read_subscribers", name="deploy bot")
    assert set(created) == {"id", "name", "scopes", "token", "created_at", "subscriber_id"}
    assert created["id"].startswith("key_")
    assert created["name"] == "deploy bot"
    assert created["scopes"] == ["read_subscribers"]
    assert TOKEN_FORMAT.match(created["token"])
    assert created["created_at"].endswith("Z")
    parse_rfc3339(created["created_at"])


async def test_created_token_holds_exactly_its_scopes(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    token = (await create_key(client, admin_headers, "read_subscribers"))["token"]
    assert await can_read_subscribers(client, token) == 200
    assert await can_write_subscribers(client, token) == 403


async def test_each_key_gets_a_different_token(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    first = await create_key(client, admin_headers, "read_subscribers")
    second = await create_key(client, admin_headers, "read_subscribers")
    assert first["token"] != second["token"]


async def test_duplicate_scopes_are_stored_once(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await create_key(client, admin_headers, "read_events", "read_catalog", "read_events")
    assert created["scopes"] == ["read_events", "read_catalog"]


async def test_token_is_stored_only_as_its_hash(
    client: TestClient, admin_headers: dict[str, str], redis: Redis, key_prefix: str
) -> None:
    token = (await create_key(client, admin_headers, "read_subscribers"))["token"]
    needle = token.encode()
    stored: list[bytes] = []
    async for key in redis.scan_iter(match=key_pattern(key_prefix)):
        stored.append(key)
        kind = (await redis.type(key)).decode()
        if kind == "string":
            stored.append(await redis.get(key))
        elif kind == "hash":
            for field, value in (await redis.hgetall(key)).items():
                stored += [field, value]
        elif kind == "zset":
            stored += await redis.zrange(key, 0, -1)
        elif kind == "set":
            stored += list(await redis.smembers(key))
        elif kind == "list":
            stored += await redis.lrange(key, 0, -1)
        else:
            pytest.fail(f"unexpected {kind} key {key!r}")
    assert stored, "the key was stored somewhere"
    assert not [item for item in stored if needle in item]
    assert RouterKeys(key_prefix).token(hashlib.sha256(needle).hexdigest()).encode() in stored


# --- validation ---


async def test_unknown_operator_scope_is_422_naming_it(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    resp = await client.post(
        "/v1/api-keys",
        json={"name": "x", "scopes": ["read_everything", "read_subscribers"]},
        headers=admin_headers,
    )
    assert resp.status == 422
    [error] = await errors_of(resp)
    assert error["extensions"] == {"code": "VALIDATION_FAILED", "field": "scopes.0"}
    assert "read_everything" in error["message"]


async def test_empty_scope_list_is_422(client: TestClient, admin_headers: dict[str, str]) -> None:
    resp = await client.post(
        "/v1/api-keys", json={"name": "x", "scopes": []}, headers=admin_headers
    )
    assert resp.status == 422
    assert [e["extensions"]["field"] for e in await errors_of(resp)] == ["scopes"]


@pytest.mark.parametrize("name", ["", "   ", "n" * 201])
async def test_name_must_be_1_to_200_characters(
    client: TestClient, admin_headers: dict[str, str], name: str
) -> None:
    resp = await client.post(
        "/v1/api-keys", json={"name": name, "scopes": ["read_events"]}, headers=admin_headers
    )
    assert resp.status == 422
    assert [e["extensions"]["field"] for e in await errors_of(resp)] == ["name"]


async def test_unknown_field_is_422_naming_it(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    resp = await client.post(
        "/v1/api-keys",
        json={"name": "x", "scopes": ["read_events"], "token": "wrk_mine"},
        headers=admin_headers,
    )
    assert resp.status == 422
    assert [e["extensions"]["field"] for e in await errors_of(resp)] == ["token"]


async def test_patch_with_unknown_scope_is_422_and_changes_nothing(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await create_key(client, admin_headers, "read_events")
    resp = await client.patch(
        f"/v1/api-keys/{created['id']}", json={"scopes": ["admin"]}, headers=admin_headers
    )
    assert resp.status == 422
    shown = await (await client.get(f"/v1/api-keys/{created['id']}", headers=admin_headers)).json()
    assert shown["scopes"] == ["read_events"]


# --- read ---


async def test_get_shows_scopes_and_token_scopes_but_no_token(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await create_key(client, admin_headers, "read_events", name="reader")
    resp = await client.get(f"/v1/api-keys/{created['id']}", headers=admin_headers)
    assert resp.status == 200
    shown = await resp.json()
    assert shown == {
        "id": created["id"],
        "name": "reader",
        "subscriber_id": None,
        "scopes": ["read_events"],
        "token_scopes": ["read_events"],
        "created_at": created["created_at"],
        "updated_at": created["created_at"],
    }


async def test_list_pages_through_keys_in_creation_order_without_tokens(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    ids = [(await create_key(client, admin_headers, "read_events"))["id"] for _ in range(3)]
    first = await (await client.get("/v1/api-keys?limit=2", headers=admin_headers)).json()
    assert [item["id"] for item in first["items"]] == ids[:2]
    assert first["next_cursor"] is not None
    second = await (
        await client.get(
            f"/v1/api-keys?limit=2&cursor={first['next_cursor']}", headers=admin_headers
        )
    ).json()
    assert [item["id"] for item in second["items"]] == ids[2:]
    assert second["next_cursor"] is None
    for item in first["items"] + second["items"]:
        assert "token" not in item
        assert "token_hash" not in item


@pytest.mark.parametrize("limit", ["0", "101", "many"])
async def test_list_limit_outside_1_to_100_is_422(
    client: TestClient, admin_headers: dict[str, str], limit: str
) -> None:
    resp = await client.get(f"/v1/api-keys?limit={limit}", headers=admin_headers)
    assert resp.status == 422


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/regenerate")],
)
async def test_unknown_key_is_404(
    client: TestClient, admin_headers: dict[str, str], method: str, suffix: str
) -> None:
    body = {"scopes": ["read_events"]} if method == "PATCH" else None
    resp = await client.request(
        method, f"/v1/api-keys/key_missing{suffix}", json=body, headers=admin_headers
    )
    assert resp.status == 404
    assert (await errors_of(resp))[0]["extensions"]["code"] == "NOT_FOUND"


async def test_reading_keys_needs_write_api_keys(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    token = (await create_key(client, admin_headers, *READ_SCOPES))["token"]
    resp = await client.get("/v1/api-keys", headers=bearer(token))
    assert resp.status == 403
    assert (await errors_of(resp))[0]["extensions"]["requiredScope"] == "write_api_keys"


# --- a token keeps the scopes it was issued with ---


async def test_added_scope_reaches_only_a_regenerated_token(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await create_key(client, admin_headers, "read_subscribers")
    old = created["token"]
    await set_scopes(client, admin_headers, created["id"], "read_subscribers", "write_subscribers")
    assert await can_write_subscribers(client, old) == 403

    fresh = await regenerate(client, admin_headers, created["id"])
    assert await can_write_subscribers(client, fresh["token"]) == 201
    assert await can_write_subscribers(client, old) == 401


async def test_removed_scope_stays_with_the_token_until_regenerated(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await create_key(client, admin_headers, "read_subscribers", "write_subscribers")
    await set_scopes(client, admin_headers, created["id"], "read_subscribers")
    assert await can_write_subscribers(client, created["token"]) == 201

    fresh = await regenerate(client, admin_headers, created["id"])
    assert await can_write_subscribers(client, fresh["token"]) == 403
    assert await can_read_subscribers(client, fresh["token"]) == 200


async def test_patch_shows_new_scopes_beside_the_tokens_old_ones(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await create_key(client, admin_headers, "read_subscribers")
    patched = await set_scopes(client, admin_headers, created["id"], "read_events")
    assert patched["scopes"] == ["read_events"]
    assert patched["token_scopes"] == ["read_subscribers"]
    assert parse_rfc3339(patched["updated_at"]) >= parse_rfc3339(patched["created_at"])


async def test_regenerate_returns_a_new_token_with_the_current_scopes(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await create_key(client, admin_headers, "read_subscribers")
    await set_scopes(client, admin_headers, created["id"], "read_events")
    fresh = await regenerate(client, admin_headers, created["id"])
    assert set(fresh) == {"id", "name", "scopes", "token"}
    assert fresh["scopes"] == ["read_events"]
    assert TOKEN_FORMAT.match(fresh["token"])
    assert fresh["token"] != created["token"]
    shown = await (await client.get(f"/v1/api-keys/{created['id']}", headers=admin_headers)).json()
    assert shown["token_scopes"] == ["read_events"]


# --- delete ---


async def test_delete_removes_the_key_and_its_token(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await create_key(client, admin_headers, "read_subscribers")
    resp = await client.delete(f"/v1/api-keys/{created['id']}", headers=admin_headers)
    assert resp.status == 204
    assert await resp.read() == b""
    assert (await client.get(f"/v1/api-keys/{created['id']}", headers=admin_headers)).status == 404
    assert await can_read_subscribers(client, created["token"]) == 401
    listing = await (await client.get("/v1/api-keys", headers=admin_headers)).json()
    assert listing["items"] == []


async def test_a_key_holding_write_api_keys_can_mint_keys_with_scopes_it_holds(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    manager = (await create_key(client, admin_headers, "write_api_keys", "read_events"))["token"]
    resp = await client.post(
        "/v1/api-keys", json={"name": "minted", "scopes": ["read_events"]}, headers=bearer(manager)
    )
    assert resp.status == 201


# --- the keyring under concurrent changes ---


async def test_concurrent_changes_leave_exactly_one_live_token(
    app: web.Application, redis: Redis, key_prefix: str
) -> None:
    keyring = app[KEYRING]
    key, first = await keyring.create("contended", ["read_events"])
    results = await asyncio.gather(
        *(keyring.regenerate(key.id) for _ in range(5)),
        *(keyring.update_scopes(key.id, ["read_catalog"]) for _ in range(5)),
    )
    tokens = [first] + [r[1] for r in results if isinstance(r, tuple)]
    live = [t for t in tokens if await keyring.principal_for_token(t) is not None]
    assert len(live) == 1
    final = await keyring.get(key.id)
    assert final is not None
    assert final.scopes == ["read_catalog"]
    assert final.token_hash == hashlib.sha256(live[0].encode()).hexdigest()
    token_prefix = RouterKeys(key_prefix).token("").encode()
    stored = [k async for k in redis.scan_iter(match=key_pattern(key_prefix))]
    token_keys = [k for k in stored if k.startswith(token_prefix)]
    assert token_keys == [RouterKeys(key_prefix).token(final.token_hash).encode()]


async def test_keyring_refuses_unknown_scopes(app: web.Application) -> None:
    with pytest.raises(ValueError, match="read_everything"):
        await app[KEYRING].create("x", ["read_everything"])
