"""The services a process runs on, built once from the settings: for `serve` (the HTTP app
wires them in, `router.http.app`) and for `worker` (which runs the pipeline alone)."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from router.core.metrics import Metrics
from router.pipeline.workers import WorkerGroup
from router.settings import Settings
from router.storage.client import CommandRunner, open_redis
from router.storage.history import History
from router.storage.keyring import Keyring
from router.storage.keys import RouterKeys
from router.storage.ledger import Ledger
from subscriptions.catalog import Catalog, load_catalog
from subscriptions.keys import SubscriberKeys
from subscriptions.store import SubscriberStore


@dataclass(frozen=True)
class Services:
    settings: Settings
    catalog: Catalog
    redis: Redis
    subscribers: SubscriberStore
    keyring: Keyring
    ledger: Ledger
    history: History
    metrics: Metrics
    owns_redis: bool  # opened here from the settings, so closed here too

    def worker_group(self) -> WorkerGroup:
        """The dispatcher, delivery worker and schedulers of one process."""
        return WorkerGroup(
            settings=self.settings,
            catalog=self.catalog,
            store=self.subscribers,
            ledger=self.ledger,
            metrics=self.metrics,
        )

    async def close(self) -> None:
        if self.owns_redis:
            await self.redis.aclose()


def build_services(
    settings: Settings, *, redis: Redis | None = None, catalog: Catalog | None = None
) -> Services:
    """Everything a process needs, on `redis` if given (tests share a client), else on the
    store the settings name. Raises `CatalogError` if the catalog cannot be loaded."""
    if catalog is None:
        catalog = load_catalog(settings.catalog_path, settings.catalog_overlay)
    client = open_redis(settings) if redis is None else redis
    keys = RouterKeys(settings.key_prefix)
    subscriber_keys = SubscriberKeys(settings.key_prefix)
    runner = CommandRunner(client)
    return Services(
        settings=settings,
        catalog=catalog,
        redis=client,
        subscribers=SubscriberStore(client, subscriber_keys, catalog),
        keyring=Keyring(client, keys),
        ledger=Ledger(
            runner,
            keys,
            subscriber_keys,
            retention=settings.retention,
            dedupe_window=settings.dedupe_window,
            max_backlog=settings.max_backlog,
        ),
        history=History(runner, keys),
        metrics=Metrics(),
        owns_redis=redis is None,
    )
