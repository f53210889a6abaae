"""Partitions: the router's work split over hash tags (issue 15), on every store.

A single Redis runs one partition unless told otherwise; these tests run four on fakeredis
and a real Redis (and on a cluster, its own 16), so the splitting, the merging of listings
and the per-partition readers are exercised everywhere, not only where CI has a cluster.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis
from redis.crc import key_slot

from router.http.app import create_app
from router.http.context import HISTORY
from router.storage.keys import (
    RouterKeys,
    delivery_partition,
    event_partition,
    partition_tag,
)
from subscriptions.ids import MAX_MARK, id_mark, new_id
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.payloads import platform_event
from tests.receivers import Receiver

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
THREE_MASTERS = ((0, 5460), (5461, 10922), (10923, 16383))  # `redis-cli --cluster create`


def _slot(tag: str) -> int:
    return key_slot(tag[1:-1].encode())


@pytest.mark.parametrize("partitions", [3, 16, 48, 64])
def test_partitions_spread_evenly_over_three_masters(partitions: int) -> None:
    slots = [_slot(partition_tag("wr", p, partitions)) for p in range(partitions)]
    shares = [sum(lo <= s <= hi for s in slots) for lo, hi in THREE_MASTERS]
    assert max(shares) <= partitions / 3 * 1.15 + 1
    assert min(shares) >= partitions / 3 * 0.85 - 1


def test_a_partitions_tag_does_not_depend_on_how_many_there_are() -> None:
    assert partition_tag("wr", 5, 16) == partition_tag("wr", 5, 64)
    assert partition_tag("wr", 0, 1) == "{wr}"  # one partition keeps the single-tag layout


def test_every_key_of_an_event_and_its_deliveries_shares_its_partitions_slot() -> None:
    keys = RouterKeys("wr", 16)
    event_id = new_id("evt", mark=11)
    delivery_id = f"dlv_{event_id[4:]}abcdefgh"
    assert event_partition(event_id) == delivery_partition(delivery_id) == 11
    slots = {
        key_slot(k.encode())
        for k in (
            keys.event(event_id),
            keys.event_deliveries(event_id),
            keys.delivery(delivery_id),
            keys.delivery_attempts(delivery_id),
            keys.events_stream(11),
            keys.ready_stream(11),
            keys.retry_schedule(11),
            keys.dead(11),
            keys.subscriber_deliveries("sub_x", 11),
            keys.parked("sub_x", 11),
        )
    }
    assert len(slots) == 1


@pytest.mark.parametrize("mark", [0, 1, 15, MAX_MARK])
def test_an_id_keeps_its_mark_and_its_time_order(mark: int) -> None:
    ids = [new_id("evt", mark=mark) for _ in range(200)]
    assert ids == sorted(ids)
    assert {id_mark(i[4:]) for i in ids} == {mark}


@pytest.mark.parametrize(
    "hostile", ["", "dlv_", "dlv_???", "evt_" + "!" * 40, "dlv_UPPERCASE_IS_NOT_BASE32__"]
)
def test_an_id_that_is_not_ours_names_partition_zero(hostile: str) -> None:
    assert delivery_partition(hostile) == event_partition(hostile) == 0


# ---------------------------------------------------------------- the router on 4 partitions


@pytest.fixture
async def router(aiohttp_client: Any, redis: Redis, key_prefix: str) -> TestClient:
    partitions = "auto" if not isinstance(redis, Redis) else 4
    settings = make_settings(
        key_prefix, partitions=partitions, retry_schedule=(0.2,), reclaim_after=2
    )
    return await aiohttp_client(create_app(settings, redis=redis, run_workers=True))


async def _subscribe(client: TestClient, url: str) -> str:
    resp = await client.post(
        "/v1/subscribers",
        json={"name": "p", "url": url, "scopes": ["contacts.readonly"]},
        headers=ADMIN,
    )
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


async def test_events_spread_over_partitions_and_every_one_is_delivered(
    router: TestClient,
) -> None:
    async with Receiver() as receiver:
        await _subscribe(router, receiver.url("/hook"))
        ids = []
        for _ in range(40):
            resp = await router.post("/webhooks", json=platform_event("ContactCreate"))
            ids.append((await resp.json())["event_id"])
        hits = await receiver.wait_for("/hook", 40)
    assert len({event_partition(i) for i in ids}) > 1  # 40 events, 4 or more partitions
    assert sorted(h.header("X-Router-Event-Id") for h in hits) == sorted(ids)


async def test_a_repeated_webhook_id_is_a_duplicate_whatever_partition_it_is_in(
    router: TestClient,
) -> None:
    for n in range(20):
        payload = platform_event("ContactCreate", webhook_id=f"wh_{n}")
        first = await (await router.post("/webhooks", json=payload)).json()
        again = await (await router.post("/webhooks", json=payload)).json()
        assert (first["status"], again["status"]) == ("accepted", "duplicate")
        assert again["event_id"] == first["event_id"]


async def test_listings_merge_partitions_newest_first_and_page_through_each_once(
    router: TestClient,
) -> None:
    async with Receiver() as receiver:
        sub = await _subscribe(router, receiver.url("/hook"))
        for _ in range(25):
            await router.post("/webhooks", json=platform_event("ContactCreate"))
        await receiver.wait_for("/hook", 25)
    seen: list[str] = []
    cursor = None
    while True:
        query = f"?subscriber_id={sub}&limit=7" + (f"&cursor={cursor}" if cursor else "")
        page = await (await router.get("/v1/deliveries" + query, headers=ADMIN)).json()
        seen += [d["id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 25 and seen == sorted(seen, reverse=True)


async def test_replay_requeues_dead_deliveries_of_every_partition(router: TestClient) -> None:
    async with Receiver() as receiver:
        receiver.program("/hook", 500, 500, 500, 500, 500, 500, 500, 500, 500, 500)
        sub = await _subscribe(router, receiver.url("/hook"))
        for _ in range(5):
            await router.post("/webhooks", json=platform_event("ContactCreate"))
        history = router.app[HISTORY]
        deadline = time.monotonic() + 15
        while (await history.depths())["dead"] < 5:
            assert time.monotonic() < deadline, "the deliveries did not die"
            await asyncio.sleep(0.1)
        resp = await router.post(f"/v1/subscribers/{sub}/replay", json={}, headers=ADMIN)
        assert (await resp.json()) == {"requeued": 5}
        await receiver.wait_for("/hook", 15)  # 10 failures, then the 5 replays succeed


async def test_a_store_without_the_replicas_asked_for_refuses_to_acknowledge(
    aiohttp_client: Any, redis: Redis, key_prefix: str
) -> None:
    # More replicas than any of the test stores has (a cluster's masters have one each).
    settings = make_settings(key_prefix, min_replicas=5, replica_timeout=0.05)
    client = await aiohttp_client(create_app(settings, redis=redis))
    resp = await client.post("/webhooks", json=platform_event("ContactCreate"))
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) > 0
