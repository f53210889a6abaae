"""The subscriber registry's HTTP API: registration, reads, changes, grants, secrets, explain."""

from __future__ import annotations

import base64
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from router.http.context import SUBSCRIBERS
from router.settings import Settings
from subscriptions.ids import now_ms, parse_rfc3339
from subscriptions.models import SubscriberStatus

URL = "https://example.com/hook"
CREATED_FIELDS = {
    "rate_limit",
    "retry_schedule",
    "ordering",
    "filter",
    "id",
    "name",
    "url",
    "scopes",
    "events",
    "location_ids",
    "company_id",
    "status",
    "status_reason",
    "secret",
    "created_at",
    "updated_at",
}


async def register(client: TestClient, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": "app", "url": URL, "scopes": ["contacts.readonly"]}
    body.update(fields)
    resp = await client.post("/v1/subscribers", json=body, headers=headers)
    assert resp.status == 201, await resp.text()
    return await resp.json()


# --- create ---


async def test_create_returns_201_with_the_subscriber_and_its_full_secret(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    resp = await client.post(
        "/v1/subscribers",
        json={"name": "crm-sync", "url": URL, "scopes": ["contacts.readonly"]},
        headers=admin_headers,
    )
    assert resp.status == 201
    body = await resp.json()
    assert set(body) == CREATED_FIELDS
    assert body["id"].startswith("sub_")
    assert body["status"] == "active"
    assert body["scopes"] == ["contacts.readonly"]
    assert (body["events"], body["location_ids"], body["company_id"]) == (None, None, None)
    assert len(base64.b64decode(body["secret"].removeprefix("whsec_"))) == 32
    assert parse_rfc3339(body["created_at"]) == parse_rfc3339(body["updated_at"])


async def test_create_keeps_a_given_secret(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    secret = "whsec_" + base64.b64encode(b"x" * 32).decode()
    assert (await register(client, admin_headers, secret=secret))["secret"] == secret


async def test_create_normalises_empty_filters_to_null(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    body = await register(client, admin_headers, events=[], location_ids=[])
    assert (body["events"], body["location_ids"]) == (None, None)


async def test_create_drops_duplicate_scopes(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    body = await register(client, admin_headers, scopes=["contacts.readonly"] * 2)
    assert body["scopes"] == ["contacts.readonly"]


async def test_create_indexes_the_granted_scopes(
    client: TestClient, app: web.Application, admin_headers: dict[str, str]
) -> None:
    body = await register(client, admin_headers, scopes=["campaigns.readonly"])
    assert await app[SUBSCRIBERS].holders_of("campaigns.readonly") == [body["id"]]


async def test_create_without_a_token_is_401(client: TestClient) -> None:
    resp = await client.post("/v1/subscribers", json={"name": "a", "url": URL, "scopes": []})
    assert resp.status == 401
    assert (await resp.json())["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


# --- read ---


async def test_get_masks_the_secret_and_sends_an_etag(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await register(client, admin_headers)
    resp = await client.get(f"/v1/subscribers/{created['id']}", headers=admin_headers)
    assert resp.status == 200
    assert resp.headers["ETag"] == '"1"'
    body = await resp.json()
    masked = "whsec_****" + created["secret"][-4:]
    assert body["secret"] == masked
    assert body["secrets"] == [{"secret": masked, "expires_at": None}]
    assert created["secret"] not in await resp.text()


async def test_get_unknown_subscriber_is_404(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    resp = await client.get("/v1/subscribers/sub_missing", headers=admin_headers)
    assert resp.status == 404
    assert (await resp.json())["errors"][0]["extensions"]["code"] == "NOT_FOUND"


async def test_get_without_a_token_is_401(client: TestClient) -> None:
    assert (await client.get("/v1/subscribers/sub_missing")).status == 401


async def test_list_walks_250_subscribers_in_three_pages_of_at_most_100(
    client: TestClient, app: web.Application, admin_headers: dict[str, str]
) -> None:
    store = app[SUBSCRIBERS]
    ids = sorted(
        [(await store.create(name="n", url=URL, scopes=["forms.readonly"])).id for _ in range(250)]
    )
    seen: list[str] = []
    pages = 0
    params: dict[str, str] = {"limit": "100"}
    while True:
        resp = await client.get("/v1/subscribers", params=params, headers=admin_headers)
        assert resp.status == 200
        page = await resp.json()
        pages += 1
        seen += [item["id"] for item in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert pages == 3
    assert seen == ids


async def test_list_masks_secrets(client: TestClient, admin_headers: dict[str, str]) -> None:
    created = await register(client, admin_headers)
    page = await (await client.get("/v1/subscribers", headers=admin_headers)).json()
    assert page["items"][0]["secret"] == "whsec_****" + created["secret"][-4:]


async def test_list_filters_by_scope(client: TestClient, admin_headers: dict[str, str]) -> None:
    holder = await register(client, admin_headers, scopes=["campaigns.readonly"])
    await register(client, admin_headers)
    resp = await client.get(
        "/v1/subscribers", params={"scope": "campaigns.readonly"}, headers=admin_headers
    )
    page = await resp.json()
    assert [item["id"] for item in page["items"]] == [holder["id"]]
    assert page["next_cursor"] is None


async def test_list_filters_by_status(client: TestClient, admin_headers: dict[str, str]) -> None:
    await register(client, admin_headers)
    paused = await register(client, admin_headers)
    await client.patch(
        f"/v1/subscribers/{paused['id']}", json={"status": "paused"}, headers=admin_headers
    )
    resp = await client.get("/v1/subscribers", params={"status": "paused"}, headers=admin_headers)
    assert [item["id"] for item in (await resp.json())["items"]] == [paused["id"]]


async def test_list_by_an_unknown_scope_is_422_naming_scope(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    resp = await client.get("/v1/subscribers", params={"scope": "nope"}, headers=admin_headers)
    assert resp.status == 422
    assert (await resp.json())["errors"][0]["extensions"]["field"] == "scope"


async def test_list_limit_over_100_is_422_naming_limit(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    resp = await client.get("/v1/subscribers", params={"limit": "101"}, headers=admin_headers)
    assert resp.status == 422
    assert (await resp.json())["errors"][0]["extensions"]["field"] == "limit"


# --- patch ---


async def test_patch_replaces_the_given_fields_and_keeps_the_rest(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await register(client, admin_headers, location_ids=["loc1"])
    resp = await client.patch(
        f"/v1/subscribers/{created['id']}",
        json={"name": "renamed", "scopes": ["campaigns.readonly"]},
        headers=admin_headers,
    )
    assert resp.status == 200
    body = await resp.json()
    assert (body["name"], body["scopes"]) == ("renamed", ["campaigns.readonly"])
    assert (body["url"], body["location_ids"]) == (URL, ["loc1"])
    assert body["secret"] == "whsec_****" + created["secret"][-4:]


async def test_patch_scopes_moves_the_index(
    client: TestClient, app: web.Application, admin_headers: dict[str, str]
) -> None:
    created = await register(client, admin_headers)
    await client.patch(
        f"/v1/subscribers/{created['id']}",
        json={"scopes": ["campaigns.readonly"]},
        headers=admin_headers,
    )
    assert await app[SUBSCRIBERS].holders_of("contacts.readonly") == []
    assert await app[SUBSCRIBERS].holders_of("campaigns.readonly") == [created["id"]]


async def test_patch_returns_the_new_etag(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await register(client, admin_headers)
    resp = await client.patch(
        f"/v1/subscribers/{created['id']}", json={"name": "b"}, headers=admin_headers
    )
    assert resp.headers["ETag"] == '"2"'


async def test_patch_with_the_current_etag_succeeds(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await register(client, admin_headers)
    resp = await client.patch(
        f"/v1/subscribers/{created['id']}",
        json={"name": "b"},
        headers={**admin_headers, "If-Match": '"1"'},
    )
    assert resp.status == 200


async def test_patch_with_a_stale_etag_is_409_and_changes_nothing(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await register(client, admin_headers)
    path = f"/v1/subscribers/{created['id']}"
    await client.patch(path, json={"name": "second"}, headers=admin_headers)
    resp = await client.patch(
        path, json={"name": "third"}, headers={**admin_headers, "If-Match": '"1"'}
    )
    assert resp.status == 409
    assert (await resp.json())["errors"][0]["extensions"]["code"] == "CONFLICT"
    assert (await (await client.get(path, headers=admin_headers)).json())["name"] == "second"


async def test_patch_with_an_unreadable_if_match_is_400(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await register(client, admin_headers)
    resp = await client.patch(
        f"/v1/subscribers/{created['id']}",
        json={"name": "b"},
        headers={**admin_headers, "If-Match": '"abc"'},
    )
    assert resp.status == 400


async def test_patch_null_clears_a_filter(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await register(client, admin_headers, events=["ContactCreate"], company_id="co1")
    resp = await client.patch(
        f"/v1/subscribers/{created['id']}",
        json={"events": None, "company_id": None},
        headers=admin_headers,
    )
    body = await resp.json()
    assert (body["events"], body["company_id"]) == (None, None)


async def test_patch_unknown_subscriber_is_404(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    resp = await client.patch(
        "/v1/subscribers/sub_missing", json={"name": "x"}, headers=admin_headers
    )
    assert resp.status == 404


async def test_patch_can_pause_a_subscriber(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await register(client, admin_headers)
    resp = await client.patch(
        f"/v1/subscribers/{created['id']}", json={"status": "paused"}, headers=admin_headers
    )
    assert (await resp.json())["status"] == "paused"


async def test_patch_re_enables_a_subscriber_the_router_disabled(
    client: TestClient, app: web.Application, admin_headers: dict[str, str]
) -> None:
    created = await register(client, admin_headers)
    await app[SUBSCRIBERS].set_status(created["id"], SubscriberStatus.disabled, "410 Gone")
    path = f"/v1/subscribers/{created['id']}"
    disabled = await (await client.get(path, headers=admin_headers)).json()
    assert (disabled["status"], disabled["status_reason"]) == ("disabled", "410 Gone")
    resp = await client.patch(path, json={"status": "active"}, headers=admin_headers)
    body = await resp.json()
    assert (body["status"], body["status_reason"]) == ("active", None)


async def test_patch_cannot_set_disabled(client: TestClient, admin_headers: dict[str, str]) -> None:
    created = await register(client, admin_headers)
    resp = await client.patch(
        f"/v1/subscribers/{created['id']}", json={"status": "disabled"}, headers=admin_headers
    )
    assert resp.status == 422
    assert (await resp.json())["errors"][0]["extensions"]["field"] == "status"


# --- delete ---


async def test_delete_is_204_and_the_subscriber_is_gone(
    client: TestClient, app: web.Application, admin_headers: dict[str, str]
) -> None:
    created = await register(client, admin_headers)
    path = f"/v1/subscribers/{created['id']}"
    resp = await client.delete(path, headers=admin_headers)
    assert resp.status == 204
    assert await resp.read() == b""
    assert (await client.get(path, headers=admin_headers)).status == 404
    assert await app[SUBSCRIBERS].holders_of("contacts.readonly") == []


async def test_delete_unknown_subscriber_is_404(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    assert (await client.delete("/v1/subscribers/sub_missing", headers=admin_headers)).status == 404


async def test_delete_with_a_stale_etag_is_409(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await register(client, admin_headers)
    path = f"/v1/subscribers/{created['id']}"
    await client.patch(path, json={"name": "second"}, headers=admin_headers)
    resp = await client.delete(path, headers={**admin_headers, "If-Match": '"1"'})
    assert resp.status == 409


# --- grants ---


async def test_grants_add_and_remove_update_the_index(
    client: TestClient, app: web.Application, admin_headers: dict[str, str]
) -> None:
    created = await register(client, admin_headers, scopes=["contacts.readonly", "forms.readonly"])
    resp = await client.post(
        f"/v1/subscribers/{created['id']}/grants",
        json={"add": ["campaigns.readonly"], "remove": ["contacts.readonly"]},
        headers=admin_headers,
    )
    assert resp.status == 200
    assert (await resp.json())["scopes"] == ["forms.readonly", "campaigns.readonly"]
    store = app[SUBSCRIBERS]
    assert await store.holders_of("campaigns.readonly") == [created["id"]]
    assert await store.holders_of("contacts.readonly") == []


async def test_grants_for_an_unknown_subscriber_is_404(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    resp = await client.post(
        "/v1/subscribers/sub_missing/grants",
        json={"add": ["forms.readonly"]},
        headers=admin_headers,
    )
    assert resp.status == 404


# --- secret rotation ---


async def test_rotate_returns_the_new_secret_and_the_masked_old_with_its_expiry(
    client: TestClient, admin_headers: dict[str, str], settings: Settings
) -> None:
    created = await register(client, admin_headers)
    before = now_ms()
    resp = await client.post(
        f"/v1/subscribers/{created['id']}/secret/rotate", headers=admin_headers
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["secret"].startswith("whsec_") and body["secret"] != created["secret"]
    new, old = body["secrets"]
    assert new == {"secret": "whsec_****" + body["secret"][-4:], "expires_at": None}
    assert old["secret"] == "whsec_****" + created["secret"][-4:]
    expires = parse_rfc3339(old["expires_at"])
    assert (
        before + settings.secret_grace * 1000 <= expires <= now_ms() + settings.secret_grace * 1000
    )


async def test_after_rotation_old_and_new_secrets_both_sign(
    client: TestClient, app: web.Application, admin_headers: dict[str, str]
) -> None:
    created = await register(client, admin_headers)
    resp = await client.post(
        f"/v1/subscribers/{created['id']}/secret/rotate", headers=admin_headers
    )
    new = (await resp.json())["secret"]
    stored = await app[SUBSCRIBERS].get(created["id"])
    assert stored is not None
    assert stored.signing_secrets(now_ms()) == [new, created["secret"]]


async def test_rotate_unknown_subscriber_is_404(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    resp = await client.post("/v1/subscribers/sub_missing/secret/rotate", headers=admin_headers)
    assert resp.status == 404


# --- explain ---


async def test_explain_returns_the_verdict(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await register(client, admin_headers, location_ids=["loc1"])
    resp = await client.get(
        f"/v1/subscribers/{created['id']}/explain",
        params={"event": "InboundMessage", "location_id": "loc2"},
        headers=admin_headers,
    )
    assert resp.status == 200
    assert await resp.json() == {
        "subscriber_id": created["id"],
        "event": "InboundMessage",
        "required_scope": "conversations/message.readonly",
        "entitled": False,
        "reasons": [
            "missing scope conversations/message.readonly",
            "event belongs to another tenant",
        ],
        "delivery": {
            "rate_limit": None,
            "retry_schedule": None,
            "ordering": "none",
            "resource_key": None,
        },
    }


async def test_explain_of_an_entitled_event(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await register(client, admin_headers, company_id="co1")
    resp = await client.get(
        f"/v1/subscribers/{created['id']}/explain",
        params={"event": "ContactCreate", "company_id": "co1"},
        headers=admin_headers,
    )
    body = await resp.json()
    assert (body["entitled"], body["reasons"]) == (True, [])


async def test_explain_without_an_event_is_422_naming_event(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await register(client, admin_headers)
    resp = await client.get(f"/v1/subscribers/{created['id']}/explain", headers=admin_headers)
    assert resp.status == 422
    assert (await resp.json())["errors"][0]["extensions"]["field"] == "event"


async def test_explain_unknown_subscriber_is_404(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    resp = await client.get(
        "/v1/subscribers/sub_missing/explain",
        params={"event": "ContactCreate"},
        headers=admin_headers,
    )
    assert resp.status == 404
