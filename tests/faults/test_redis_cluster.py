"""The router on a real Redis Cluster (3 masters, 3 replicas, 16 partitions, writes
acknowledged once a replica holds them) while the cluster or the router breaks mid-burst:
nothing acknowledged is lost, and ingest never answers 5xx (429 with Retry-After while a slot
has no master, which the sender retries as the platform does)."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.crc import key_slot

from router.storage.keys import partition_tag
from subscriptions.keys import tag

from .harness import (
    Cluster,
    LoadResult,
    RedisClusterNodes,
    burst,
    mixed_payloads,
    read_records,
    register_standard,
    wait_until,
)

pytestmark = pytest.mark.faults

PARTITIONS = 16  # the router's default on a cluster, stated so the test knows the slots
DELIVERY_BOUND = 300.0  # seconds for every acknowledged event to arrive: generous, a loaded
# 2-core machine runs six Redis nodes, the router and the load generator here


def partition_slots(c: Cluster) -> set[int]:
    return {key_slot(partition_tag(c.prefix, p, PARTITIONS).encode()) for p in range(PARTITIONS)}


async def test_master_killed_mid_burst_loses_no_acknowledged_event(
    redis_cluster: RedisClusterNodes, cluster, report
) -> None:
    """SIGKILL the master holding the subscriber registry (and its share of the partitions)
    a third of the way into 5,000 events; its replica takes over; the killed node is started
    again (it rejoins as a replica) once the failover is done."""
    events = 5000
    started = time.monotonic()
    c = cluster(redis=redis_cluster.url, ROUTER_PARTITIONS=str(PARTITIONS))
    receiver = await c.receiver()
    serve = await c.serve()
    ledger = await register_standard(c, receiver)
    registry_slot = key_slot(tag(c.prefix).encode())
    victim = redis_cluster.master_of(registry_slot)
    assert victim is not None and victim.slots & partition_slots(c), (
        "the victim holds none of the partitions"
    )
    load = LoadResult()
    sending = asyncio.create_task(
        burst(f"{c.base_url}/webhooks", mixed_payloads(events), load, retry_for=240)
    )
    assert await wait_until(lambda: len(load.accepted) >= events // 3, 120)
    redis_cluster.kill(victim.port)
    accepted_at_kill = len(load.accepted)
    killed_at = time.monotonic()

    def taken_over() -> bool:
        master = redis_cluster.master_of(registry_slot)
        return master is not None and master.port != victim.port

    assert await wait_until(taken_over, 60, interval=0.5), "no replica took over"
    failover_seconds = time.monotonic() - killed_at
    redis_cluster.restart(victim.port)
    await sending

    assert await ledger.wait_complete(load, DELIVERY_BOUND), sorted(ledger.missing(load))[:10]
    await asyncio.sleep(1.0)  # stragglers to the outsider, if any were sent
    tally = ledger.tally(load)
    report(
        tally.line(
            f"cluster master SIGKILL mid-burst ({events} events)",
            time.monotonic() - started,
            f"accepted-before-kill={accepted_at_kill} failover={failover_seconds:.1f}s "
            f"error-logs={len(c.errors_in_logs())} "
            f"429s={load.statuses[429]} 5xx={load.server_errors} "
            f"conn-errors={load.connection_errors}",
        )
    )
    assert serve.alive
    assert load.server_errors == 0 and load.connection_errors == 0, load.statuses
    assert load.given_up == 0 and len(load.accepted) == events, load.statuses
    assert tally.lost == 0
    assert tally.trespass == 0
    errors = c.errors_in_logs()  # a loop that crashed and was restarted, say
    assert not errors, errors[:3]


async def test_worker_killed_mid_burst_on_a_cluster_leaves_its_work_to_the_other(
    redis_cluster: RedisClusterNodes, cluster, report
) -> None:
    """`serve --no-workers` and two workers, all reading every partition; one worker is
    SIGKILLed once half the deliveries arrived; the other reclaims what it held."""
    events = 3000
    started = time.monotonic()
    c = cluster(redis=redis_cluster.url, ROUTER_PARTITIONS=str(PARTITIONS))
    receiver = await c.receiver()
    await c.serve(workers=False)
    doomed = await c.worker()
    survivor = await c.worker()
    ledger = await register_standard(c, receiver)
    load = LoadResult()
    sending = asyncio.create_task(
        burst(f"{c.base_url}/webhooks", mixed_payloads(events), load, retry_for=240)
    )
    assert await wait_until(lambda: len(read_records([receiver])) >= events // 2, 180)
    doomed.kill()
    delivered_at_kill = len(read_records([receiver]))
    await sending

    assert await ledger.wait_complete(load, DELIVERY_BOUND), sorted(ledger.missing(load))[:10]
    await asyncio.sleep(1.0)
    tally = ledger.tally(load)
    report(
        tally.line(
            "cluster worker SIGKILL mid-burst (1 of 2)",
            time.monotonic() - started,
            f"delivered-before-kill={delivered_at_kill} 429s={load.statuses[429]} "
            f"error-logs={len(c.errors_in_logs())}",
        )
    )
    assert survivor.alive
    assert load.server_errors == 0 and len(load.accepted) == events, load.statuses
    assert tally.lost == 0
    assert tally.trespass == 0
    errors = c.errors_in_logs()  # a loop that crashed and was restarted, say
    assert not errors, errors[:3]


async def test_slots_resharded_during_a_burst_lose_nothing(
    redis_cluster: RedisClusterNodes, cluster, report
) -> None:
    """`redis-cli --cluster reshard` moves 3,000 slots (three partitions among them, keys and
    all) from one master to another while events keep arriving: the router follows ASK and
    MOVED; nothing acknowledged is lost, nothing answered 5xx. The sender keeps sending,
    in rounds of 500 events, until the reshard is done, and one round more."""
    started = time.monotonic()
    c = cluster(redis=redis_cluster.url, ROUTER_PARTITIONS=str(PARTITIONS))
    receiver = await c.receiver()
    serve = await c.serve()
    ledger = await register_standard(c, receiver)
    masters = sorted((n for n in redis_cluster.nodes() if n.master), key=lambda n: min(n.slots))
    source, target = masters[0], masters[1]
    moving = set(sorted(source.slots)[:3000])  # reshard takes the source's lowest slots
    moved_partitions = len(moving & partition_slots(c))
    assert moved_partitions >= 2, "the slots moved hold too few partitions to matter"

    load = LoadResult()
    url = f"{c.base_url}/webhooks"
    await burst(url, mixed_payloads(500), load, rate=250)  # work in the slots before they move
    resharding = asyncio.create_task(redis_cluster.reshard(source, target, len(moving)))
    rounds_during = 0
    while not resharding.done():
        await burst(url, mixed_payloads(500), load, rate=250, retry_for=240)
        rounds_during += 1
    output = await resharding
    await burst(url, mixed_payloads(500), load, rate=250, retry_for=240)
    now_on_target = {n.id for n in redis_cluster.nodes() if moving <= n.slots}
    assert now_on_target == {target.id}, output[-2000:]

    assert await ledger.wait_complete(load, DELIVERY_BOUND), sorted(ledger.missing(load))[:10]
    await asyncio.sleep(1.0)
    tally = ledger.tally(load)
    report(
        tally.line(
            "cluster reshard of 3000 slots mid-burst",
            time.monotonic() - started,
            f"partitions-moved={moved_partitions} rounds-during-reshard={rounds_during} "
            f"429s={load.statuses[429]} 5xx={load.server_errors} "
            f"error-logs={len(c.errors_in_logs())}",
        )
    )
    assert serve.alive
    assert rounds_during >= 1
    assert load.server_errors == 0 and load.given_up == 0, load.statuses
    assert len(load.accepted) == load.sent, load.statuses
    assert tally.lost == 0
    assert tally.trespass == 0
    errors = c.errors_in_logs()  # a loop that crashed and was restarted, say
    assert not errors, errors[:3]
