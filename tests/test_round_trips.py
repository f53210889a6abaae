"""`RoundTrips` (and `CommandRunner` over it, or over a cluster's nodes): batched commands on
held connections, and how they fail.

A held connection is reused for every batch, so each way a round trip can be cut short
(an error reply, a dropped connection, a cancelled caller, a silent server) must leave it
either in step with its replies or disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from router.storage.client import CommandRunner, RoundTrips, open_redis
from tests.conftest import REAL_REDIS_URL, make_settings


async def test_replies_come_in_order_with_error_replies_in_their_places(
    redis: Redis, key_prefix: str
) -> None:
    runner = CommandRunner(redis)
    key, other = f"{{{key_prefix}}}:n", f"{{{key_prefix}:x}}:m"  # two slots on a cluster
    replies = await runner.run(
        [("SET", key, "1"), ("HGET", key, "field"), ("SET", other, "5"), ("INCR", key)],
        raise_on_error=False,
    )
    assert replies[0] == b"OK"
    assert isinstance(replies[1], ResponseError) and "WRONGTYPE" in str(replies[1])
    assert replies[2:] == [b"OK", 2]
    # The connections are still in step: the next batch reads its own replies.
    assert await runner.run([("GET", key), ("GET", other)]) == [b"2", b"5"]


async def test_concurrent_batches_each_get_their_own_replies(redis: Redis) -> None:
    runner = CommandRunner(redis)
    results = await asyncio.gather(
        *(runner.run([("ECHO", f"a{i}"), ("ECHO", f"b{i}")]) for i in range(50))
    )
    assert results == [[f"a{i}".encode(), f"b{i}".encode()] for i in range(50)]


async def test_a_batch_reads_back_each_kind_of_reply_as_redis_py_would(
    redis: Redis, key_prefix: str
) -> None:
    """Replies taken straight from the parser's buffer (`read_replies`) must be what redis-py
    makes of them one by one: every RESP type, error replies in place, replies split across
    socket reads, a batch whose replies outgrow one read."""
    key = f"{{{key_prefix}}}:kinds"
    big = b"x" * 300_000  # several socket reads of redis-py's 64 KiB
    batch = [
        ("DEL", key),
        ("HSET", key, "a", "1", "b", big),
        ("HGETALL", key),
        ("HMGET", key, "a", "missing", "b"),
        ("EVALSHA", "0" * 40, "1", key),
        ("EVAL", "return {1, false, 'x', {2, 'y'}}", "0"),
        ("EVAL", "return redis.error_reply('MINE a refusal')", "0"),
        ("GET", f"{key}:absent"),
        ("ECHO", key),
        ("DEL", key),
    ] * 3
    runner = CommandRunner(redis)
    together = await runner.run(batch, raise_on_error=False)
    one_by_one = [(await runner.run([command], raise_on_error=False))[0] for command in batch]

    def comparable(reply: object) -> object:
        return (type(reply), str(reply)) if isinstance(reply, Exception) else reply

    assert [comparable(r) for r in together] == [comparable(r) for r in one_by_one]
    assert together[3] == [b"1", None, big]
    assert isinstance(together[6], ResponseError) and "MINE a refusal" in str(together[6])
    assert isinstance(together[4], NoScriptError)
    assert together[5] == [1, None, b"x", [2, b"y"]]


@contextlib.asynccontextmanager
async def real_redis(key_prefix: str) -> AsyncIterator[Redis]:
    if not REAL_REDIS_URL:
        pytest.skip("REDIS_URL is not set: needs a real server to drop connections")
    client = open_redis(make_settings(key_prefix, redis_url=REAL_REDIS_URL))
    try:
        yield client
    finally:
        await client.aclose()


async def test_a_connection_the_server_dropped_is_reconnected(key_prefix: str) -> None:
    async with real_redis(key_prefix) as client:
        trips = RoundTrips(client)
        (held_id,) = await trips.execute([("CLIENT", "ID")])
        assert await client.client_kill_filter(_id=held_id) == 1
        assert await trips.execute([("ECHO", "after")]) == [b"after"]
        (new_id,) = await trips.execute([("CLIENT", "ID")])
        assert new_id != held_id


async def test_a_caller_cancelled_midway_leaves_no_reply_behind(key_prefix: str) -> None:
    async with real_redis(key_prefix) as client:
        trips = RoundTrips(client)
        queue = f"{key_prefix}:{{{key_prefix}}}:q"
        # BLPOP keeps the server from answering until the list gets an element.
        waiting = asyncio.create_task(trips.execute([("BLPOP", queue, "2")]))
        await asyncio.sleep(0.2)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await client.rpush(queue, "late")
        # Were the held connection reused in place, this batch would read BLPOP's reply.
        assert await trips.execute([("ECHO", "mine")]) == [b"mine"]
        await client.delete(queue)


async def test_a_reply_slower_than_the_socket_timeout_fails_and_frees_the_connection(
    key_prefix: str,
) -> None:
    if not REAL_REDIS_URL:
        pytest.skip("REDIS_URL is not set: needs a real server to block a reply")
    client = Redis.from_url(REAL_REDIS_URL, socket_timeout=0.3)
    try:
        trips = RoundTrips(client)
        queue = f"{key_prefix}:{{{key_prefix}}}:q"
        started = asyncio.get_running_loop().time()
        with pytest.raises(RedisTimeoutError):
            await trips.execute([("BLPOP", queue, "3")])
        assert asyncio.get_running_loop().time() - started < 2
        await client.rpush(queue, "late")
        assert await trips.execute([("ECHO", "mine")]) == [b"mine"]
        await client.delete(queue)
    finally:
        await client.aclose()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("disconnect", ["done", "under way"])
def test_a_write_on_a_connection_another_task_disconnects_fails_as_a_connection_error(
    key_prefix: str, loop: str, disconnect: str
) -> None:
    # After a failover, a cluster client disconnects a node's pooled connections while
    # another task may be sending on one. That send must fail as a ConnectionError (retried,
    # or 429 at ingest), not as an AttributeError from the cleared writer or (on uvloop,
    # which `serve` runs on) a RuntimeError from the closed transport: a crashed loop, a
    # 500. The router's connections are the same class on one Redis and on a cluster.
    if not REAL_REDIS_URL:
        pytest.skip("REDIS_URL is not set: needs a real server to connect to")
    factory = asyncio.new_event_loop
    if loop == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop

    async def scenario() -> None:
        client = open_redis(make_settings(key_prefix, redis_url=REAL_REDIS_URL))
        conn = await client.connection_pool.get_connection()
        try:
            if disconnect == "done":
                # The send passes its "connected?" check and hands the write to a task of
                # its own; the disconnect runs, all of it, before that task does.
                write = asyncio.create_task(
                    conn.send_packed_command(b"PING\r\n", check_health=False)
                )
                await asyncio.sleep(0)
                await conn.disconnect(nowait=True)
            else:
                # The disconnect has closed the transport and awaits its end before it
                # clears the writer; a send in between finds the writer set, its transport
                # gone.
                conn._writer.close()  # type: ignore[union-attr]
                await asyncio.sleep(0.1)
                write = asyncio.create_task(
                    conn.send_packed_command(b"PING\r\n", check_health=False)
                )
            with pytest.raises(RedisConnectionError):
                await write
        finally:
            await client.connection_pool.release(conn)
            await client.aclose()

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(scenario())
