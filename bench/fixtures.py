"""Everything the benchmark takes from the project's own packages, in this one module.

The benchmark drives the router from outside (its CLI, its HTTP API, its Redis keys), so a
change of the packages' layout should touch only this file. It needs them for two things:
- the names of the Redis keys it reads (to wait for work, to measure memory, to clean up);
- registering thousands of subscribers at once (scenario D), through the store's bulk import.
  A handful of subscribers is registered over the router's HTTP API instead
  (`Bench.register`).
"""

from __future__ import annotations

from redis.asyncio import Redis

from router.storage.keys import RouterKeys
from subscriptions.catalog import load_catalog
from subscriptions.ids import new_id, now_ms
from subscriptions.keys import SubscriberKeys
from subscriptions.keys import key_pattern as _key_pattern
from subscriptions.models import SigningSecret, Subscriber, generate_secret
from subscriptions.store import SubscriberStore


def key_pattern(prefix: str) -> str:
    """A SCAN pattern matching every key under `prefix`."""
    return _key_pattern(prefix)


def deliveries_index(prefix: str) -> str:
    """The sorted set holding every delivery id the dispatcher made (one partition: the
    benchmark runs on a single Redis, where the router uses one)."""
    return RouterKeys(prefix).deliveries(0)


def work_keys(prefix: str) -> tuple[str, str, str]:
    """The keys holding the router's unfinished work: events awaiting dispatch, deliveries
    ready for an attempt, deliveries waiting for a retry."""
    keys = RouterKeys(prefix)
    return keys.events_stream(0), keys.ready_stream(0), keys.retry_schedule(0)


async def bulk_register(
    redis: Redis, prefix: str, count: int, url: str, scope: str, batch: int = 1000
) -> None:
    """Register `count` subscribers holding `scope` and pointing at `url`, `batch` per
    transaction, through the subscriber store's import (as migrations do)."""
    store = SubscriberStore(redis, SubscriberKeys(prefix), load_catalog())
    now = now_ms()
    secret = SigningSecret(secret=generate_secret())
    template = Subscriber(
        id="", name="", url=url, scopes=[scope], secrets=[secret], created_at=now, updated_at=now
    )

    def one(i: int) -> Subscriber:
        secrets = [SigningSecret(secret=generate_secret())]
        return template.model_copy(
            update={"id": new_id("sub", now), "name": f"bulk-{i}", "secrets": secrets}
        )

    for start in range(0, count, batch):
        await store.import_subscribers([one(i) for i in range(start, min(start + batch, count))])
