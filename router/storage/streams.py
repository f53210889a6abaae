"""The router's two work queues as Redis streams with consumer groups: accepted events
(group `dispatch`) and ready deliveries (group `deliver`).

Every process consumes under its own consumer name and keeps a heartbeat key alive while it
runs; work pending with a consumer whose heartbeat expired (a killed process) is taken over at
once, and work held longer than `ROUTER_RECLAIM_AFTER` by a live one is taken over too.
Entries are XDEL'd once acknowledged, so a stream's length is its backlog.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from router.storage.client import CommandRunner
from router.storage.keys import RouterKeys

DISPATCH_GROUP = "dispatch"
DELIVER_GROUP = "deliver"
# Consumers of restarted processes that hold nothing are forgotten after this long.
STALE_CONSUMER_MS = 3_600_000
# How often an idle reader polls a store that does not block reads (the embedded one).
EMPTY_READ_POLL_SECONDS = 0.05

Entry = tuple[str, bytes]  # a stream entry's id and its one value


class Stream:
    """One stream and its consumer group."""

    def __init__(
        self, redis: Redis, runner: CommandRunner, keys: RouterKeys, key: str, group: str
    ) -> None:
        self.redis = redis
        self.runner = runner
        self.keys = keys
        self.key = key
        self.group = group

    async def ensure_group(self) -> None:
        """Create the group (and the stream) if missing; safe to repeat. Called at start and
        after Redis answers NOGROUP (a restarted Redis that kept no data)."""
        try:
            await self.redis.xgroup_create(self.key, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, consumer: str, count: int, block_ms: int) -> list[Entry]:
        """New entries for `consumer`, waiting up to `block_ms` for some."""
        # Sent raw: redis-py's reply parsing (a dict per entry) cost more than the read.
        read = ("XREADGROUP", "GROUP", self.group, consumer, "COUNT", count, "BLOCK", block_ms)
        started = time.monotonic()
        reply = await self.runner.one((*read, "STREAMS", self.key, ">"))
        if not reply:
            # Redis answers empty once block_ms has passed; the embedded store answers at once
            # (it does not block this read), and its readers would spin a core if not held here.
            left = block_ms / 1000 - (time.monotonic() - started)
            if left > 0:
                await asyncio.sleep(min(left, EMPTY_READ_POLL_SECONDS))
            return []
        # RESP2: [[stream, entries]]; RESP3 (and fakeredis): {stream: entries}. Each entry is
        # [entry id, [field, value]].
        (entries,) = reply.values() if isinstance(reply, dict) else (e for _, e in reply)
        return [(entry_id.decode(), fields[1]) for entry_id, fields in entries]

    async def claim_stale(self, consumer: str, min_idle_ms: int, count: int) -> list[Entry]:
        """Entries another consumer took but will not finish: its process died (heartbeat
        expired), or it has held them longer than `min_idle_ms`."""
        return await self._claim_from_dead(consumer, count) or await self._claim_idle(
            consumer, min_idle_ms, count
        )

    async def _claim_idle(self, consumer: str, min_idle_ms: int, count: int) -> list[Entry]:
        reply = await self.redis.xautoclaim(
            self.key, self.group, consumer, min_idle_time=min_idle_ms, start_id="0-0", count=count
        )
        return await self._live(reply[1])

    async def _live(
        self, claimed: Sequence[tuple[bytes, dict[bytes, bytes] | None]]
    ) -> list[Entry]:
        out: list[Entry] = []
        for entry_id, fields in claimed:
            if fields:
                out.append((entry_id.decode(), next(iter(fields.values()))))
            else:  # deleted since it was read: nothing left to do but acknowledge it
                await self.redis.xack(self.key, self.group, entry_id)
        return out

    async def _claim_from_dead(self, consumer: str, count: int) -> list[Entry]:
        """Take over entries pending with consumers whose heartbeat has expired (a killed
        process), without waiting for them to look idle; forget those consumers once empty."""
        summary = await self.redis.xpending(self.key, self.group)
        owners = [_name(c["name"]) for c in summary.get("consumers") or []]
        others = [name for name in owners if name != consumer]
        if not others:
            return []
        alive = await self.runner.run(
            [("EXISTS", self.keys.consumer_heartbeat(name)) for name in others]
        )
        out: list[Entry] = []
        for name, is_alive in zip(others, alive, strict=True):
            if is_alive or len(out) >= count:
                continue
            pending = await self.redis.xpending_range(
                self.key, self.group, min="-", max="+", count=count - len(out), consumername=name
            )
            ids = [p["message_id"] for p in pending]
            if ids:
                out += await self._live(
                    await self.redis.xclaim(self.key, self.group, consumer, 0, ids)
                )
            if len(ids) < count:
                await self.redis.xgroup_delconsumer(self.key, self.group, name)
        return out

    async def forget_idle_consumers(self) -> None:
        """Delete consumers of restarted processes that hold nothing (each start adds one)."""
        try:
            consumers = await self.redis.xinfo_consumers(self.key, self.group)
        except ResponseError as exc:
            # No stream or group yet (a process starting, a Redis restarted empty): the
            # readers create them; there is no one to forget.
            if "no such key" in str(exc) or "NOGROUP" in str(exc):
                return
            raise
        for info in consumers:
            if info["pending"] == 0 and info["idle"] > STALE_CONSUMER_MS:
                await self.redis.xgroup_delconsumer(self.key, self.group, _name(info["name"]))


def _name(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Heartbeats:
    """Which consumers' processes are alive."""

    def __init__(self, redis: Redis, keys: RouterKeys) -> None:
        self.redis = redis
        self.keys = keys

    async def beat(self, consumer: str, ttl_ms: int) -> None:
        """Say that `consumer` is alive for the next `ttl_ms`."""
        await self.redis.set(self.keys.consumer_heartbeat(consumer), b"1", px=ttl_ms)

    async def forget(self, consumer: str) -> None:
        """Say that `consumer` is gone: whatever it still holds is taken over at once."""
        await self.redis.delete(self.keys.consumer_heartbeat(consumer))
