"""Every way a subscriber registration or change is refused: 422, one item per bad field."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from router.http.app import create_app
from tests.conftest import make_settings

URL = "https://example.com/hook"


def valid(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": "app", "url": URL, "scopes": ["contacts.readonly"]}
    body.update(fields)
    return body


async def problems(resp: Any) -> list[tuple[str, str]]:
    """(field, message) of each error item of a 422."""
    assert resp.status == 422, await resp.text()
    body = await resp.json()
    return [(e["extensions"]["field"], e["message"]) for e in body["errors"]]


async def fields_refused(resp: Any) -> list[str]:
    return [field for field, _ in await problems(resp)]


async def create(client: TestClient, headers: dict[str, str], body: dict[str, Any]) -> Any:
    return await client.post("/v1/subscribers", json=body, headers=headers)


async def registered(client: TestClient, headers: dict[str, str], **fields: Any) -> str:
    resp = await create(client, headers, valid(**fields))
    assert resp.status == 201
    return (await resp.json())["id"]


# --- scopes and events ---


async def test_unknown_scope_is_refused_naming_it(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    resp = await create(client, admin_headers, valid(scopes=["contacts.readonly", "contacts.rd"]))
    [(field, message)] = await problems(resp)
    assert field == "scopes.1"
    assert "contacts.rd" in message


async def test_empty_scopes_are_refused(client: TestClient, admin_headers: dict[str, str]) -> None:
    resp = await create(client, admin_headers, valid(scopes=[]))
    assert await fields_refused(resp) == ["scopes"]


async def test_missing_scopes_are_refused(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    body = valid()
    del body["scopes"]
    assert await fields_refused(await create(client, admin_headers, body)) == ["scopes"]


async def test_unknown_event_is_refused_naming_it(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    resp = await create(client, admin_headers, valid(events=["ContactCreate", "ContactUpdate"]))
    [(field, message)] = await problems(resp)
    assert field == "events.1"
    assert "ContactUpdate" in message


async def test_event_no_granted_scope_unlocks_is_accepted_and_explained_as_missing_scope(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    sub_id = await registered(client, admin_headers, events=["InboundMessage"])
    resp = await client.get(
        f"/v1/subscribers/{sub_id}/explain?event=InboundMessage", headers=admin_headers
    )
    verdict = await resp.json()
    assert verdict["entitled"] is False
    assert "missing scope conversations/message.readonly" in verdict["reasons"]


async def test_write_scope_does_not_unlock_a_readonly_event(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    sub_id = await registered(
        client, admin_headers, scopes=["conversations/message.write"], events=["InboundMessage"]
    )
    resp = await client.get(
        f"/v1/subscribers/{sub_id}/explain?event=InboundMessage", headers=admin_headers
    )
    assert (await resp.json())["entitled"] is False


async def test_every_problem_is_reported_at_once(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    body = valid(url="ftp://example.com/x", scopes=["nope"], events=["Nope", "ContactCreate"])
    assert await fields_refused(await create(client, admin_headers, body)) == [
        "url",
        "scopes.0",
        "events.0",
    ]


# --- url ---


@pytest.mark.parametrize("url", ["ftp://example.com/x", "/relative/hook", "example.com/hook"])
async def test_url_that_is_not_absolute_http_is_refused(
    client: TestClient, admin_headers: dict[str, str], url: str
) -> None:
    assert await fields_refused(await create(client, admin_headers, valid(url=url))) == ["url"]


async def test_url_over_2048_chars_is_refused(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    url = "https://example.com/" + "a" * 2030
    assert await fields_refused(await create(client, admin_headers, valid(url=url))) == ["url"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://10.0.0.5/x",
        "http://169.254.169.254/",
        "http://[::1]/",
        "http://localhost/",
    ],
)
async def test_internal_url_is_refused_unless_private_targets_are_allowed(
    aiohttp_client: Any,
    redis: Redis,
    key_prefix: str,
    admin_headers: dict[str, str],
    url: str,
) -> None:
    settings = make_settings(key_prefix, allow_private_targets=False)
    client = await aiohttp_client(create_app(settings, redis=redis))
    assert await fields_refused(await create(client, admin_headers, valid(url=url))) == ["url"]


async def test_internal_url_is_accepted_when_private_targets_are_allowed(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    resp = await create(client, admin_headers, valid(url="http://127.0.0.1:9/x"))
    assert resp.status == 201


# --- name, secret, unknown fields ---


@pytest.mark.parametrize("name", ["", "   ", "n" * 201])
async def test_name_empty_or_over_200_chars_is_refused(
    client: TestClient, admin_headers: dict[str, str], name: str
) -> None:
    assert await fields_refused(await create(client, admin_headers, valid(name=name))) == ["name"]


@pytest.mark.parametrize(
    "secret",
    [
        "not-whsec",
        "whsec_!!!notbase64",
        "whsec_" + base64.b64encode(b"k" * 23).decode(),
        "whsec_" + base64.b64encode(b"k" * 65).decode(),
    ],
)
async def test_malformed_or_weak_secret_is_refused_without_echoing_it(
    client: TestClient, admin_headers: dict[str, str], secret: str
) -> None:
    resp = await create(client, admin_headers, valid(secret=secret))
    assert await fields_refused(resp) == ["secret"]
    assert secret not in await resp.text()


async def test_unknown_field_is_refused_naming_it(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    resp = await create(client, admin_headers, valid(colour="blue"))
    assert await problems(resp) == [("colour", "colour: unknown field")]


async def test_body_that_is_not_json_is_400(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    resp = await client.post(
        "/v1/subscribers",
        data=b"{nope",
        headers={**admin_headers, "Content-Type": "application/json"},
    )
    assert resp.status == 400


# --- patch ---


async def test_patch_removing_the_scope_a_filtered_event_needs_is_accepted(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    sub_id = await registered(client, admin_headers, events=["ContactCreate"])
    resp = await client.patch(
        f"/v1/subscribers/{sub_id}", json={"scopes": ["forms.readonly"]}, headers=admin_headers
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["scopes"], body["events"]) == (["forms.readonly"], ["ContactCreate"])


async def test_patch_with_an_unknown_scope_is_refused_naming_it(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    sub_id = await registered(client, admin_headers)
    resp = await client.patch(
        f"/v1/subscribers/{sub_id}", json={"scopes": ["nope"]}, headers=admin_headers
    )
    [(field, message)] = await problems(resp)
    assert field == "scopes.0"
    assert "nope" in message


async def test_patch_with_an_unknown_event_is_refused_naming_it(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    sub_id = await registered(client, admin_headers)
    resp = await client.patch(
        f"/v1/subscribers/{sub_id}", json={"events": ["Nope"]}, headers=admin_headers
    )
    [(field, message)] = await problems(resp)
    assert field == "events.0"
    assert "Nope" in message


async def test_patch_with_an_internal_url_is_refused(
    aiohttp_client: Any, redis: Redis, key_prefix: str, admin_headers: dict[str, str]
) -> None:
    settings = make_settings(key_prefix, allow_private_targets=False)
    client = await aiohttp_client(create_app(settings, redis=redis))
    sub_id = await registered(client, admin_headers)
    resp = await client.patch(
        f"/v1/subscribers/{sub_id}", json={"url": "http://10.0.0.5/x"}, headers=admin_headers
    )
    assert await fields_refused(resp) == ["url"]


@pytest.mark.parametrize("field", ["name", "url", "scopes", "status"])
async def test_patch_null_for_a_required_field_is_refused(
    client: TestClient, admin_headers: dict[str, str], field: str
) -> None:
    sub_id = await registered(client, admin_headers)
    resp = await client.patch(
        f"/v1/subscribers/{sub_id}", json={field: None}, headers=admin_headers
    )
    assert await fields_refused(resp) == [field]


async def test_patch_unknown_field_is_refused_naming_it(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    sub_id = await registered(client, admin_headers)
    resp = await client.patch(
        f"/v1/subscribers/{sub_id}", json={"secret": "whsec_x"}, headers=admin_headers
    )
    assert await fields_refused(resp) == ["secret"]


async def test_refused_patch_changes_nothing(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    sub_id = await registered(client, admin_headers, events=["ContactCreate"])
    refused = await client.patch(
        f"/v1/subscribers/{sub_id}",
        json={"name": "new", "scopes": ["forms.readonly", "nope"]},
        headers=admin_headers,
    )
    assert refused.status == 422
    resp = await client.get(f"/v1/subscribers/{sub_id}", headers=admin_headers)
    body = await resp.json()
    assert (body["name"], body["scopes"], resp.headers["ETag"]) == (
        "app",
        ["contacts.readonly"],
        '"1"',
    )


# --- grants ---


async def test_grants_adding_an_unknown_scope_is_refused_naming_it(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    sub_id = await registered(client, admin_headers)
    resp = await client.post(
        f"/v1/subscribers/{sub_id}/grants",
        json={"add": ["forms.readonly", "nope"]},
        headers=admin_headers,
    )
    [(field, message)] = await problems(resp)
    assert field == "add.1"
    assert "nope" in message


async def test_grants_removing_the_scope_a_filtered_event_needs_is_accepted(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    sub_id = await registered(
        client, admin_headers, scopes=["contacts.readonly", "forms.readonly"], events=["NoteCreate"]
    )
    resp = await client.post(
        f"/v1/subscribers/{sub_id}/grants",
        json={"remove": ["contacts.readonly"]},
        headers=admin_headers,
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["scopes"] == ["forms.readonly"]


async def test_grants_removing_the_last_scope_is_accepted(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    sub_id = await registered(client, admin_headers)
    resp = await client.post(
        f"/v1/subscribers/{sub_id}/grants",
        json={"remove": ["contacts.readonly"]},
        headers=admin_headers,
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["scopes"] == []


async def test_grants_naming_a_scope_in_add_and_remove_revoke_it(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    sub_id = await registered(client, admin_headers)
    resp = await client.post(
        f"/v1/subscribers/{sub_id}/grants",
        json={"add": ["forms.readonly"], "remove": ["forms.readonly"]},
        headers=admin_headers,
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["scopes"] == ["contacts.readonly"]


async def test_grants_unknown_field_is_refused_naming_it(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    sub_id = await registered(client, admin_headers)
    resp = await client.post(
        f"/v1/subscribers/{sub_id}/grants", json={"grant": ["x"]}, headers=admin_headers
    )
    assert await fields_refused(resp) == ["grant"]
