"""The services a process runs on, built once from the settings: for `serve` (the HTTP app
wires them in, `router.http.app`) and for `worker` (which runs the pipeline alone)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from redis.asyncio import RedisCluster

from router.core import tracing
from router.core.metrics import Metrics
from router.pipeline.operational import OperationalEvents
from router.pipeline.workers import WorkerGroup
from router.settings import CLUSTER_PARTITIONS, Settings
from router.storage.client import CommandRunner, Store, connect, open_redis
from router.storage.history import History
from router.storage.keyring import Keyring
from router.storage.keys import RouterKeys
from router.storage.ledger import Ledger
from subscriptions.catalog import Catalog, load_catalog
from subscriptions.keys import SubscriberKeys
from subscriptions.store import SubscriberStore

# Seconds a stopping process waits for its queued operational events to be stored.
OPERATIONS_CLOSE_TIMEOUT = 2.0


@dataclass(frozen=True)
class Services:
    settings: Settings
    catalog: Catalog
    redis: Store
    subscribers: SubscriberStore
    keyring: Keyring
    ledger: Ledger
    history: History
    metrics: Metrics
    owns_redis: bool  # opened here from the settings, so closed here too

    @cached_property
    def operations(self) -> OperationalEvents:
        """The router's own events (router.*), emitted by this process."""
        return OperationalEvents(self.ledger, self.metrics)

    def worker_group(self) -> WorkerGroup:
        """The dispatcher, delivery worker and schedulers of one process."""
        return WorkerGroup(
            settings=self.settings,
            catalog=self.catalog,
            store=self.subscribers,
            ledger=self.ledger,
            metrics=self.metrics,
            operations=self.operations,
        )

    async def close(self) -> None:
        await self.operations.close(OPERATIONS_CLOSE_TIMEOUT)
        if self.owns_redis:
            await self.redis.aclose()


async def connect_services(settings: Settings) -> Services:
    """The services on the store `REDIS_URL` names, a Redis Cluster detected (`connect`)."""
    return build_services(settings, redis=await connect(settings), owns_redis=True)


def partitions_for(settings: Settings, redis: Store) -> int:
    """`ROUTER_PARTITIONS`, with `auto` settled: spread on a cluster, one slot otherwise."""
    if settings.partitions != "auto":
        return settings.partitions
    return CLUSTER_PARTITIONS if isinstance(redis, RedisCluster) else 1


def build_services(
    settings: Settings,
    *,
    redis: Store | None = None,
    catalog: Catalog | None = None,
    owns_redis: bool | None = None,
) -> Services:
    """Everything a process needs, on `redis` if given (tests share a client; `owns_redis`
    says whether closing the services closes it), else on a single Redis or the embedded
    store as the settings say. Raises `CatalogError` if the catalog cannot be loaded."""
    if catalog is None:
        catalog = load_catalog(settings.catalog_path, settings.catalog_overlay)
    catalog = catalog.with_router_scope()
    client = open_redis(settings) if redis is None else redis
    keys = RouterKeys(settings.key_prefix, partitions_for(settings, client))
    subscriber_keys = SubscriberKeys(settings.key_prefix)
    runner = CommandRunner(
        client,
        min_replicas=settings.min_replicas,
        replica_timeout=settings.replica_timeout,
    )
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
            traced=tracing.enabled(),
        ),
        history=History(runner, keys),
        metrics=Metrics(),
        owns_redis=redis is None if owns_redis is None else owns_redis,
    )
