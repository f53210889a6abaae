"""`create_app(settings)`: the only way to build the service (tests call it too)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import orjson
from aiohttp import web
from redis.asyncio import Redis

from router.http.auth import auth_middleware
from router.http.context import (
    CATALOG,
    HISTORY,
    KEYRING,
    LEDGER,
    METRICS,
    OPENAPI,
    OPERATIONS,
    REDIS,
    REFUSALS,
    SETTINGS,
    SUBSCRIBERS,
    VERIFIER,
)
from router.http.errors import error_middleware
from router.http.openapi import build_openapi
from router.http.routes import RESOURCES
from router.http.server import ConnectionLogger
from router.http.verification import RefusalMonitor, announce_failing, build_verifier
from router.services import Services, build_services
from router.settings import Settings
from subscriptions.catalog import Catalog

Lifecycle = Callable[[web.Application], AsyncIterator[None]]


def create_app(
    settings: Settings,
    *,
    redis: Redis | None = None,
    catalog: Catalog | None = None,
    run_workers: bool = False,
    owns_redis: bool | None = None,
) -> web.Application:
    """The aiohttp application for `settings`: operator API, ingest, health and metrics.

    `run_workers` also runs the dispatcher, delivery worker and retry scheduler inside the
    app (what `serve` does). `redis` is the store to use (`serve` connects it; tests share a
    fakeredis or a real server), closed on cleanup if `owns_redis`; when absent the app opens
    a single Redis or the embedded store from the settings, and closes it on cleanup.
    Raises `CatalogError` or `SettingsError` if the catalog or verification keys are bad.
    """
    services = build_services(settings, redis=redis, catalog=catalog, owns_redis=owns_redis)
    app = web.Application(
        middlewares=[error_middleware, auth_middleware],
        client_max_size=settings.max_body_bytes,
        handler_args={"logger": ConnectionLogger()},
    )
    app[SETTINGS] = settings
    app[CATALOG] = services.catalog
    app[REDIS] = services.redis
    app[SUBSCRIBERS] = services.subscribers
    app[KEYRING] = services.keyring
    app[LEDGER] = services.ledger
    app[HISTORY] = services.history
    app[METRICS] = services.metrics
    app[VERIFIER] = build_verifier(settings)
    app[OPERATIONS] = services.operations
    app[REFUSALS] = RefusalMonitor(on_failing=announce_failing(services.operations))
    for resource in RESOURCES:
        resource.add_routes(app)
    app[OPENAPI] = orjson.dumps(
        build_openapi(
            RESOURCES, services.catalog, allow_private_targets=settings.allow_private_targets
        )
    )
    if run_workers:
        app.cleanup_ctx.append(_workers(services))
    # First in, last out: Redis closes only after the workers have stopped.
    app.cleanup_ctx.insert(0, _closing(services))
    return app


def _workers(services: Services) -> Lifecycle:
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        group = services.worker_group()
        await group.start()
        yield
        await group.stop()

    return lifecycle


def _closing(services: Services) -> Lifecycle:
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        yield
        await services.close()

    return lifecycle
