"""`webhook-router subscribers …` and `api-keys …` against a live app on a real port.

Each command runs in a worker thread (it calls `asyncio.run` itself) while the server keeps
serving on the test's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from router.commands import api_keys, subscribers
from router.http.context import KEYRING
from tests.conftest import ADMIN_TOKEN

HOOK = "http://127.0.0.1:9/hook"  # never called: nothing is delivered in these tests


@pytest.fixture
async def server(aiohttp_server, app: web.Application) -> TestServer:
    return await aiohttp_server(app)


@pytest.fixture
def base_url(server: TestServer, monkeypatch: pytest.MonkeyPatch) -> str:
    url = str(server.make_url("")).rstrip("/")
    monkeypatch.setenv("ROUTER_URL", url)
    monkeypatch.setenv("ROUTER_TOKEN", ADMIN_TOKEN)
    return url


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="webhook-router")
    commands = parser.add_subparsers(dest="command", required=True)
    subscribers.register(commands)
    api_keys.register(commands)
    return parser.parse_args(argv)


async def run(*argv: str) -> int:
    args = parse(*argv)
    return await asyncio.to_thread(args.func, args)


async def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    assert await run(*argv, "--json") == 0
    return json.loads(capsys.readouterr().out)


def row_of(table: str, first_cell: str) -> list[str]:
    [line] = [line for line in table.splitlines() if line.startswith(first_cell + " ")]
    return re.split(r"\s{2,}", line)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- api-keys ---


async def test_api_keys_create_prints_the_token_once_and_it_works(
    base_url: str, app: web.Application, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run("api-keys", "create", "--name", "ci", "--scope", "read_subscribers") == 0
    captured = capsys.readouterr()
    fields = dict(line.split(None, 1) for line in captured.out.splitlines())
    assert fields["name"] == "ci"
    assert fields["scopes"] == "read_subscribers"
    assert "not shown again" in captured.err
    principal = await app[KEYRING].principal_for_token(fields["token"])
    assert principal is not None
    assert principal.scopes == {"read_subscribers"}


async def test_api_keys_list_prints_an_aligned_table_row_per_key(
    base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    created = await run_json(
        capsys,
        "api-keys",
        "create",
        "--name",
        "reporting",
        "--scope",
        "read_events",
        "--scope",
        "read_catalog",
    )
    assert await run("api-keys", "list") == 0
    out = capsys.readouterr().out
    header, row = out.splitlines()
    assert header.split() == ["ID", "NAME", "SCOPES", "TOKEN", "SCOPES", "CREATED", "SUBSCRIBER"]
    assert row.startswith(created["id"] + "  reporting  read_events, read_catalog  ")
    assert header.index("NAME") == row.index("reporting")
    assert header.index("CREATED") == row.index(created["created_at"])


async def test_api_keys_list_json_is_the_raw_response(
    base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    created = await run_json(capsys, "api-keys", "create", "--name", "x", "--scope", "read_events")
    listing = await run_json(capsys, "api-keys", "list")
    assert listing == {
        "items": [
            {
                "id": created["id"],
                "name": "x",
                "subscriber_id": None,
                "scopes": ["read_events"],
                "token_scopes": ["read_events"],
                "created_at": created["created_at"],
                "updated_at": created["created_at"],
            }
        ],
        "next_cursor": None,
    }


async def test_api_keys_regenerate_replaces_the_token(
    base_url: str, app: web.Application, capsys: pytest.CaptureFixture[str]
) -> None:
    created = await run_json(capsys, "api-keys", "create", "--name", "x", "--scope", "read_events")
    fresh = await run_json(capsys, "api-keys", "regenerate", created["id"])
    assert fresh["id"] == created["id"]
    assert await app[KEYRING].principal_for_token(created["token"]) is None
    assert await app[KEYRING].principal_for_token(fresh["token"]) is not None


async def test_api_keys_create_refuses_an_unknown_scope_before_calling(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("api-keys", "create", "--name", "x", "--scope", "read_everything")
    assert exit_info.value.code == 2
    assert "read_everything" in capsys.readouterr().err


# --- subscribers ---


async def add_subscriber(capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    return await run_json(
        capsys,
        "subscribers",
        "add",
        "--name",
        "crm",
        "--url",
        HOOK,
        "--scope",
        "contacts.readonly",
        *extra,
    )


async def test_subscribers_add_registers_with_every_option(
    base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    created = await add_subscriber(
        capsys,
        "--event",
        "ContactCreate",
        "--location",
        "loc_1",
        "--location",
        "loc_2",
        "--company",
        "co_1",
    )
    assert created["id"].startswith("sub_")
    assert created["url"] == HOOK
    assert created["scopes"] == ["contacts.readonly"]
    assert created["events"] == ["ContactCreate"]
    assert created["location_ids"] == ["loc_1", "loc_2"]
    assert created["company_id"] == "co_1"
    assert created["secret"].startswith("whsec_")


async def test_subscribers_add_prints_the_subscriber_and_its_secret(
    base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        await run(
            "subscribers", "add", "--name", "crm", "--url", HOOK, "--scope", "contacts.readonly"
        )
        == 0
    )
    fields = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert fields["id"].startswith("sub_")
    assert fields["status"] == "active"
    assert fields["secret"].startswith("whsec_")
    assert fields["events"] == "-"


async def test_subscribers_list_prints_a_table_row_per_subscriber(
    base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    created = await add_subscriber(capsys)
    assert await run("subscribers", "list") == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["ID", "NAME", "STATUS", "SCOPES", "URL"]
    header = table.splitlines()[0]
    assert row_of(table, created["id"])[1:] == ["crm", "active", "contacts.readonly", HOOK]
    row = table.splitlines()[1]
    assert row.startswith(created["id"] + " ")
    # Searched after the id: a random id can hold "crm" itself.
    assert [header.index(h) for h in ("NAME", "STATUS", "URL")] == [
        row.index(v, len(created["id"])) for v in ("crm", "active", HOOK)
    ]


async def test_subscribers_list_paginates_with_cursor(
    base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = [(await add_subscriber(capsys))["id"] for _ in range(2)]
    assert await run("subscribers", "list", "--limit", "1") == 0
    out = capsys.readouterr().out
    assert ids[0] in out
    assert ids[1] not in out
    cursor = out.rsplit("--cursor ", 1)[1].strip()
    second = await run_json(capsys, "subscribers", "list", "--limit", "1", "--cursor", cursor)
    assert [item["id"] for item in second["items"]] == [ids[1]]


async def test_subscribers_show_grant_and_revoke(
    base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sub_id = (await add_subscriber(capsys))["id"]
    granted = await run_json(
        capsys, "subscribers", "grant", sub_id, "conversations/message.readonly"
    )
    assert granted["scopes"] == ["contacts.readonly", "conversations/message.readonly"]
    revoked = await run_json(capsys, "subscribers", "revoke", sub_id, "contacts.readonly")
    assert revoked["scopes"] == ["conversations/message.readonly"]
    assert await run("subscribers", "show", sub_id) == 0
    fields = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert fields["scopes"] == "conversations/message.readonly"


# --- errors ---


async def test_missing_scope_prints_the_error_and_exits_1(
    base_url: str, app: web.Application, capsys: pytest.CaptureFixture[str]
) -> None:
    _, reader = await app[KEYRING].create("reader", ["read_subscribers"])
    status = await run(
        "subscribers",
        "add",
        "--name",
        "crm",
        "--url",
        HOOK,
        "--scope",
        "contacts.readonly",
        "--token",
        reader,
    )
    assert status == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "error: Insufficient scopes for this operation (required scope: write_subscribers)\n"
    )


async def test_validation_errors_print_one_line_each(
    base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = await run(
        "subscribers", "add", "--name", "crm", "--url", HOOK, "--scope", "nope", "--scope", "nah"
    )
    assert status == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert all(line.startswith("error: scopes.") for line in lines)


async def test_unknown_subscriber_prints_not_found(
    base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run("subscribers", "show", "sub_missing") == 1
    assert capsys.readouterr().err == "error: Subscriber not found\n"


async def test_missing_token_prints_unauthenticated(
    base_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ROUTER_TOKEN")
    assert await run("api-keys", "list") == 1
    assert capsys.readouterr().err == "error: Missing or invalid bearer token\n"


async def test_url_flag_overrides_the_environment(
    base_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTER_URL", f"http://127.0.0.1:{free_port()}")
    assert await run("api-keys", "list", "--url", base_url) == 0


async def test_subscribers_add_takes_the_service_url_as_api_url(
    base_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTER_URL", f"http://127.0.0.1:{free_port()}")
    created = await add_subscriber(capsys, "--api-url", base_url)
    assert created["url"] == HOOK


async def test_non_json_success_is_an_error_line(
    aiohttp_server, capsys: pytest.CaptureFixture[str]
) -> None:
    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>")

    other = web.Application()
    other.router.add_get("/v1/api-keys", html)
    url = str((await aiohttp_server(other)).make_url("")).rstrip("/")
    assert await run("api-keys", "list", "--url", url) == 1
    assert capsys.readouterr().err == f"error: {url} answered 200 without JSON\n"


async def test_unreachable_service_is_one_error_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("ROUTER_TOKEN", ADMIN_TOKEN)
    assert await run("subscribers", "list", "--url", url) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"error: cannot reach {url}: ")
    assert captured.err.count("\n") == 1


async def test_subscribers_add_and_update_set_the_delivery_terms(
    base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    created = await add_subscriber(
        capsys,
        "--rate-limit",
        "5",
        "--burst",
        "2",
        "--retry-schedule",
        "1,10",
        "--ordering",
        "resource",
    )
    assert created["rate_limit"] == {"per_second": 5.0, "burst": 2}
    assert (created["retry_schedule"], created["ordering"]) == ([1.0, 10.0], "resource")
    changed = await run_json(
        capsys,
        "subscribers",
        "update",
        created["id"],
        "--no-rate-limit",
        "--default-retry-schedule",
        "--ordering",
        "none",
    )
    assert (changed["rate_limit"], changed["retry_schedule"], changed["ordering"]) == (
        None,
        None,
        "none",
    )


async def test_subscribers_update_with_nothing_to_change_is_refused(base_url: str) -> None:
    assert await run("subscribers", "update", "sub_x") == 2
