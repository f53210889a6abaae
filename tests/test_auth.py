"""Bearer-token authentication and scope checks on every operator route.

401 `UNAUTHENTICATED` without a live token; 403 with the seed's exact `INSUFFICIENT_SCOPES`
body when the token lacks the operation's scope.
"""

from __future__ import annotations

import re

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from router.http.auth import OPERATOR_SCOPES
from router.http.context import KEYRING
from router.http.openapi import build_openapi
from router.http.routes import RESOURCES

SEED_403 = (
    b'{"errors":[{"message":"Insufficient scopes for this operation",'
    b'"extensions":{"code":"INSUFFICIENT_SCOPES","requiredScope":"write_subscribers"},'
    b'"success":false}]}'
)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def token_with(app: web.Application, *scopes: str) -> str:
    _, token = await app[KEYRING].create("test key", scopes)
    return token


def scoped_operations() -> list[tuple[str, str, str]]:
    """(method, path with dummy ids, required scope) of every documented scoped operation."""
    document = build_openapi(RESOURCES)
    found = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if "x-required-scope" in operation:
                concrete = re.sub(r"\{[^}]+\}", "sub_x", path)
                found.append((method.upper(), concrete, operation["x-required-scope"]))
    return found


async def call(
    client: TestClient, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict]:
    body = {} if method in ("POST", "PATCH", "PUT") else None
    resp = await client.request(method, path, json=body, headers=headers)
    return resp.status, await resp.json()


def assert_unauthenticated(status: int, body: dict) -> None:
    assert status == 401
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_missing_scope_is_403_with_the_seed_body_byte_for_byte(
    app: web.Application, client: TestClient
) -> None:
    token = await token_with(app, "read_subscribers")
    resp = await client.post(
        "/v1/subscribers",
        json={"name": "n", "url": "https://example.com/h", "scopes": ["contacts.readonly"]},
        headers=bearer(token),
    )
    assert resp.status == 403
    assert resp.content_type == "application/json"
    assert await resp.read() == SEED_403


async def test_request_without_token_is_401(client: TestClient) -> None:
    assert_unauthenticated(*await call(client, "GET", "/v1/subscribers"))


@pytest.mark.parametrize(
    "header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "wrk_abc", "Token wrk_abc"]
)
async def test_malformed_authorization_header_is_401(client: TestClient, header: str) -> None:
    status, body = await call(client, "GET", "/v1/subscribers", {"Authorization": header})
    assert_unauthenticated(status, body)


async def test_unknown_token_is_401(client: TestClient) -> None:
    status, body = await call(client, "GET", "/v1/subscribers", bearer("wrk_" + "A" * 43))
    assert_unauthenticated(status, body)


async def test_deleted_keys_token_is_401(app: web.Application, client: TestClient) -> None:
    key, token = await app[KEYRING].create("doomed", ["read_subscribers"])
    assert (await call(client, "GET", "/v1/subscribers", bearer(token)))[0] == 200
    assert await app[KEYRING].delete(key.id)
    assert_unauthenticated(*await call(client, "GET", "/v1/subscribers", bearer(token)))


async def test_regenerated_keys_old_token_is_401(app: web.Application, client: TestClient) -> None:
    key, old = await app[KEYRING].create("rotating", ["read_subscribers"])
    regenerated = await app[KEYRING].regenerate(key.id)
    assert regenerated is not None
    assert_unauthenticated(*await call(client, "GET", "/v1/subscribers", bearer(old)))
    assert (await call(client, "GET", "/v1/subscribers", bearer(regenerated[1])))[0] == 200


async def test_token_holding_the_scope_is_let_through(
    app: web.Application, client: TestClient
) -> None:
    token = await token_with(app, "write_api_keys")
    status, body = await call(client, "GET", "/v1/api-keys", bearer(token))
    assert status == 200
    assert "items" in body


async def test_every_scoped_route_refuses_a_token_holding_every_other_scope(
    app: web.Application, client: TestClient
) -> None:
    operations = scoped_operations()
    tokens = {
        scope: await token_with(app, *(s for s in OPERATOR_SCOPES if s != scope))
        for scope in {scope for _, _, scope in operations}
    }
    for method, path, scope in operations:
        status, body = await call(client, method, path, bearer(tokens[scope]))
        assert (method, path, status) == (method, path, 403)
        extensions = body["errors"][0]["extensions"]
        assert extensions == {"code": "INSUFFICIENT_SCOPES", "requiredScope": scope}, path


async def test_every_scoped_route_refuses_a_request_without_token(client: TestClient) -> None:
    for method, path, _ in scoped_operations():
        status, body = await call(client, method, path)
        assert (method, path, status) == (method, path, 401)
        assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


def test_routes_require_only_scopes_a_key_can_hold() -> None:
    # A misspelt scope on a route would leave it reachable by the admin token alone.
    assert {scope for _, _, scope in scoped_operations()} <= set(OPERATOR_SCOPES)
