"""`create_app(settings)`: the only way to build the service (tests call it too)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from redis.asyncio import Redis

from router import workers
from router.api import RESOURCES
from router.auth import auth_middleware
from router.connections import open_redis
from router.context import (
    CATALOG,
    KEYRING,
    KEYS,
    LEDGER,
    METRICS,
    REDIS,
    REFUSALS,
    SETTINGS,
    SUBSCRIBERS,
    VERIFIER,
)
from router.errors import error_middleware
from router.keyring import Keyring
from router.ledger import Ledger
from router.metrics import Metrics
from router.server import ConnectionLogger
from router.settings import Settings
from router.verification import RefusalMonitor, build_verifier
from subscriptions.catalog import Catalog, load_catalog
from subscriptions.keys import Keys
from subscriptions.store import SubscriberStore


def create_app(
    settings: Settings,
    *,
    redis: Redis | None = None,
    catalog: Catalog | None = None,
    run_workers: bool = False,
) -> web.Application:
    """The aiohttp application for `settings`: operator API, ingest, health and metrics.

    `run_workers` also runs the dispatcher, delivery worker and retry scheduler inside the
    app (what `serve` does). `redis` lets a caller share a client (tests use fakeredis or a
    real server); when absent the app opens one from settings and closes it on cleanup.
    Raises `CatalogError` or `SettingsError` if the catalog or verification keys are bad.
    """
    if catalog is None:
        catalog = load_catalog(settings.catalog_path, settings.catalog_overlay)
    app = web.Application(
        middlewares=[error_middleware, auth_middleware],
        client_max_size=settings.max_body_bytes,
        handler_args={"logger": ConnectionLogger()},
    )
    keys = Keys(settings.key_prefix)
    owns_redis = redis is None
    client = open_redis(settings) if redis is None else redis
    app[SETTINGS] = settings
    app[CATALOG] = catalog
    app[KEYS] = keys
    app[REDIS] = client
    app[SUBSCRIBERS] = SubscriberStore(client, keys, catalog)
    app[KEYRING] = Keyring(client, keys)
    app[LEDGER] = Ledger(
        client,
        keys,
        retention=settings.retention,
        dedupe_window=settings.dedupe_window,
        max_backlog=settings.max_backlog,
    )
    app[METRICS] = Metrics()
    app[VERIFIER] = build_verifier(settings)
    app[REFUSALS] = RefusalMonitor()
    for resource in RESOURCES:
        resource.add_routes(app)
    if run_workers:
        workers.install(app)

    async def redis_lifecycle(app: web.Application) -> AsyncIterator[None]:
        yield
        if owns_redis:
            await client.aclose()

    # First in, last out: Redis closes only after the workers have stopped.
    app.cleanup_ctx.insert(0, redis_lifecycle)
    return app
