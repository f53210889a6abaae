"""Opens the Redis client the service runs on: a real Redis from `REDIS_URL`, or the embedded
in-memory store (fakeredis) when it is unset.

Clients are opened with `decode_responses=False`: event bodies are stored and delivered byte
for byte, so decoding is the caller's choice, field by field.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Sequence
from typing import Any

import fakeredis
import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from router.settings import Settings
from router.storage.scripts import Command, Script

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


_CHECKED = HiredisRespSerializer()


def pack(args: tuple[Any, ...]) -> bytes:
    """One command in the Redis protocol, packed by hiredis (C).

    Straight to hiredis when the command name is one word (every command this service sends);
    anything else (`CONFIG GET`, memoryviews, bad types) goes through redis-py's hiredis
    serializer, which splits names, converts buffers and raises DataError.
    """
    if not (isinstance(args[0], str) and " " in args[0]):
        try:
            return hiredis.pack_command(args)
        except TypeError:
            pass
    return _CHECKED.pack(*args)[0]


def pack_all(commands: Iterable[Iterable[Any]]) -> bytes:
    """Several commands as one buffer: the event loop writes it with a single send."""
    return b"".join(pack(tuple(command)) for command in commands)


class HiredisPacking:
    """Commands packed by hiredis (C) instead of redis-py's pure-Python packer.

    redis-py does this for its synchronous connections but not its asyncio ones, where
    packing arguments was the largest single cost in ingest and delivery profiles.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        return [pack(args)]

    def pack_commands(self, commands: Iterable[Iterable[Any]]) -> list[bytes]:
        return [pack_all(commands)]


class RoundTrips:
    """Batches of commands, each sent in one write on a connection held for the purpose.

    The hot paths (accepts, attempt contexts, outcomes, dispatch) send one small batch per
    round trip, thousands of times a second. Through a redis-py pipeline each also paid for a
    Pipeline object, the pool's locked checkout with its liveness probe, a task to time the
    write and a timeout context per reply: about 40 µs of Python per round trip, a tenth of
    ingest's CPU. Here a batch takes an idle held connection (checked out of the client's pool
    once, so the client's `aclose` still closes it), writes, reads its replies under one
    timeout, and puts the connection back.

    Failures behave as in redis-py: connection errors are retried with the client's `Retry`,
    then raised; a connection that failed or was interrupted mid-reply is disconnected (it
    reconnects on next use), never reused out of step with its replies.
    """

    MAX_HELD = 32  # more concurrent batches than this borrow from the pool and give back

    def __init__(self, redis: Redis) -> None:
        self._pool = redis.connection_pool
        self._timeout: float | None = self._pool.connection_kwargs.get("socket_timeout")
        self._idle: list[AbstractConnection] = []
        self._held = 0

    async def execute(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """The replies to `commands`, in order; an error reply is returned as its
        `ResponseError`, in its place. Raises `UNAVAILABLE` errors."""
        packed = [pack_all(commands)]
        conn, held = await self._take()
        try:
            async with asyncio.timeout(self._timeout):
                replies = await conn.retry.call_with_retry(
                    lambda: self._round_trip(conn, packed, len(commands)),
                    lambda _error: conn.disconnect(),
                )
        except TimeoutError:
            await conn.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout waiting for Redis") from None
        except BaseException:
            # Cancelled or failed between write and last reply: its replies are unaccounted.
            await conn.disconnect(nowait=True)
            raise
        finally:
            await self._give_back(conn, held)
        return replies

    async def _round_trip(
        self, conn: AbstractConnection, packed: list[bytes], count: int
    ) -> list[Any]:
        await conn.send_packed_command(packed)
        replies: list[Any] = []
        for _ in range(count):
            try:
                replies.append(await conn.read_response(timeout=math.inf))
            except ResponseError as exc:
                replies.append(exc)
        return replies

    async def _take(self) -> tuple[AbstractConnection, bool]:
        if self._idle:
            return self._idle.pop(), True
        conn = await self._pool.get_connection()
        if self._held >= self.MAX_HELD:
            return conn, False
        self._held += 1
        # The write and every read are bounded by `execute`'s one timeout instead: with a
        # socket timeout, redis-py starts a task per write to enforce it.
        conn.socket_timeout = None
        return conn, True

    async def _give_back(self, conn: AbstractConnection, held: bool) -> None:
        if held:
            self._idle.append(conn)
        else:
            await self._pool.release(conn)


class CommandRunner:
    """Sends batches of commands (script calls among them) in one round trip each."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._round_trips = RoundTrips(redis)

    async def run(self, commands: Sequence[Command], *, raise_on_error: bool = True) -> list[Any]:
        """The replies to `commands`, sent in one round trip; error replies are raised (the
        first) or, with `raise_on_error=False`, returned in their places. If Redis forgot the
        scripts (first use, a restart, SCRIPT FLUSH), they are loaded and all is sent again:
        Redis forgets every script at once, so no call of the first sending ran."""
        replies = await self._round_trips.execute(commands)
        if any(isinstance(r, NoScriptError) for r in replies):
            for script in Script.registry:
                await self.redis.script_load(script.source)
            replies = await self._round_trips.execute(commands)
        if raise_on_error and (
            error := next((r for r in replies if isinstance(r, ResponseError)), None)
        ):
            raise error
        return replies

    async def one(self, command: Command) -> Any:
        """The reply of one command; an error reply is raised."""
        (reply,) = await self.run([command])
        return reply


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
