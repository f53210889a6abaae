"""Backfill (issue 18, part 1): deliveries for retained events a subscriber is newly entitled
to, on every store, with one partition and with several.

Most tests run the app without its workers: events are accepted and indexed but nobody
dispatches them, so what a backfill schedules is exactly what the rule gives the subscriber
today. The end-to-end test runs the workers and real receivers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis
from redis.crc import key_slot

from router.commands import subscribers as subscriber_commands
from router.core.records import IncomingEvent
from router.http.app import create_app
from router.http.context import CATALOG, LEDGER, SUBSCRIBERS
from router.pipeline.backfill import Backfill
from router.storage.backfill import BackfillStore
from router.storage.keys import RouterKeys
from subscriptions.ids import id_floor, new_id, now_ms
from tests.conftest import ADMIN_TOKEN, make_ledger, make_settings
from tests.payloads import LOCATION_ID, OTHER_LOCATION_ID, encode, platform_event
from tests.receivers import Receiver, verify_signature

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
HOOK = "http://127.0.0.1:9/hook"  # never called: these apps run no workers
DEADLINE = 10.0


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def now() -> datetime:
    return datetime.now(UTC)


async def call(client: TestClient, method: str, path: str, expect: int, **kw: Any) -> Any:
    resp = await client.request(method, path, headers=ADMIN, **kw)
    body = await resp.json() if resp.status != 204 else None
    assert resp.status == expect, (method, path, resp.status, body)
    return body


async def subscribe(client: TestClient, scopes: list[str], url: str = HOOK, **fields: Any) -> Any:
    body = {"name": "app", "url": url, "scopes": scopes, **fields}
    return await call(client, "POST", "/v1/subscribers", 201, json=body)


async def publish(client: TestClient, event: str, **changes: Any) -> str:
    resp = await client.post(
        "/webhooks",
        data=encode(platform_event(event, **changes)),
        headers={"Content-Type": "application/json"},
    )
    answer = await resp.json()
    assert resp.status == 202 and answer["status"] == "accepted", answer
    return answer["event_id"]


async def backfill(
    client: TestClient, subscriber_id: str, since: datetime, until: datetime, **extra: Any
) -> int:
    body = {"since": iso(since), "until": iso(until), **extra}
    answer = await call(client, "POST", f"/v1/subscribers/{subscriber_id}/backfill", 202, json=body)
    return answer["scheduled"]


async def deliveries_of(client: TestClient, subscriber_id: str) -> list[dict[str, Any]]:
    page = await call(client, "GET", "/v1/deliveries", 200, params={"subscriber_id": subscriber_id})
    return page["items"]


@pytest.fixture(params=[1, 4], ids=["1-partition", "4-partitions"])
async def client(
    request: pytest.FixtureRequest, aiohttp_client: Any, redis: Redis, key_prefix: str
) -> TestClient:
    settings = make_settings(key_prefix, partitions=request.param)
    return await aiohttp_client(create_app(settings, redis=redis))


async def test_backfill_schedules_each_entitled_event_once(client: TestClient) -> None:
    start = now() - timedelta(seconds=1)
    contacts = [await publish(client, "ContactCreate") for _ in range(5)]
    await publish(client, "OpportunityCreate")
    sub = await subscribe(client, ["contacts.readonly"])

    assert await backfill(client, sub["id"], start, now() + timedelta(seconds=1)) == 5
    made = await deliveries_of(client, sub["id"])
    assert sorted(d["event_id"] for d in made) == sorted(contacts)
    assert {d["status"] for d in made} == {"pending"}

    assert await backfill(client, sub["id"], start, now() + timedelta(seconds=1)) == 0
    assert len(await deliveries_of(client, sub["id"])) == 5


async def test_a_new_grant_is_backfilled_and_nothing_else(client: TestClient) -> None:
    start = now() - timedelta(seconds=1)
    for event in ("ContactCreate", "OpportunityCreate", "OpportunityDelete"):
        await publish(client, event)
    sub = await subscribe(client, ["contacts.readonly"])
    until = now() + timedelta(seconds=1)
    assert await backfill(client, sub["id"], start, until) == 1

    await call(
        client,
        "POST",
        f"/v1/subscribers/{sub['id']}/grants",
        200,
        json={"add": ["opportunities.readonly"]},
    )
    assert await backfill(client, sub["id"], start, until) == 2
    assert await backfill(client, sub["id"], start, until) == 0


async def test_backfill_keeps_to_the_requested_events_and_the_subscribers_terms(
    client: TestClient,
) -> None:
    start = now() - timedelta(seconds=1)
    await publish(client, "ContactCreate")
    await publish(client, "ContactDelete")
    other = await publish(client, "ContactDelete", locationId=OTHER_LOCATION_ID)
    until = now() + timedelta(seconds=1)

    everyone = await subscribe(client, ["contacts.readonly"])
    assert await backfill(client, everyone["id"], start, until, events=["ContactDelete"]) == 2

    bound = await subscribe(client, ["contacts.readonly"], location_ids=[OTHER_LOCATION_ID])
    assert await backfill(client, bound["id"], start, until) == 1
    assert [d["event_id"] for d in await deliveries_of(client, bound["id"])] == [other]

    filtered = await subscribe(client, ["contacts.readonly"], events=["ContactCreate"])
    assert await backfill(client, filtered["id"], start, until, events=["ContactDelete"]) == 0

    paused = await subscribe(client, ["contacts.readonly"])
    await call(client, "PATCH", f"/v1/subscribers/{paused['id']}", 200, json={"status": "paused"})
    assert await backfill(client, paused["id"], start, until) == 0


async def test_backfill_honours_the_subscribers_payload_filter(client: TestClient) -> None:
    start = now() - timedelta(seconds=1)
    wanted = [
        await publish(client, "OpportunityCreate", pipelineId="p1"),
        await publish(client, "OpportunityCreate", pipelineId="p1", monetaryValue=5),
    ]
    await publish(client, "OpportunityCreate", pipelineId="p2")
    await publish(client, "OpportunityCreate", pipelineId="p1", monetaryValue=50_000)
    until = now() + timedelta(seconds=1)
    narrow = {"pipelineId": "p1", "$not": {"monetaryValue": {"$gt": 10_000}}}
    sub = await subscribe(client, ["opportunities.readonly"], filter=narrow)
    assert await backfill(client, sub["id"], start, until) == 2
    assert sorted(d["event_id"] for d in await deliveries_of(client, sub["id"])) == sorted(wanted)
    await call(client, "PATCH", f"/v1/subscribers/{sub['id']}", 200, json={"filter": None})
    assert await backfill(client, sub["id"], start, until) == 2  # the two it had left out


async def test_the_window_is_from_since_to_before_until(client: TestClient) -> None:
    start = now() - timedelta(seconds=1)
    before = await publish(client, "ContactCreate")
    await asyncio.sleep(0.02)
    middle = now()
    after = await publish(client, "ContactCreate")
    end = now() + timedelta(seconds=1)

    early = await subscribe(client, ["contacts.readonly"])
    assert await backfill(client, early["id"], start, middle) == 1
    assert [d["event_id"] for d in await deliveries_of(client, early["id"])] == [before]

    late = await subscribe(client, ["contacts.readonly"])
    assert await backfill(client, late["id"], middle, end) == 1
    assert [d["event_id"] for d in await deliveries_of(client, late["id"])] == [after]


async def test_backfill_refuses_a_bad_window_naming_the_field(client: TestClient) -> None:
    sub = await subscribe(client, ["contacts.readonly"])
    path = f"/v1/subscribers/{sub['id']}/backfill"
    t = now()

    cases = [
        ({"since": iso(t), "until": iso(t)}, "until", "must be after since"),
        (
            {"since": iso(t - timedelta(days=8)), "until": iso(t)},
            "since",
            "before the retention",
        ),
        (
            {"since": iso(t - timedelta(hours=1)), "until": iso(t), "events": ["Nope"]},
            "events.0",
            "unknown event",
        ),
        ({"since": "yesterday", "until": iso(t)}, "since", ""),
        ({"until": iso(t)}, "since", ""),
        ({"since": iso(t - timedelta(hours=1)), "until": iso(t), "extra": 1}, "extra", ""),
    ]
    for body, field, words in cases:
        answer = await call(client, "POST", path, 422, json=body)
        (item,) = [e for e in answer["errors"] if e["extensions"].get("field") == field]
        assert words in item["message"], answer


async def test_backfill_of_an_unknown_subscriber_is_404(client: TestClient) -> None:
    body = {"since": iso(now() - timedelta(hours=1)), "until": iso(now())}
    await call(client, "POST", "/v1/subscribers/sub_missing/backfill", 404, json=body)


async def test_backfill_needs_write_deliveries(client: TestClient) -> None:
    sub = await subscribe(client, ["contacts.readonly"])
    body = {"since": iso(now() - timedelta(hours=1)), "until": iso(now())}
    path = f"/v1/subscribers/{sub['id']}/backfill"
    for scopes, status in (
        (["read_deliveries", "write_subscribers"], 403),
        (["write_deliveries"], 202),
    ):
        key = await call(client, "POST", "/v1/api-keys", 201, json={"name": "k", "scopes": scopes})
        resp = await client.post(
            path, json=body, headers={"Authorization": f"Bearer {key['token']}"}
        )
        assert resp.status == status, await resp.text()


async def test_a_key_bound_to_a_subscriber_backfills_that_subscriber_only(
    client: TestClient,
) -> None:
    own = await subscribe(client, ["contacts.readonly"])
    other = await subscribe(client, ["contacts.readonly"])
    body = {"name": "portal", "scopes": ["write_deliveries"], "subscriber_id": own["id"]}
    key = await call(client, "POST", "/v1/api-keys", 201, json=body)
    window = {"since": iso(now() - timedelta(hours=1)), "until": iso(now())}
    bearer = {"Authorization": f"Bearer {key['token']}"}
    for sub, status in ((own, 202), (other, 404)):
        path = f"/v1/subscribers/{sub['id']}/backfill"
        resp = await client.post(path, json=window, headers=bearer)
        assert resp.status == status, await resp.text()


async def test_a_backfill_interrupted_by_a_crash_goes_on_where_it_stopped(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = client.app
    assert app is not None
    start = now() - timedelta(seconds=1)
    for _ in range(4):
        await publish(client, "ContactCreate")
    sub = await app[SUBSCRIBERS].create(name="app", url=HOOK, scopes=["contacts.readonly"])
    since, until = int(start.timestamp() * 1000), now_ms() + 1000

    calls = 0
    schedule = BackfillStore.schedule

    async def crash_on_the_third_page(self: BackfillStore, *args: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise ConnectionError("the process died")
        return await schedule(self, *args)

    monkeypatch.setattr(BackfillStore, "schedule", crash_on_the_third_page)
    with pytest.raises(ConnectionError):
        await Backfill(app[LEDGER], app[CATALOG], page=1).run(sub, since, until)
    read: list[str | None] = []
    events = BackfillStore.events

    async def watched(self: BackfillStore, partition: int, cursor: str | None, *a: Any) -> Any:
        read.append(cursor)
        return await events(self, partition, cursor, *a)

    monkeypatch.setattr(BackfillStore, "events", watched)
    again = await Backfill(app[LEDGER], app[CATALOG], page=1).run(sub, since, until)

    assert again == 2  # two pages were done before the crash
    assert read[0] is not None  # resumed from the cursor, not from the window's start
    assert len(await deliveries_of(client, sub.id)) == 4
    # Finished, the cursor is gone: a later call starts afresh (and finds nothing to do).
    first_read = len(read)
    assert await Backfill(app[LEDGER], app[CATALOG]).run(sub, since, until) == 0
    assert read[first_read] is None


async def test_each_script_call_of_a_backfill_touches_one_slot() -> None:
    # What lets it run on a Redis Cluster: 16 partitions, one event in each.
    sent: list[tuple[Any, ...]] = []

    class Recorder:
        async def run(self, commands: list[tuple[Any, ...]], **_: Any) -> list[int]:
            sent.extend(commands)
            return [1] * len(commands)

    keys = RouterKeys("wr", 16)
    store = BackfillStore(Recorder(), keys, retention=60)  # type: ignore[arg-type]
    for partition in range(16):
        event_id = new_id("evt", mark=partition)
        assert await store.schedule(partition, "sub_x", [(event_id, "ContactCreate")]) == 1
    assert len(sent) == 16
    for command in sent:
        assert command[0] == "EVALSHA"
        script_keys = command[3 : 3 + command[2]]
        assert len({key_slot(key.encode()) for key in script_keys}) == 1


async def test_events_past_the_retention_are_not_in_a_backfills_pages(
    redis: Redis, key_prefix: str
) -> None:
    ledger = make_ledger(redis, key_prefix)  # retention: 60 s

    def event(received_at: int) -> IncomingEvent:
        return IncomingEvent(
            event_id=new_id("evt", received_at),
            body=b"{}",
            event="ContactCreate",
            payload_type="ContactCreate",
            location_id=None,
            company_id=None,
            webhook_id=None,
            body_digest=None,
            received_at=received_at,
            routable=True,
        )

    old = event(now_ms() - 120_000)
    await ledger.accept(old)
    fresh = event(now_ms())
    await ledger.accept(fresh)
    await ledger.trim()
    store = BackfillStore(ledger.runner, ledger.keys, retention=60)
    everything = await store.events(0, None, id_floor("evt", 0), id_floor("evt", now_ms() + 1), 10)
    assert everything == [fresh.event_id]


async def test_backfill_delivers_signed_bodies_to_the_receiver(
    aiohttp_client: Any, redis: Redis, key_prefix: str
) -> None:
    settings = make_settings(key_prefix, partitions=2, retry_schedule=(0.2,), reclaim_after=2)
    client = await aiohttp_client(create_app(settings, redis=redis, run_workers=True))
    async with Receiver() as receiver:
        start = now() - timedelta(seconds=1)
        await subscribe(client, ["contacts.readonly"], url=receiver.url("/first"))
        bodies = [platform_event("ContactCreate", locationId=LOCATION_ID) for _ in range(3)]
        for body in bodies:
            resp = await client.post(
                "/webhooks", data=encode(body), headers={"Content-Type": "application/json"}
            )
            assert resp.status == 202
        await receiver.wait_for("/first", 3)  # dispatched, before `late` existed

        late = await subscribe(client, ["contacts.readonly"], url=receiver.url("/late"))
        await asyncio.sleep(0.3)  # nothing is dispatched to it on its own
        assert receiver.requests("/late") == []
        assert await backfill(client, late["id"], start, now() + timedelta(seconds=1)) == 3
        hits = await receiver.wait_for("/late", 3, deadline=DEADLINE)
        assert sorted(h.body for h in hits) == sorted(encode(b) for b in bodies)
        for hit in hits:
            verify_signature(late["secret"], hit)
        assert await backfill(client, late["id"], start, now() + timedelta(seconds=1)) == 0
        await asyncio.sleep(0.3)
        assert len(receiver.requests("/late")) == 3


async def test_cli_backfill_prints_what_was_scheduled(
    aiohttp_client: Any,
    redis: Redis,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = await aiohttp_client(create_app(make_settings(key_prefix), redis=redis))
    monkeypatch.setenv("ROUTER_URL", str(client.make_url("")).rstrip("/"))
    monkeypatch.setenv("ROUTER_TOKEN", ADMIN_TOKEN)
    start = now() - timedelta(seconds=1)
    await publish(client, "ContactCreate")
    await publish(client, "ContactDelete")
    sub = await subscribe(client, ["contacts.readonly"])
    window = ("--since", iso(start), "--until", iso(now() + timedelta(seconds=1)))

    assert (
        await _cli("subscribers", "backfill", sub["id"], *window, "--event", "ContactDelete") == 0
    )
    assert capsys.readouterr().out.split() == ["scheduled", "1"]
    assert await _cli("subscribers", "backfill", sub["id"], *window, "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"scheduled": 1}
    assert await _cli("subscribers", "backfill", sub["id"], *window[:2], "--until", iso(start)) == 1
    assert "until: must be after since" in capsys.readouterr().err


async def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="webhook-router")
    subscriber_commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return await asyncio.to_thread(args.func, args)
