"""CLI parity (issue 17, part 6): `deliveries`, `events`, the new `subscribers` verbs and
`api-keys create --subscriber`, against a live app on a real port, as
`test_cli_operator.py` runs them."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from router.cli import build_parser
from router.http.context import KEYRING, SUBSCRIBERS
from tests.conftest import ADMIN_TOKEN
from tests.test_bound_keys import World, build_world


@pytest.fixture
async def server(aiohttp_server, app: web.Application) -> TestServer:
    return await aiohttp_server(app)


@pytest.fixture
async def world(
    aiohttp_client, server: TestServer, app: web.Application, monkeypatch: pytest.MonkeyPatch
) -> World:
    monkeypatch.setenv("ROUTER_URL", str(server.make_url("")).rstrip("/"))
    monkeypatch.setenv("ROUTER_TOKEN", ADMIN_TOKEN)
    return await build_world(app, await aiohttp_client(server))


async def run(*argv: str) -> int:
    args = build_parser().parse_args(argv)
    return await asyncio.to_thread(args.func, args)


async def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    assert await run(*argv, "--json") == 0
    return json.loads(capsys.readouterr().out)


def rows(out: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line) for line in out.strip().splitlines()]


# --- deliveries ---


async def test_deliveries_list_filters_and_prints_a_table(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run("deliveries", "list", "--subscriber", world.a.id, "--status", "dead") == 0
    header, *table = rows(capsys.readouterr().out)
    assert header[:4] == ["ID", "SUBSCRIBER", "EVENT", "STATUS"]
    assert [r[0] for r in table] == [world.a.dead]
    assert table[0][3] == "dead"


async def test_deliveries_list_json_takes_a_time_window(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    listing = await run_json(capsys, "deliveries", "list", "--since", "2100-01-01T00:00:00+01:00")
    assert listing == {"items": [], "next_cursor": None}
    everything = await run_json(capsys, "deliveries", "list", "--until", "2100-01-01T00:00:00Z")
    assert len(everything["items"]) == 4


async def test_deliveries_list_names_a_malformed_time(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run("deliveries", "list", "--since", "yesterday") == 1
    assert "since: must be an RFC 3339 time" in capsys.readouterr().err


async def test_deliveries_show_prints_the_attempts(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run("deliveries", "show", world.a.dead) == 0
    out = capsys.readouterr().out
    fields, attempts = out.split("\n\nATTEMPTS\n")
    assert world.a.dead in fields and "attempt_count" in fields
    header, attempt = rows(attempts)
    assert header[:3] == ["#", "AT", "CODE"]
    assert attempt[2] == "500" and attempt[-1] == f"answer of {world.a.id}"


async def test_deliveries_retry_requeues(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_json(capsys, "deliveries", "retry", world.a.dead) == {"requeued": 1}
    shown = await run_json(capsys, "deliveries", "show", world.a.dead)
    assert shown["status"] == "pending"
    assert await run("deliveries", "retry", world.a.dead) == 1
    assert "already pending" in capsys.readouterr().err


# --- events ---


async def test_events_list_filters_and_shows_one_with_its_deliveries(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    listing = await run_json(capsys, "events", "list", "--type", "ContactCreate", "--limit", "2")
    assert [e["id"] for e in listing["items"]] == [world.b.own_event, world.a.own_event]
    assert listing["next_cursor"] == world.a.own_event
    assert await run("events", "list", "--limit", "2") == 0
    assert f"--cursor {world.a.own_event}" in capsys.readouterr().out
    assert await run("events", "show", world.shared_event) == 0
    fields, deliveries = capsys.readouterr().out.split("\n\nDELIVERIES\n")
    assert '"type":"ContactCreate"' in fields.replace(" ", "")
    assert {r[0] for r in rows(deliveries)[1:]} == {world.a.dead, world.b.dead}


async def test_events_list_with_no_match_prints_the_header_only(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run("events", "list", "--location", "nowhere", "--status", "accepted") == 0
    assert rows(capsys.readouterr().out) == [
        ["ID", "TYPE", "STATUS", "LOCATION", "COMPANY", "RECEIVED"]
    ]


# --- subscribers ---


async def test_pause_and_resume(
    world: World, app: web.Application, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (await run_json(capsys, "subscribers", "pause", world.a.id))["status"] == "paused"
    assert (await app[SUBSCRIBERS].get(world.a.id)).status.value == "paused"  # type: ignore[union-attr]
    assert (await run_json(capsys, "subscribers", "resume", world.a.id))["status"] == "active"


async def test_delete(
    world: World, app: web.Application, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run("subscribers", "delete", world.b.id) == 0
    assert capsys.readouterr().out.strip() == f"deleted {world.b.id}"
    assert await app[SUBSCRIBERS].get(world.b.id) is None
    assert await run("subscribers", "delete", world.b.id) == 1
    assert "Subscriber not found" in capsys.readouterr().err


async def test_explain_says_why_not(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    verdict = await run_json(
        capsys, "subscribers", "explain", world.a.id, "--event", "ContactCreate"
    )
    assert verdict["entitled"] is True
    refused = await run_json(
        capsys, "subscribers", "explain", world.a.id, "--event", "OpportunityCreate"
    )
    assert refused["entitled"] is False and refused["reasons"]


async def test_replay_requeues_the_dead(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_json(capsys, "subscribers", "replay", world.a.id) == {"requeued": 1}
    succeeded = await run_json(
        capsys,
        "subscribers",
        "replay",
        world.b.id,
        "--status",
        "succeeded",
        "--since",
        "2000-01-01T00:00:00Z",
    )
    assert succeeded == {"requeued": 1}


async def test_rotate_secret_prints_the_new_secret_once(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run("subscribers", "rotate-secret", world.a.id) == 0
    captured = capsys.readouterr()
    assert "not shown again" in captured.err
    secret = dict(line.split(None, 1) for line in captured.out.splitlines())["secret"]
    assert secret.startswith("whsec_") and secret != world.a.secret


# --- api-keys ---


async def test_api_keys_create_with_subscriber_makes_a_bound_key(
    world: World, app: web.Application, capsys: pytest.CaptureFixture[str]
) -> None:
    created = await run_json(
        capsys,
        "api-keys",
        "create",
        "--name",
        "portal",
        "--scope",
        "read_deliveries",
        "--subscriber",
        world.a.id,
    )
    assert created["subscriber_id"] == world.a.id
    principal = await app[KEYRING].principal_for_token(created["token"])
    assert principal is not None and principal.subscriber_id == world.a.id
    assert await run("api-keys", "list") == 0
    table = rows(capsys.readouterr().out)
    assert table[0][-1] == "SUBSCRIBER"
    assert [r[-1] for r in table if r[0] == created["id"]] == [world.a.id]


async def test_api_keys_create_for_a_missing_subscriber_names_the_field(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("api-keys", "create", "--name", "p", "--scope", "read_events")
    assert await run(*args, "--subscriber", "sub_nobody") == 1
    assert "subscriber_id: no subscriber 'sub_nobody'" in capsys.readouterr().err


async def test_a_bound_token_sees_only_its_own_through_the_cli(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTER_TOKEN", world.a.headers["Authorization"].removeprefix("Bearer "))
    listing = await run_json(capsys, "deliveries", "list")
    assert {d["subscriber_id"] for d in listing["items"]} == {world.a.id}
    assert await run("deliveries", "show", world.b.dead) == 1
    assert "not found" in capsys.readouterr().err
    assert await run("subscribers", "pause", world.a.id) == 1
    assert "subscriber-bound" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ("deliveries", "list"),
        ("deliveries", "show"),
        ("deliveries", "retry"),
        ("events", "list"),
        ("events", "show"),
        *(
            ("subscribers", verb)
            for verb in ("pause", "resume", "delete", "explain", "replay", "rotate-secret")
        ),
        ("api-keys", "create"),
    ],
)
def test_every_new_command_explains_itself_and_offers_json(
    argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*argv, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--json" in text
    description = text.split("\n\n")[1]
    assert len(description.split()) >= 8  # a sentence, not a bare usage line
