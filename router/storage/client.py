"""Opens the Redis client the service runs on — the embedded in-memory store (fakeredis) when
`REDIS_URL` is unset, a single Redis, or a Redis Cluster, detected from any of its nodes — and
sends the hot paths' batches of commands (`CommandRunner`).

Clients are opened with `decode_responses=False`: event bodies are stored and delivered byte
for byte, so decoding is the caller's choice, field by field.

Durability: when the store has replicas, a batch that writes what someone relies on ends with
`WAIT` on the same connection as its writes (WAIT covers only its own connection's writes), and
counts as done only once a replica holds them; otherwise it fails as `NotReplicated`, which
callers treat like an unreachable Redis (ingest answers 429, workers retry).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import fakeredis
import hiredis
from redis._parsers import hiredis as redis_hiredis
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.connection import HiredisRespSerializer
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MovedError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from router.settings import Settings, SettingsError
from router.storage.scripts import Command, Script

log = logging.getLogger("router.storage")

Store = Redis | RedisCluster


class NotReplicated(RedisConnectionError):
    """Fewer replicas than required confirmed a write in time: it may or may not survive a
    failover, so it is not acknowledged (the caller retries; dedupe absorbs a repeat)."""


# Errors that mean "Redis cannot be reached or cannot take writes right now": ingest answers
# 429, workers back off. On a cluster: a slot with no reachable master, or redirections that
# did not settle in time.
UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterError,
    ClusterDownError,
    TryAgainError,
    # No node of the cluster answers (SlotNotCoveredError is one of these).
    RedisClusterException,
)

# Error replies of a Redis that is reachable but refusing writes for now: memory full, a
# replica after a failover, persistence failing, a busy script, a cluster reconfiguring.
# redis-py maps some codes to classes and drops the code from their text, so both are checked.
_REFUSING_CLASSES = (ClusterDownError, TryAgainError, ReadOnlyError, OutOfMemoryError)
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
    return isinstance(exc, _REFUSING_CLASSES) or str(exc).startswith(_REFUSING_WRITES)


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


class GuardedWrite:
    """A write on a connection another task is disconnecting fails as a ConnectionError.

    redis-py hands a write with a socket timeout to a task of its own, which runs a loop
    iteration later; its cluster client disconnects a node's idle pooled connections after
    a connection error there (a failover), and a connection taken from the pool meanwhile
    reaches that task with its writer cleared, or closed and not yet cleared. redis-py 8.1
    then raises AttributeError, or uvloop RuntimeError, which no retry or 429 handles: the
    failover fault test crashed the dispatcher and a delivery loop with them. Checking the
    writer and its transport with no await between the check and the write turns both into
    the ConnectionError a dropped connection is.
    """

    _writer: asyncio.StreamWriter | None

    async def _send_packed_command(self, command: Iterable[bytes]) -> None:
        writer = self._writer
        if writer is None or writer.transport.is_closing():
            raise RedisConnectionError("Connection closed by another task before writing")
        writer.writelines(command)
        await writer.drain()


# What redis-py's hiredis parser hands back for a reply not yet complete (redis-py 5.1 on),
# and what hiredis makes of a RESP3 push message (hiredis 3.2 on).
_INCOMPLETE = getattr(redis_hiredis, "NOT_ENOUGH_DATA", None)
_PUSH = getattr(hiredis, "PushNotification", None)


def _buffered_reader(conn: AbstractConnection) -> hiredis.Reader | None:
    """The hiredis reader of `conn`'s parser, when replies may be taken from it directly
    (redis-py's own hiredis parser, as every connection of ours has with hiredis installed)."""
    parser = getattr(conn, "_parser", None)
    reader = getattr(parser, "_reader", None)
    if (
        _INCOMPLETE is not None
        and _PUSH is not None
        and type(parser) is getattr(redis_hiredis, "_AsyncHiredisParser", None)
        and isinstance(reader, hiredis.Reader)
    ):
        return reader
    return None


async def read_replies(conn: AbstractConnection, count: int) -> list[Any]:
    """The next `count` replies on `conn`, an error reply as its `ResponseError` in its
    place.

    redis-py's `read_response` wraps every reply in a timeout, its error handling and three
    calls: about a tenth of an attempt's instructions, each of a batch's commands replying.
    One socket read usually brings a whole batch's replies, so only a wait for data goes
    through `read_response`; replies already read are taken from the parser's hiredis reader
    as they are (the caller bounds the whole with one timeout). As `read_response` does, a
    push message (RESP3; our connections subscribe to none) is passed over, and an error
    reply that says the connection is unusable (LOADING...) is raised."""
    reader = _buffered_reader(conn)
    replies: list[Any] = []
    while len(replies) < count:
        try:
            replies.append(await conn.read_response(timeout=math.inf))
        except ResponseError as exc:
            replies.append(exc)
        while reader is not None and len(replies) < count:
            reply = reader.gets()
            if reply is _INCOMPLETE:
                break
            if isinstance(reply, RedisConnectionError):
                raise reply
            if not isinstance(reply, _PUSH):  # type: ignore[arg-type]
                replies.append(reply)
    return replies


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
        return await read_replies(conn, count)

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


def command_key(command: Command) -> Any:
    """The key a command is routed by: the first key of a script call, the stream of a
    XREADGROUP, else the command's first argument."""
    name = command[0]
    if name == "EVALSHA":
        return command[3]
    if name == "XREADGROUP":
        return command[command.index("STREAMS") + 1]
    return command[1]


class ClusterRoundTrips:
    """Batches for a Redis Cluster: each node's share of a batch goes in one write on one of
    its connections (so a WAIT at its end covers its writes), the nodes in parallel.

    Redirections are followed per command: MOVED updates the slot map and resends, ASK resends
    with ASKING in the same write (never on another connection, which would leave ASKING set
    there), TRYAGAIN (a slot migrating) backs off briefly. A connection error refreshes the
    slot map. Whatever has not settled within `deadline` seconds is raised.
    """

    def __init__(self, cluster: RedisCluster, *, timeout: float, deadline: float = 2.0) -> None:
        self.cluster = cluster
        self.timeout = timeout
        self.deadline = deadline
        self._stale = False

    async def execute(
        self, commands: Sequence[Command], wait: tuple[int, int] | None = None
    ) -> list[Any]:
        """The replies to `commands`, in order (error replies in their places). With `wait`
        (replicas, timeout ms), every node's share ends with WAIT; raises NotReplicated if a
        node's writes reached fewer replicas."""
        replies: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        started = time.monotonic()
        asking: dict[int, ClusterNode] = {}
        while todo:
            if self._stale:
                await self._refresh()
            try:
                groups = self._group(commands, todo, asking)
            except SlotNotCoveredError:
                self._stale = True
                if time.monotonic() - started > self.deadline:
                    raise
                await asyncio.sleep(0.1)
                continue
            results = await asyncio.gather(
                *(
                    self._send(node, [commands[i] for i in idxs], idxs, asking, wait)
                    for node, idxs in groups
                ),
                return_exceptions=True,
            )
            again: list[int] = []
            asking = {}
            failure: BaseException | None = None
            for (_node, idxs), result in zip(groups, results, strict=True):
                if isinstance(result, BaseException):
                    if isinstance(result, NotReplicated) or not isinstance(result, _RETRIED):
                        raise result
                    failure = result
                    again += idxs
                    continue
                for i, reply in zip(idxs, result, strict=True):
                    replies[i] = reply
                    if isinstance(reply, MovedError):
                        await self.cluster.nodes_manager.move_slot(reply)
                        again.append(i)
                    elif isinstance(reply, AskError):
                        asking[i] = self._node(reply.host, reply.port)
                        again.append(i)
                    elif isinstance(reply, TryAgainError):
                        failure = reply
                        again.append(i)
            todo = sorted(again)
            if todo:
                if time.monotonic() - started > self.deadline:
                    if failure is not None:
                        raise failure
                    return replies  # redirections left in place, as error replies
                if failure is not None:
                    if not isinstance(failure, TryAgainError):
                        self._stale = True
                    await asyncio.sleep(0.05)
        return replies

    def _group(
        self, commands: Sequence[Command], todo: list[int], asking: dict[int, ClusterNode]
    ) -> list[tuple[ClusterNode, list[int]]]:
        manager = self.cluster.nodes_manager
        by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
        for i in todo:
            node = asking.get(i) or manager.get_node_from_slot(
                key_slot(_bytes(command_key(commands[i])))
            )
            by_node.setdefault(node.name, (node, []))[1].append(i)
        return list(by_node.values())

    def _node(self, host: str, port: int) -> ClusterNode:
        node = self.cluster.get_node(host, port)
        if node is None:
            node = ClusterNode(host, port, **self.cluster.connection_kwargs)
        return node

    async def _send(
        self,
        node: ClusterNode,
        batch: list[Command],
        idxs: list[int],
        asking: dict[int, ClusterNode],
        wait: tuple[int, int] | None,
    ) -> list[Any]:
        ask = any(i in asking for i in idxs)
        wire: list[Command] = []
        for command in batch:
            if ask:
                wire.append(("ASKING",))
            wire.append(command)
        if wait is not None:
            wire.append(("WAIT", *wait))
        conn = node.acquire_connection()
        try:
            async with asyncio.timeout(self.timeout):
                await conn.send_packed_command([pack_all(wire)])
                out = await read_replies(conn, len(wire))
        except TimeoutError:
            await conn.disconnect(nowait=True)
            raise RedisTimeoutError(f"Timeout talking to {node.name}") from None
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        finally:
            node.release(conn)
        if wait is not None:
            acked = out.pop()
            if isinstance(acked, Exception) or acked < wait[0]:
                raise NotReplicated(f"{node.name}: a write reached {acked} of {wait[0]} replicas")
        return out[1::2] if ask else out

    async def _refresh(self) -> None:
        try:
            await self.cluster.nodes_manager.initialize()
            self._stale = False
        except RedisClusterException:
            self._stale = True  # no node answers yet: the next batch tries again


# A node's batch failing with these is sent again (to the node the refreshed map names).
_RETRIED = (RedisConnectionError, RedisTimeoutError, OSError)


def _bytes(key: Any) -> bytes:
    return key if isinstance(key, bytes) else str(key).encode()


class CommandRunner:
    """Sends batches of commands (script calls among them) in one round trip each: one write
    on a single Redis, one per node of a cluster, all at once."""

    def __init__(
        self, redis: Store, *, min_replicas: int | str = 0, replica_timeout: float = 0.5
    ) -> None:
        self.redis = redis
        self.cluster = isinstance(redis, RedisCluster)
        if isinstance(redis, RedisCluster):
            timeout = redis.connection_kwargs.get("socket_timeout") or 5.0
            self._cluster_trips = ClusterRoundTrips(redis, timeout=timeout)
        else:
            self._round_trips = RoundTrips(redis)
        self._min_replicas = min_replicas
        self._wait_ms = max(1, int(replica_timeout * 1000))

    async def replicas_required(self) -> int:
        """How many replicas must confirm a durable write (`auto` is settled on first use:
        1 if the store has replicas then, else 0)."""
        if self._min_replicas == "auto":
            self._min_replicas = 1 if await self._has_replicas() else 0
            if self._min_replicas:
                log.info("the store has replicas: writes are acknowledged once one holds them")
        return int(self._min_replicas)

    async def _has_replicas(self) -> bool:
        if isinstance(self.redis, RedisCluster):
            return bool(self.redis.get_replicas())
        try:
            info = await self.redis.info("replication")
        except ResponseError:  # the embedded store has no INFO
            return False
        return int(info.get("connected_slaves", 0)) > 0

    async def run(
        self, commands: Sequence[Command], *, raise_on_error: bool = True, durable: bool = False
    ) -> list[Any]:
        """The replies to `commands`, in order; error replies are raised (the first) or, with
        `raise_on_error=False`, returned in their places. `durable` writes are acknowledged
        by the required replicas, or raise NotReplicated. If Redis forgot the scripts (first
        use, a restart, SCRIPT FLUSH, a replica promoted), they are loaded and all is sent
        again: none of the first sending's script calls ran."""
        wait = None
        if durable and (replicas := await self.replicas_required()):
            wait = (replicas, self._wait_ms)
        replies = await self._execute(commands, wait)
        if any(isinstance(r, NoScriptError) for r in replies):
            await self._load_scripts()
            replies = await self._execute(commands, wait)
        if raise_on_error and (
            error := next((r for r in replies if isinstance(r, ResponseError)), None)
        ):
            raise error
        return replies

    async def one(self, command: Command, *, durable: bool = False) -> Any:
        """The reply of one command; an error reply is raised."""
        (reply,) = await self.run([command], durable=durable)
        return reply

    async def _execute(
        self, commands: Sequence[Command], wait: tuple[int, int] | None
    ) -> list[Any]:
        if self.cluster:
            return await self._cluster_trips.execute(commands, wait)
        if wait is None:
            return await self._round_trips.execute(commands)
        *replies, acked = await self._round_trips.execute([*commands, ("WAIT", *wait)])
        if isinstance(acked, Exception) or acked < wait[0]:
            raise NotReplicated(f"a write reached {acked} of {wait[0]} replicas")
        return replies

    async def _load_scripts(self) -> None:
        # On a cluster SCRIPT LOAD goes to every master; replicas hold no scripts, so after a
        # failover the promoted one is given them here, on its first NOSCRIPT.
        for script in Script.registry:
            await self.redis.script_load(script.source)


def _hiredis_packing(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    return type(f"Hiredis{cls.__name__}", (HiredisPacking, GuardedWrite, cls), {})


def open_embedded() -> Redis:
    """The embedded in-memory store: nothing it holds survives the process."""
    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=False)


def open_redis(settings: Settings) -> Redis:
    """A client for a single Redis at `REDIS_URL` (the embedded store when it is unset),
    without the cluster check `connect` makes."""
    return open_embedded() if settings.redis_url is None else _single(settings.redis_url)


def _client_options() -> dict[str, Any]:
    return {
        "decode_responses": False,
        "socket_timeout": 5,
        "socket_connect_timeout": 2,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
    }


async def connect(settings: Settings) -> Store:
    """A client for the configured store: the embedded one when `REDIS_URL` is unset, else a
    `RedisCluster` when the URL names a cluster node, else a plain `Redis`. Only the cluster
    check connects now (any node will do); a single Redis is connected on first use.

    A real Redis gets short timeouts (so a dead server turns into an error in about a second,
    not a hang) and a few quick reconnect retries, after which the caller sees `UNAVAILABLE`.
    Raises SettingsError for a cluster URL naming a database other than 0.
    """
    if settings.redis_url is None:
        return open_embedded()
    url = settings.redis_url
    if not await _is_cluster(url):
        return _single(url)
    if urlsplit(url).path.strip("/") not in ("", "0"):
        raise SettingsError("REDIS_URL: a Redis Cluster has only database 0")
    cluster = RedisCluster.from_url(
        url,
        **_client_options(),
        # A slot map missing a failed master's slots is still worth having: the others serve.
        require_full_coverage=False,
        max_connections=256,
    )
    # Every node the cluster client discovers gets the C packer too.
    cluster.connection_kwargs["connection_class"] = _hiredis_packing(
        cluster.connection_kwargs.get("connection_class") or Connection
    )
    await cluster.initialize()
    return cluster


async def _is_cluster(url: str) -> bool:
    probe = Redis.from_url(url, decode_responses=False, socket_connect_timeout=2, socket_timeout=5)
    try:
        info = await probe.info("cluster")
    except (ResponseError, *UNAVAILABLE):
        return False  # unreachable now: a single Redis is assumed, connected on first use
    finally:
        await probe.aclose()
    return bool(info.get("cluster_enabled"))


def _single(url: str) -> Redis:
    client = Redis.from_url(
        url,
        **_client_options(),
        health_check_interval=15,
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        max_connections=256,
    )
    # The URL picks the connection class (TCP, TLS, unix socket); each gets the C packer.
    pool = client.connection_pool
    pool.connection_class = _hiredis_packing(pool.connection_class)
    return client
