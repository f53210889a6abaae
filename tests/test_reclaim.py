"""Work a dead process had taken is taken over at once; a live one's is left alone."""

from __future__ import annotations

from redis.asyncio import Redis

from router.storage.ledger import Ledger
from tests.conftest import make_ledger


async def queue_ready(ledger: Ledger, n: int) -> None:
    await ledger.ensure_groups()
    for i in range(n):
        await ledger.redis.xadd(ledger.keys.ready_stream(0), {"m": f"dlv_{i} sub_a evt_{i}"})


async def test_entries_of_a_consumer_without_heartbeat_are_claimed_at_once(
    redis: Redis, key_prefix: str
) -> None:
    ledger = make_ledger(redis, key_prefix)
    await queue_ready(ledger, 3)
    taken = await ledger.read_ready(0, "killed", 10, 0)
    assert len(taken) == 3

    claimed = await ledger.claim_stale_ready(0, "survivor", min_idle_ms=3_600_000)

    assert sorted(i.delivery_id for i in claimed) == ["dlv_0", "dlv_1", "dlv_2"]


async def test_entries_of_a_live_consumer_are_left_alone(redis: Redis, key_prefix: str) -> None:
    ledger = make_ledger(redis, key_prefix)
    await queue_ready(ledger, 2)
    await ledger.heartbeats.beat("busy", 10_000)
    await ledger.read_ready(0, "busy", 10, 0)

    claimed = await ledger.claim_stale_ready(0, "other", min_idle_ms=3_600_000)

    assert claimed == []


async def test_a_consumer_that_says_it_is_gone_hands_its_work_over(
    redis: Redis, key_prefix: str
) -> None:
    ledger = make_ledger(redis, key_prefix)
    await queue_ready(ledger, 1)
    await ledger.heartbeats.beat("draining", 10_000)
    await ledger.read_ready(0, "draining", 10, 0)
    await ledger.heartbeats.forget("draining")

    claimed = await ledger.claim_stale_ready(0, "other", min_idle_ms=3_600_000)

    assert [i.delivery_id for i in claimed] == ["dlv_0"]


async def test_events_of_a_dead_dispatcher_are_claimed_at_once(
    redis: Redis, key_prefix: str
) -> None:
    ledger = make_ledger(redis, key_prefix)
    await ledger.ensure_groups()
    await redis.xadd(ledger.keys.events_stream(0), {"e": "evt_1"})
    await ledger.read_events(0, "killed", 10, 0)

    claimed = await ledger.claim_stale_events(0, "survivor", min_idle_ms=3_600_000)

    assert [event_id for _, event_id in claimed] == ["evt_1"]


async def test_work_handed_back_at_shutdown_is_readable_by_another_worker_at_once(
    redis: Redis, key_prefix: str
) -> None:
    ledger = make_ledger(redis, key_prefix)
    await queue_ready(ledger, 2)
    taken = await ledger.read_ready(0, "draining", 10, 0)

    await ledger.hand_back(taken)

    again = await ledger.read_ready(0, "other", 10, 0)
    assert sorted(i.delivery_id for i in again) == ["dlv_0", "dlv_1"]
    assert (await redis.xpending(ledger.keys.ready_stream(0), "deliver"))["pending"] == 2
