"""Shared fixtures: a Redis that is fakeredis, a real server when REDIS_URL is set, and a real
Redis Cluster when REDIS_CLUSTER_URL names one of its nodes.

Every test that takes `redis` (directly or through `app`/`client`) runs once per store, so
the same suite passes on all three (on the cluster, with the work spread over partitions).
Each test gets its own key prefix and deletes its keys after, so tests (and people) sharing
one real Redis never see each other's data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import fakeredis
import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestClient, TestServer
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from router.http.app import create_app
from router.http.server import RouterRunner
from router.settings import Settings
from router.storage.client import CommandRunner, Store, connect
from router.storage.history import History
from router.storage.keys import RouterKeys
from router.storage.ledger import Ledger
from subscriptions.keys import SubscriberKeys, key_pattern

ADMIN_TOKEN = "test-admin-token-0123456789"
REAL_REDIS_URL = os.environ.get("REDIS_URL")
CLUSTER_URL = os.environ.get("REDIS_CLUSTER_URL")


_USED_PREFIXES: set[str] = set()


@pytest.fixture
def key_prefix() -> str:
    prefix = "t" + uuid.uuid4().hex[:12]
    _USED_PREFIXES.add(prefix)
    return prefix


@pytest.fixture(scope="session", autouse=True)
def _sweep_real_redis() -> Iterator[None]:
    """Delete every test prefix's keys once more at the end of the session: an app torn down
    after the `redis` fixture's own cleanup may have written a few keys (stream, heartbeat)."""
    yield
    if not REAL_REDIS_URL:
        return
    for prefix in _USED_PREFIXES:
        delete_keys_sync(REAL_REDIS_URL, prefix)


def delete_keys_sync(url: str, prefix: str) -> None:
    """Delete every key of `prefix` on the single Redis at `url`."""
    client = SyncRedis.from_url(url)
    try:
        keys = list(client.scan_iter(match=key_pattern(prefix), count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(params=["fakeredis", "redis", "cluster"])
async def redis(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[Store]:
    if request.param == "fakeredis":
        client: Store = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        yield client
        await client.aclose()
        return
    if request.param == "redis":
        if not REAL_REDIS_URL:
            pytest.skip("REDIS_URL is not set: real-Redis variant skipped")
        client = Redis.from_url(REAL_REDIS_URL)
    else:
        if not CLUSTER_URL:
            pytest.skip("REDIS_CLUSTER_URL is not set: Redis Cluster variant skipped")
        client = await connect(make_settings(key_prefix, redis_url=CLUSTER_URL))
    try:
        yield client
    finally:
        await delete_keys(client, key_prefix)
        await client.aclose()


async def delete_keys(client: Store, prefix: str) -> None:
    """Delete every key of `prefix`, one at a time (a cluster refuses multi-slot deletes)."""
    async for key in client.scan_iter(match=key_pattern(prefix), count=1000):
        await client.delete(key)


def make_ledger(
    redis: Store, key_prefix: str, *, max_backlog: int = 100, partitions: int = 1
) -> Ledger:
    """A ledger on `redis` under `key_prefix`, with a short retention and dedupe window."""
    return Ledger(
        CommandRunner(redis),
        RouterKeys(key_prefix, partitions),
        SubscriberKeys(key_prefix),
        retention=60,
        dedupe_window=60,
        max_backlog=max_backlog,
    )


def make_history(redis: Store, key_prefix: str, *, partitions: int = 1) -> History:
    return History(CommandRunner(redis), RouterKeys(key_prefix, partitions))


def make_settings(key_prefix: str, **overrides: object) -> Settings:
    """Test settings, validated but not read from the environment (model_validate skips it)."""
    values: dict[str, object] = {
        "redis_url": None,
        "admin_token": ADMIN_TOKEN,
        "key_prefix": key_prefix,
        "allow_private_targets": True,  # test receivers listen on 127.0.0.1
        "log_format": "text",
    }
    values.update(overrides)
    return Settings.model_validate(values)


@pytest.fixture
def settings(key_prefix: str) -> Settings:
    return make_settings(key_prefix)


@pytest.fixture
def app(settings: Settings, redis: Redis) -> web.Application:
    return create_app(settings, redis=redis)


@pytest.fixture
async def client(aiohttp_client, app: web.Application) -> TestClient:
    return await aiohttp_client(app)


class ServedTestServer(TestServer):
    """A test server that serves the app as `serve` does: through `RouterRunner` (the error
    envelope for malformed requests, ingest handed to its route without the app's routing)."""

    async def _make_runner(self, **kwargs: object) -> web.AppRunner:
        return RouterRunner(self.app, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def aiohttp_client(aiohttp_client):  # type: ignore[no-untyped-def]
    """pytest-aiohttp's `aiohttp_client`, serving an app through `ServedTestServer`."""

    async def make(target: web.Application | BaseTestServer, **kwargs: object) -> TestClient:
        if isinstance(target, web.Application):
            server_kwargs = kwargs.pop("server_kwargs", None) or {}
            target = ServedTestServer(target, **server_kwargs)  # type: ignore[arg-type]
        return await aiohttp_client(target, **kwargs)

    return make


@pytest.fixture
async def aiohttp_server() -> AsyncIterator[object]:
    """pytest-aiohttp's `aiohttp_server`, serving through `ServedTestServer`."""
    servers: list[ServedTestServer] = []

    async def make(app: web.Application, **kwargs: object) -> ServedTestServer:
        server = ServedTestServer(app, host="127.0.0.1")
        await server.start_server(**kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield make
    while servers:
        await servers.pop().close()


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}
