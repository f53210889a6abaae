"""Everything the benchmark takes from the project's own packages, in this one module.

The benchmark drives the router from outside (its CLI, its HTTP API, its Redis keys), so a
change of the packages' layout should touch only this file. It needs them for two things:
- the names of the Redis keys it reads (to wait for work, to measure memory, to clean up,
  to count a run's keys per partition and per cluster master);
- registering thousands of subscribers at once (scenario D), through the store's bulk import,
  with payload filters compiled as the store does.
  A handful of subscribers is registered over the router's HTTP API instead
  (`Bench.register`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.crc import key_slot

from router.settings import CLUSTER_PARTITIONS
from router.storage.keys import RouterKeys
from router.storage.streams import DELIVER_GROUP as DELIVER_GROUP  # the ready streams' group
from subscriptions.catalog import load_catalog
from subscriptions.filters import compile_filter
from subscriptions.ids import new_id, now_ms
from subscriptions.keys import SubscriberKeys, tag
from subscriptions.keys import key_pattern as _key_pattern
from subscriptions.models import SigningSecret, Subscriber, generate_secret
from subscriptions.store import SubscriberStore


def key_pattern(prefix: str) -> str:
    """A SCAN pattern matching every key under `prefix`."""
    return _key_pattern(prefix)


def deliveries_index(prefix: str) -> str:
    """The sorted set holding every delivery id the dispatcher made (one partition: scenario
    D runs on a single Redis, where the router uses one)."""
    return RouterKeys(prefix).deliveries(0)


def partitions(cluster: bool, setting: str | None = None) -> int:
    """How many partitions the router splits its work into with `ROUTER_PARTITIONS` set to
    `setting` (unset or `auto`: spread on a Redis Cluster, one elsewhere)."""
    if setting not in (None, "auto"):
        return int(setting)
    return CLUSTER_PARTITIONS if cluster else 1


def work_keys(prefix: str, partitions: int = 1) -> list[str]:
    """The keys holding the router's unfinished work, in every partition: events awaiting
    dispatch, deliveries ready for an attempt (streams), deliveries waiting for a retry (a
    sorted set), in that order per partition."""
    keys = RouterKeys(prefix, partitions)
    return [
        key
        for p in keys.all_partitions()
        for key in (keys.events_stream(p), keys.ready_stream(p), keys.retry_schedule(p))
    ]


def ready_streams(prefix: str, partitions: int = 1) -> list[str]:
    """Every partition's stream of deliveries ready for an attempt; its consumer group is
    `DELIVER_GROUP`, whose pending entries are attempts not yet acknowledged."""
    keys = RouterKeys(prefix, partitions)
    return [keys.ready_stream(p) for p in keys.all_partitions()]


def delivery_key(prefix: str, partitions: int, delivery_id: str) -> str:
    """The hash holding one delivery's state (field `status`)."""
    return RouterKeys(prefix, partitions).delivery(delivery_id)


def events_streams(prefix: str, partitions: int = 1) -> list[str]:
    """Every partition's stream of accepted events awaiting dispatch (with `serve
    --no-workers` nothing dispatches: their lengths add up to the events stored)."""
    keys = RouterKeys(prefix, partitions)
    return [keys.events_stream(p) for p in keys.all_partitions()]


def partition_tags(prefix: str, partitions: int) -> list[str]:
    """Each partition's hash tag (braces included), in partition order."""
    keys = RouterKeys(prefix, partitions)
    return [keys.events_stream(p).removesuffix(":events") for p in keys.all_partitions()]


def registry_tag(prefix: str) -> str:
    """The hash tag of the keys that belong to no partition (the subscriber registry, API
    keys, process heartbeats), braces included."""
    return tag(prefix)


def slot(key_or_tag: str) -> int:
    """The cluster hash slot of a key, or of every key starting with a tag."""
    return key_slot(key_or_tag.encode())


def key_tag(key: bytes) -> str:
    """The hash tag a key of the router starts with (`{<prefix>}` or a partition's
    `{<prefix>:<p>:<salt>}`), braces included."""
    text = key.decode(errors="replace")
    return text[: text.index("}") + 1] if text.startswith("{") and "}" in text else ""


async def bulk_register(
    redis: Redis,
    prefix: str,
    count: int,
    url: str,
    scope: str,
    batch: int = 1000,
    filter_for: Callable[[int], dict[str, Any]] | None = None,
) -> None:
    """Register `count` subscribers holding `scope` and pointing at `url`, `batch` per
    transaction, through the subscriber store's import (as migrations do); subscriber i
    with the payload filter `filter_for(i)`, if given."""
    store = SubscriberStore(redis, SubscriberKeys(prefix), load_catalog())
    now = now_ms()
    secret = SigningSecret(secret=generate_secret())
    template = Subscriber(
        id="", name="", url=url, scopes=[scope], secrets=[secret], created_at=now, updated_at=now
    )

    def one(i: int) -> Subscriber:
        secrets = [SigningSecret(secret=generate_secret())]
        fields: dict[str, Any] = {"id": new_id("sub", now), "name": f"bulk-{i}", "secrets": secrets}
        if filter_for is not None:
            fields["filter"] = compile_filter(filter_for(i))
        return template.model_copy(update=fields)

    for start in range(0, count, batch):
        await store.import_subscribers([one(i) for i in range(start, min(start + batch, count))])
