"""Opens the Redis client the service runs on: a real Redis from `REDIS_URL`, or the embedded
in-memory store (fakeredis) when it is unset.

Clients are opened with `decode_responses=False`: event bodies are stored and delivered byte
for byte, so decoding is the caller's choice, field by field.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import fakeredis
import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from router.settings import Settings

# Errors that mean "Redis cannot be reached right now": ingest answers 429, workers back off.
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)

# Error replies of a Redis that is reachable but refusing writes for now: memory full, a
# replica after a failover, persistence failing, a busy script, a cluster reconfiguring.
_REFUSING_WRITES = (
    "OOM",
    "READONLY",
    "MISCONF",
    "NOREPLICAS",
    "BUSY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
)


def refusing_writes(exc: ResponseError) -> bool:
    """True for an error reply that says "not now" rather than "wrong request": like an
    unreachable Redis, a reason for ingest to answer 429 (the platform retries only that)."""
    return str(exc).startswith(_REFUSING_WRITES)


class HiredisPacking:
    """Commands packed by hiredis (C) instead of redis-py's pure-Python packer.

    redis-py does this for its synchronous connections but not its asyncio ones, where
    packing arguments was the largest single cost in ingest and delivery profiles.
    """

    _checked = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        return [self._pack(args)]

    def pack_commands(self, commands: Iterable[Iterable[Any]]) -> list[bytes]:
        # One buffer per pipeline: the event loop writes it with a single send.
        return [b"".join(self._pack(tuple(cmd)) for cmd in commands)]

    def _pack(self, args: tuple[Any, ...]) -> bytes:
        # Straight to hiredis when the command name is one word (every command this service
        # sends); anything else (`CONFIG GET`, memoryviews, bad types) goes through redis-py's
        # hiredis serializer, which splits names, converts buffers and raises DataError.
        if not (isinstance(args[0], str) and " " in args[0]):
            try:
                return hiredis.pack_command(args)
            except TypeError:
                pass
        return self._checked.pack(*args)[0]


def _hiredis_packing(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    return type(f"Hiredis{cls.__name__}", (HiredisPacking, cls), {})


def open_redis(settings: Settings) -> Redis:
    """A client for the configured store; it connects lazily, on first use.

    A real Redis gets short timeouts (so a dead server turns into an error in about a second,
    not a hang) and a few quick reconnect retries, after which the caller sees `UNAVAILABLE`.
    """
    if settings.redis_url is None:
        return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=False)
    client = Redis.from_url(
        settings.redis_url,
        decode_responses=False,
        socket_timeout=5,
        socket_connect_timeout=2,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        max_connections=256,
    )
    # The URL picks the connection class (TCP, TLS, unix socket); each gets the C packer.
    pool = client.connection_pool
    pool.connection_class = _hiredis_packing(pool.connection_class)
    return client
