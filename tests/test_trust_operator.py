"""The operator API facing a hostile or careless operator (issue 13).

- Key minting cannot escalate: a caller grants only scopes its token holds, and changes,
  regenerates or deletes only keys no stronger than its token.
- Operator input is bounded and inert: list sizes and query strings have limits, names and
  tokens carry no control characters, and the CLI escapes whatever it prints.
- The OpenAPI document promises what the server accepts: catalog names as enums of the app's
  own catalog, the URL rule as a pattern the server applies, and no cross-field rule that a
  schema cannot state (an event filter may outlive its scope; revocation always works).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import TypeAdapter, ValidationError
from redis.asyncio import Redis

from router.commands import api_keys, subscribers
from router.core.targets import URL_PATTERN, url_shape_refusal
from router.core.text import NAME_PATTERN, Name, escape
from router.http.app import create_app
from router.http.auth import OPERATOR_SCOPES
from router.http.context import KEYRING, SUBSCRIBERS
from router.storage.keyring import ApiKey
from subscriptions.catalog import load_catalog
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.test_trust_urls import (
    CANONICAL,
    IPV6_SPELLINGS,
    MALFORMED,
    NUMERIC_SPELLINGS,
    OTHER_NON_ASCII,
    OTHER_ODD_HOSTS,
    UNICODE_LOOPBACK,
)

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SUBSCRIBER = {"name": "app", "url": "https://example.com/hook", "scopes": ["contacts.readonly"]}
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


# ---------------------------------------------------------------- D: bounded input


def subscriber(**fields: Any) -> dict[str, Any]:
    return {**SUBSCRIBER, **fields}


async def refused_fields(resp: Any) -> list[str]:
    assert resp.status == 422, await resp.text()
    return [item["extensions"]["field"] for item in (await resp.json())["errors"]]


async def created_id(client: TestClient, **fields: Any) -> str:
    resp = await client.post("/v1/subscribers", json=subscriber(**fields), headers=ADMIN)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("location_ids", [f"loc_{i}" for i in range(10_000)]),
        ("location_ids", [f"loc_{i}" for i in range(1001)]),
        ("scopes", ["contacts.readonly"] * 101),
        ("events", ["ContactCreate"] * 201),
    ],
    ids=["10000-locations", "1001-locations", "101-scopes", "201-events"],
)
async def test_oversized_list_is_422_naming_it(
    client: TestClient, field: str, value: list[str]
) -> None:
    resp = await client.post("/v1/subscribers", json=subscriber(**{field: value}), headers=ADMIN)
    assert await refused_fields(resp) == [field]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("location_ids", [f"loc_{i}" for i in range(1001)]),
        ("scopes", ["contacts.readonly"] * 101),
        ("events", ["ContactCreate"] * 201),
    ],
)
async def test_oversized_list_in_a_patch_is_422_naming_it(
    client: TestClient, field: str, value: list[str]
) -> None:
    sub_id = await created_id(client)
    resp = await client.patch(f"/v1/subscribers/{sub_id}", json={field: value}, headers=ADMIN)
    assert await refused_fields(resp) == [field]


async def test_lists_at_their_bounds_are_accepted(client: TestClient) -> None:
    await created_id(
        client,
        location_ids=[f"loc_{i}" for i in range(1000)],
        scopes=["contacts.readonly"] * 100,
        events=["ContactCreate"] * 200,
    )


@pytest.mark.parametrize("field", ["add", "remove"])
async def test_oversized_grants_change_is_422_naming_it(client: TestClient, field: str) -> None:
    sub_id = await created_id(client)
    resp = await client.post(
        f"/v1/subscribers/{sub_id}/grants", json={field: ["forms.readonly"] * 101}, headers=ADMIN
    )
    assert await refused_fields(resp) == [field]


async def test_api_key_with_over_100_scopes_is_422_naming_scopes(client: TestClient) -> None:
    resp = await client.post(
        "/v1/api-keys", json={"name": "x", "scopes": ["read_events"] * 101}, headers=ADMIN
    )
    assert await refused_fields(resp) == ["scopes"]


LONG = "a" * 201


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/v1/subscribers", "cursor"),
        ("/v1/subscribers", "scope"),
        ("/v1/subscribers/{id}/explain?event=ContactCreate", "location_id"),
        ("/v1/subscribers/{id}/explain?event=ContactCreate", "company_id"),
        ("/v1/subscribers/{id}/explain", "event"),
        ("/v1/deliveries", "subscriber_id"),
        ("/v1/deliveries", "event"),
        ("/v1/deliveries", "cursor"),
        ("/v1/api-keys", "cursor"),
    ],
)
async def test_query_string_over_200_characters_is_422_naming_it(
    client: TestClient, path: str, parameter: str
) -> None:
    target = path.replace("{id}", await created_id(client))
    separator = "&" if "?" in target else "?"
    resp = await client.get(f"{target}{separator}{parameter}={LONG}", headers=ADMIN)
    assert await refused_fields(resp) == [parameter]


CONTROL_TEXT = [
    "red \x1b[31mtext",
    "line\r\nbreak",
    "tab\there",
    "nul\x00",
    "del\x7f",
    "next line\x85",
    "csi\x9b31m",
    "override\u202etxt.exe",
    "isolate\u2066x\u2069",
    "mark\u200f",
    "separator\u2028",
]


@pytest.mark.parametrize("name", CONTROL_TEXT)
async def test_control_character_in_a_subscriber_name_is_422(client: TestClient, name: str) -> None:
    resp = await client.post("/v1/subscribers", json=subscriber(name=name), headers=ADMIN)
    assert await refused_fields(resp) == ["name"]
    assert "control" in (await resp.json())["errors"][0]["message"]


@pytest.mark.parametrize("name", CONTROL_TEXT)
async def test_control_character_in_an_api_key_name_is_422(client: TestClient, name: str) -> None:
    resp = await client.post(
        "/v1/api-keys", json={"name": name, "scopes": ["read_events"]}, headers=ADMIN
    )
    assert await refused_fields(resp) == ["name"]


@pytest.mark.parametrize("name", CONTROL_TEXT[:4])
async def test_control_character_in_a_patched_name_is_422(client: TestClient, name: str) -> None:
    sub_id = await created_id(client)
    resp = await client.patch(f"/v1/subscribers/{sub_id}", json={"name": name}, headers=ADMIN)
    assert await refused_fields(resp) == ["name"]


@pytest.mark.parametrize("name", [" app", "app ", "\u00a0app", "app\u3000", "   "])
async def test_name_starting_or_ending_with_whitespace_is_422(
    client: TestClient, name: str
) -> None:
    resp = await client.post("/v1/subscribers", json=subscriber(name=name), headers=ADMIN)
    assert await refused_fields(resp) == ["name"]


@pytest.mark.parametrize(
    ("fields", "refused"),
    [
        ({"location_ids": ["ok", "bad\x1b[2J"]}, "location_ids.1"),
        ({"company_id": "co\u202e1"}, "company_id"),
        ({"scopes": ["contacts.readonly\x1b"]}, "scopes.0"),
        ({"events": ["Contact\rCreate"]}, "events.0"),
    ],
)
async def test_control_character_in_a_token_is_422_naming_it(
    client: TestClient, fields: dict[str, Any], refused: str
) -> None:
    resp = await client.post("/v1/subscribers", json=subscriber(**fields), headers=ADMIN)
    assert await refused_fields(resp) == [refused]


async def test_control_character_in_a_granted_scope_or_explained_event_is_422(
    client: TestClient,
) -> None:
    sub_id = await created_id(client)
    grants = await client.post(
        f"/v1/subscribers/{sub_id}/grants", json={"add": ["forms\x1b.readonly"]}, headers=ADMIN
    )
    explain = await client.get(
        f"/v1/subscribers/{sub_id}/explain", params={"event": "Contact\x1bCreate"}, headers=ADMIN
    )
    assert (await refused_fields(grants), await refused_fields(explain)) == (["add.0"], ["event"])


def test_escape_writes_every_control_character_as_its_escape() -> None:
    assert escape("a\x1b[31mb\r\n\x00\x7f\x85\x9b\u202e\u2066\u2028c") == (
        "a\\x1b[31mb\\x0d\\x0a\\x00\\x7f\\x85\\x9b\\u202e\\u2066\\u2028c"
    )


def test_escape_leaves_ordinary_text_alone() -> None:
    text = "crm-sync (EU) \u00e9\u00e8 \u0645\u0631\u062d\u0628\u0627 \U0001f600 50% {x}"
    assert escape(text) == text


# -- the CLI prints stored data from before the rule without letting it drive the terminal

HOSTILE = "evil\x1b]0;owned\x07\x1b[2J\u202etxt.exe\x9b31m"


@pytest.fixture
async def base_url(
    aiohttp_server: Any, app: web.Application, monkeypatch: pytest.MonkeyPatch
) -> str:
    server: TestServer = await aiohttp_server(app)
    url = str(server.make_url("")).rstrip("/")
    monkeypatch.setenv("ROUTER_URL", url)
    monkeypatch.setenv("ROUTER_TOKEN", ADMIN_TOKEN)
    return url


async def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="webhook-router")
    commands = parser.add_subparsers(dest="command", required=True)
    subscribers.register(commands)
    api_keys.register(commands)
    args = parser.parse_args(argv)
    return await asyncio.to_thread(args.func, args)


def assert_inert(text: str) -> None:
    for char in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert char not in text, repr(text)


@pytest.fixture
async def hostile_subscriber(app: web.Application) -> str:
    # Straight into the store: what registration accepted before names were checked.
    sub = await app[SUBSCRIBERS].create(
        name=HOSTILE, url="https://example.com/hook", scopes=["contacts.readonly"]
    )
    return sub.id


@pytest.mark.parametrize(
    "argv", [("subscribers", "list"), ("subscribers", "show", "{id}")], ids=["list", "show"]
)
async def test_cli_prints_a_stored_hostile_name_escaped(
    base_url: str, hostile_subscriber: str, capsys: pytest.CaptureFixture[str], argv: tuple
) -> None:
    assert await cli(*(part.replace("{id}", hostile_subscriber) for part in argv)) == 0
    out = capsys.readouterr().out
    assert_inert(out)
    assert escape(HOSTILE) in out


async def test_cli_json_output_is_inert_and_still_the_data(
    base_url: str, hostile_subscriber: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("subscribers", "show", hostile_subscriber, "--json") == 0
    out = capsys.readouterr().out
    assert_inert(out)
    assert json.loads(out)["name"] == HOSTILE


async def test_cli_prints_a_stored_hostile_api_key_name_escaped(
    base_url: str, app: web.Application, capsys: pytest.CaptureFixture[str]
) -> None:
    await app[KEYRING].create(HOSTILE, ["read_events"])
    assert await cli("api-keys", "list") == 0
    out = capsys.readouterr().out
    assert_inert(out)
    assert escape(HOSTILE) in out


async def test_cli_prints_error_messages_escaped(
    aiohttp_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    async def hostile_error(request: web.Request) -> web.Response:
        items = [{"message": HOSTILE, "extensions": {"code": "X", "requiredScope": HOSTILE}}]
        return web.json_response({"errors": items}, status=400)

    other = web.Application()
    other.router.add_get("/v1/api-keys", hostile_error)
    url = str((await aiohttp_server(other)).make_url("")).rstrip("/")
    assert await cli("api-keys", "list", "--url", url) == 1
    err = capsys.readouterr().err
    assert_inert(err)
    assert err.startswith(f"error: {escape(HOSTILE)}")


# ---------------------------------------------------------------- E: the document keeps its word


async def served_document(client: TestClient) -> dict[str, Any]:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    return await resp.json()


def component(document: dict[str, Any], name: str) -> dict[str, Any]:
    return document["components"]["schemas"][name]


def string_variant(schema: dict[str, Any]) -> dict[str, Any]:
    """The string branch of a possibly nullable schema."""
    return next(v for v in schema.get("anyOf", [schema]) if v.get("type") == "string")


def query_parameter(document: dict[str, Any], path: str, name: str) -> dict[str, Any]:
    [parameter] = [p for p in document["paths"][path]["get"]["parameters"] if p["name"] == name]
    return string_variant(parameter["schema"])


async def test_every_place_a_platform_scope_is_taken_lists_the_catalogs_scopes(
    client: TestClient,
) -> None:
    document = await served_document(client)
    scopes = list(load_catalog().with_router_scope().scopes)
    places = [
        component(document, "SubscriberCreate")["properties"]["scopes"]["items"],
        component(document, "SubscriberPatch")["properties"]["scopes"]["items"],
        component(document, "GrantsChange")["properties"]["add"]["items"],
        component(document, "GrantsChange")["properties"]["remove"]["items"],
        query_parameter(document, "/v1/subscribers", "scope"),
    ]
    assert [place["enum"] for place in places] == [scopes] * len(places)


async def test_event_filters_list_the_catalogs_events_and_explain_also_its_aliases(
    client: TestClient,
) -> None:
    document = await served_document(client)
    events = sorted(load_catalog().with_router_scope().event_names())
    for model in ("SubscriberCreate", "SubscriberPatch"):
        nullable = component(document, model)["properties"]["events"]["anyOf"]
        [array] = [variant for variant in nullable if variant.get("type") == "array"]
        assert array["items"]["enum"] == events
    explained = query_parameter(document, "/v1/subscribers/{subscriber_id}/explain", "event")
    assert explained["enum"] == sorted({*events, "ConversationUnreadUpdate"})


async def test_no_catalog_marker_is_left_in_the_document(client: TestClient) -> None:
    assert "x-catalog-names" not in json.dumps(await served_document(client))


async def test_subscriber_url_pattern_is_the_servers_rule(client: TestClient) -> None:
    document = await served_document(client)
    for model in ("SubscriberCreate", "SubscriberPatch"):
        assert component(document, model)["properties"]["url"]["pattern"] == URL_PATTERN
    assert component(document, "SubscriberCreate")["properties"]["name"]["pattern"] == NAME_PATTERN


async def test_each_app_documents_its_own_catalog(
    aiohttp_client: Any, redis: Redis, key_prefix: str, tmp_path: Path, client: TestClient
) -> None:
    overlay = tmp_path / "overlay.json"
    overlay.write_text(json.dumps({"events": {"ContactUpdate": "contacts.readonly"}}))
    settings = make_settings(key_prefix, catalog_overlay=overlay)
    other = await aiohttp_client(create_app(settings, redis=redis))
    extended = await served_document(other)
    default = await served_document(client)

    def event_enum(document: dict[str, Any]) -> list[str]:
        return query_parameter(document, "/v1/subscribers/{subscriber_id}/explain", "event")["enum"]

    assert "ContactUpdate" in event_enum(extended)
    assert "ContactUpdate" not in event_enum(default)


async def test_overlay_event_is_accepted_by_the_app_that_documents_it(
    aiohttp_client: Any, redis: Redis, key_prefix: str, tmp_path: Path
) -> None:
    overlay = tmp_path / "overlay.json"
    overlay.write_text(json.dumps({"events": {"ContactUpdate": "contacts.readonly"}}))
    settings = make_settings(key_prefix, catalog_overlay=overlay)
    client = await aiohttp_client(create_app(settings, redis=redis))
    resp = await client.post(
        "/v1/subscribers", json=subscriber(events=["ContactUpdate"]), headers=ADMIN
    )
    assert resp.status == 201, await resp.text()


@pytest.mark.parametrize(
    ("query", "field"),
    [("scope=", "scope"), ("scope=contacts.rd", "scope"), ("scope=%1b", "scope")],
)
async def test_scope_filter_outside_the_enum_is_422(
    client: TestClient, query: str, field: str
) -> None:
    resp = await client.get(f"/v1/subscribers?{query}", headers=ADMIN)
    assert await refused_fields(resp) == [field]


@pytest.mark.parametrize("event", ["ContactUpdate", "Nope", ""])
async def test_explaining_an_event_outside_the_enum_is_422(client: TestClient, event: str) -> None:
    sub_id = await created_id(client)
    resp = await client.get(
        f"/v1/subscribers/{sub_id}/explain", params={"event": event}, headers=ADMIN
    )
    assert await refused_fields(resp) == ["event"]


async def test_explaining_a_payload_type_alias_is_allowed(client: TestClient) -> None:
    sub_id = await created_id(client)
    resp = await client.get(
        f"/v1/subscribers/{sub_id}/explain",
        params={"event": "ConversationUnreadUpdate"},
        headers=ADMIN,
    )
    assert resp.status == 200
    assert (await resp.json())["event"] == "ConversationUnreadWebhook"


@pytest.mark.parametrize("url", ["0", "", "example.com", "http://", "https://[::1"])
async def test_url_the_pattern_refuses_is_422(client: TestClient, url: str) -> None:
    resp = await client.post("/v1/subscribers", json=subscriber(url=url), headers=ADMIN)
    assert await refused_fields(resp) == ["url"]


async def test_revoking_a_scope_an_event_filter_needs_leaves_the_event_undelivered(
    client: TestClient,
) -> None:
    sub_id = await created_id(client, events=["ContactCreate"])
    revoked = await client.post(
        f"/v1/subscribers/{sub_id}/grants", json={"remove": ["contacts.readonly"]}, headers=ADMIN
    )
    assert revoked.status == 200, await revoked.text()
    verdict = await (
        await client.get(
            f"/v1/subscribers/{sub_id}/explain", params={"event": "ContactCreate"}, headers=ADMIN
        )
    ).json()
    assert verdict["reasons"] == ["missing scope contacts.readonly"]


def _ecma_matches(pattern: str) -> Callable[[str], bool]:
    """`pattern` as a JSON Schema validator (ECMA-262 regex), the way clients read it."""
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    return jsonschema_rs.validator_for({"type": "string", "pattern": pattern}).is_valid


def test_documented_url_pattern_read_as_ecma_agrees_with_the_server() -> None:
    matches = _ecma_matches(URL_PATTERN)
    refused = [
        *UNICODE_LOOPBACK,
        *OTHER_NON_ASCII,
        *NUMERIC_SPELLINGS,
        *IPV6_SPELLINGS,
        *OTHER_ODD_HOSTS,
        *MALFORMED,
        "0",
    ]
    accepted = [given for given, _ in CANONICAL] + [stored for _, stored in CANONICAL]
    for url in refused + accepted:
        assert matches(url) is (url_shape_refusal(url) is None), url


@pytest.mark.parametrize("text", ["app", "crm sync", " app", "app ", "\u00a0", *CONTROL_TEXT])
def test_documented_name_pattern_read_as_ecma_agrees_with_the_server(text: str) -> None:
    try:
        TypeAdapter(Name).validate_python(text)
        accepted = True
    except ValidationError:
        accepted = False
    assert _ecma_matches(NAME_PATTERN)(text) is accepted
