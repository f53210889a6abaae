"""The operator API facing a hostile or careless operator (issue 13).

- Key minting cannot escalate: a caller grants only scopes its token holds, and changes,
  regenerates or deletes only keys no stronger than its token.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from router.auth import OPERATOR_SCOPES
from router.context import KEYRING
from router.keyring import ApiKey
from tests.conftest import ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FORBIDDEN = {
    "errors": [
        {
            "message": "Insufficient scopes for this operation",
            "extensions": {"code": "INSUFFICIENT_SCOPES", "requiredScope": "?"},
            "success": False,
        }
    ]
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def new_key(client: TestClient, *scopes: str, headers: dict[str, str] = ADMIN) -> dict:
    resp = await client.post(
        "/v1/api-keys", json={"name": "k", "scopes": list(scopes)}, headers=headers
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def assert_forbidden_naming(resp: Any, scope: str) -> None:
    """403 in exactly the seed's INSUFFICIENT_SCOPES shape, naming `scope`."""
    assert resp.status == 403, await resp.text()
    expected = json.loads(json.dumps(FORBIDDEN))
    expected["errors"][0]["extensions"]["requiredScope"] = scope
    assert await resp.json() == expected


async def token_works(client: TestClient, token: str) -> bool:
    resp = await client.get("/v1/api-keys", headers=bearer(token))
    return resp.status == 200


# ---------------------------------------------------------------- C: minting cannot escalate


@pytest.mark.parametrize(
    ("wanted", "first_missing"),
    [
        (list(OPERATOR_SCOPES), "read_subscribers"),
        (["write_api_keys", "write_subscribers"], "write_subscribers"),
        (["read_events", "read_events"], "read_events"),
    ],
)
async def test_creating_a_key_with_a_scope_the_caller_lacks_is_403_naming_it(
    client: TestClient, wanted: list[str], first_missing: str
) -> None:
    manager = await new_key(client, "write_api_keys")
    resp = await client.post(
        "/v1/api-keys", json={"name": "x", "scopes": wanted}, headers=bearer(manager["token"])
    )
    await assert_forbidden_naming(resp, first_missing)


async def test_refused_create_stores_no_key(client: TestClient) -> None:
    manager = await new_key(client, "write_api_keys")
    await client.post(
        "/v1/api-keys",
        json={"name": "x", "scopes": list(OPERATOR_SCOPES)},
        headers=bearer(manager["token"]),
    )
    listing = await (await client.get("/v1/api-keys", headers=ADMIN)).json()
    assert [key["id"] for key in listing["items"]] == [manager["id"]]


async def test_creating_a_key_with_scopes_the_caller_holds_is_allowed(client: TestClient) -> None:
    manager = await new_key(client, "write_api_keys", "read_events", "read_catalog")
    minted = await new_key(
        client, "read_events", "write_api_keys", headers=bearer(manager["token"])
    )
    assert minted["scopes"] == ["read_events", "write_api_keys"]


async def test_a_key_cannot_patch_itself_to_more_scopes(client: TestClient) -> None:
    manager = await new_key(client, "write_api_keys")
    resp = await client.patch(
        f"/v1/api-keys/{manager['id']}",
        json={"scopes": ["write_api_keys", "read_events"]},
        headers=bearer(manager["token"]),
    )
    await assert_forbidden_naming(resp, "read_events")
    key = await (await client.get(f"/v1/api-keys/{manager['id']}", headers=ADMIN)).json()
    assert key["scopes"] == ["write_api_keys"]


async def test_a_key_cannot_patch_another_weak_key_to_scopes_it_lacks(client: TestClient) -> None:
    manager = await new_key(client, "write_api_keys")
    weak = await new_key(client, "write_api_keys")
    resp = await client.patch(
        f"/v1/api-keys/{weak['id']}",
        json={"scopes": list(OPERATOR_SCOPES)},
        headers=bearer(manager["token"]),
    )
    await assert_forbidden_naming(resp, "read_subscribers")


async def test_a_key_cannot_patch_a_stronger_key_even_downwards(client: TestClient) -> None:
    manager = await new_key(client, "write_api_keys")
    strong = await new_key(client, "write_api_keys", "write_subscribers")
    resp = await client.patch(
        f"/v1/api-keys/{strong['id']}",
        json={"scopes": ["write_api_keys"]},
        headers=bearer(manager["token"]),
    )
    await assert_forbidden_naming(resp, "write_subscribers")


async def test_a_key_may_patch_a_key_no_stronger_than_itself_within_its_scopes(
    client: TestClient,
) -> None:
    manager = await new_key(client, "write_api_keys", "read_events")
    weak = await new_key(client, "read_events")
    resp = await client.patch(
        f"/v1/api-keys/{weak['id']}",
        json={"scopes": ["read_events", "write_api_keys"]},
        headers=bearer(manager["token"]),
    )
    assert resp.status == 200, await resp.text()


async def test_regenerating_a_stronger_key_is_403_and_its_token_keeps_working(
    client: TestClient,
) -> None:
    manager = await new_key(client, "write_api_keys")
    strong = await new_key(client, *OPERATOR_SCOPES)
    resp = await client.post(
        f"/v1/api-keys/{strong['id']}/regenerate", headers=bearer(manager["token"])
    )
    await assert_forbidden_naming(resp, "read_subscribers")
    assert await token_works(client, strong["token"])


async def test_regenerating_a_key_whose_token_is_stronger_than_the_caller_is_403(
    client: TestClient,
) -> None:
    # An admin narrowed the strong key's scopes, but its live token still holds the old ones.
    manager = await new_key(client, "write_api_keys")
    strong = await new_key(client, "write_api_keys", "write_deliveries")
    narrowed = await client.patch(
        f"/v1/api-keys/{strong['id']}", json={"scopes": ["write_api_keys"]}, headers=ADMIN
    )
    assert narrowed.status == 200
    resp = await client.post(
        f"/v1/api-keys/{strong['id']}/regenerate", headers=bearer(manager["token"])
    )
    await assert_forbidden_naming(resp, "write_deliveries")


async def test_a_key_cannot_regenerate_itself_into_scopes_its_token_lacks(
    client: TestClient,
) -> None:
    manager = await new_key(client, "write_api_keys")
    await client.patch(
        f"/v1/api-keys/{manager['id']}",
        json={"scopes": ["write_api_keys", "read_events"]},
        headers=ADMIN,
    )
    resp = await client.post(
        f"/v1/api-keys/{manager['id']}/regenerate", headers=bearer(manager["token"])
    )
    await assert_forbidden_naming(resp, "read_events")


async def test_regenerating_a_key_no_stronger_than_the_caller_is_allowed(
    client: TestClient,
) -> None:
    manager = await new_key(client, "write_api_keys", "read_events")
    weak = await new_key(client, "read_events")
    resp = await client.post(
        f"/v1/api-keys/{weak['id']}/regenerate", headers=bearer(manager["token"])
    )
    assert resp.status == 200, await resp.text()


async def test_deleting_a_stronger_key_is_403_and_it_survives(client: TestClient) -> None:
    manager = await new_key(client, "write_api_keys")
    strong = await new_key(client, "write_api_keys", "read_catalog")
    resp = await client.delete(f"/v1/api-keys/{strong['id']}", headers=bearer(manager["token"]))
    await assert_forbidden_naming(resp, "read_catalog")
    assert await token_works(client, strong["token"])


async def test_deleting_a_key_no_stronger_than_the_caller_is_allowed(client: TestClient) -> None:
    manager = await new_key(client, "write_api_keys")
    peer = await new_key(client, "write_api_keys")
    resp = await client.delete(f"/v1/api-keys/{peer['id']}", headers=bearer(manager["token"]))
    assert resp.status == 204


async def test_the_admin_token_holds_every_scope_for_every_key_operation(
    client: TestClient,
) -> None:
    strong = await new_key(client, *OPERATOR_SCOPES)
    patched = await client.patch(
        f"/v1/api-keys/{strong['id']}", json={"scopes": list(OPERATOR_SCOPES)}, headers=ADMIN
    )
    regenerated = await client.post(f"/v1/api-keys/{strong['id']}/regenerate", headers=ADMIN)
    deleted = await client.delete(f"/v1/api-keys/{strong['id']}", headers=ADMIN)
    assert (patched.status, regenerated.status, deleted.status) == (200, 200, 204)


async def test_keyring_refusal_leaves_the_key_and_its_token_unchanged(
    app: web.Application,
) -> None:
    keyring = app[KEYRING]
    key, token = await keyring.create("target", ["read_events"])

    def refuse(_: ApiKey) -> None:
        raise PermissionError("no")

    changes: list[Callable[[], Any]] = [
        lambda: keyring.regenerate(key.id, check=refuse),
        lambda: keyring.update_scopes(key.id, ["read_catalog"], check=refuse),
        lambda: keyring.delete(key.id, check=refuse),
    ]
    for change in changes:
        with pytest.raises(PermissionError):
            await change()
    assert await keyring.get(key.id) == key
    assert await keyring.principal_for_token(token) is not None
