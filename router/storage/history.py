"""What operators read and replay: stored events, deliveries and their attempts, listings
over the delivery indexes, requeues, and queue depths.

Delivery ids begin with their event's time (`router.core.records.delivery_id_for`), so every
delivery index is a sorted set of equal scores read in id order: cursors are ids, "since" is
a lexicographic lower bound, and entries past the retention are trimmed by their id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson

from router.core.records import DeliveryStatus, work_member
from router.storage.client import CommandRunner
from router.storage.keys import RouterKeys
from router.storage.scripts import retries
from subscriptions.ids import id_floor, now_ms

# Index entries examined per listing page when filters drop most of them.
SCAN_PER_PAGE = 1000
REPLAY_PAGE = 500


class DeliveryPage(NamedTuple):
    items: list[dict[str, str]]
    next_cursor: str | None


def decode_hash(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


class History:
    def __init__(self, runner: CommandRunner, keys: RouterKeys) -> None:
        self.runner = runner
        self.redis = runner.redis
        self.keys = keys

    async def event(self, event_id: str) -> dict[str, Any] | None:
        """The stored event's fields, its raw `body` as bytes; None once it has expired."""
        raw = await self.redis.hgetall(self.keys.event(event_id))
        if not raw:
            return None
        body = raw.pop(b"body", b"")
        return decode_hash(raw) | {"id": event_id, "body": body}

    async def event_deliveries(self, event_id: str) -> list[dict[str, str]]:
        """The deliveries made for one event, in id order."""
        index = self.keys.event_deliveries(event_id)
        return await self.deliveries(await self._page(index, None, 10_000, newest_first=False))

    async def delivery(self, delivery_id: str) -> dict[str, str] | None:
        raw = await self.redis.hgetall(self.keys.delivery(delivery_id))
        return decode_hash(raw) | {"id": delivery_id} if raw else None

    async def deliveries(self, delivery_ids: Sequence[str]) -> list[dict[str, str]]:
        """The deliveries among `delivery_ids` that still exist, in that order."""
        if not delivery_ids:
            return []
        rows = await self.runner.run([("HGETALL", self.keys.delivery(d)) for d in delivery_ids])
        return [_hash(r) | {"id": d} for d, r in zip(delivery_ids, rows, strict=True) if r]

    async def attempts(self, delivery_id: str) -> list[dict[str, Any]]:
        raw = await self.redis.lrange(self.keys.delivery_attempts(delivery_id), 0, -1)
        return [orjson.loads(a) for a in raw]

    async def list_deliveries(
        self,
        *,
        subscriber_id: str | None,
        status: DeliveryStatus | None,
        event: str | None,
        limit: int,
        cursor: str | None,
    ) -> DeliveryPage:
        """Deliveries newest first, filtered, at most `limit` after `cursor`. The narrowest
        index is read (a subscriber's, the dead set, or all); a page examines at most
        SCAN_PER_PAGE entries, so a filter that matches little returns a short page with a
        cursor to go on from."""
        if subscriber_id:
            index = self.keys.subscriber_deliveries(subscriber_id)
        elif status is DeliveryStatus.dead:
            index = self.keys.dead
        else:
            index = self.keys.deliveries
        items: list[dict[str, str]] = []
        scanned = 0
        while len(items) < limit and scanned < SCAN_PER_PAGE:
            ids = await self._page(index, cursor, limit, newest_first=True)
            if not ids:
                return DeliveryPage(items, None)
            scanned += len(ids)
            for row in await self.deliveries(ids):
                if status and row["status"] != status.value:
                    continue
                if event and row.get("event") != event:
                    continue
                items.append(row)
                if len(items) == limit:
                    return DeliveryPage(items, row["id"])
            cursor = ids[-1]
        return DeliveryPage(items, cursor)

    async def replay(self, subscriber_id: str, status: DeliveryStatus, since_ms: int | None) -> int:
        """Requeue every delivery of a subscriber in `status` (of events received at or after
        `since_ms`, if given), a page at a time; returns how many."""
        index = self.keys.subscriber_deliveries(subscriber_id)
        cursor = id_floor("dlv", since_ms) if since_ms is not None else None
        requeued = 0
        while ids := await self._page(index, cursor, REPLAY_PAGE, newest_first=False):
            cursor = ids[-1]
            rows = await self.deliveries(ids)
            requeued += await self.requeue([r["id"] for r in rows if r["status"] == status.value])
        return requeued

    async def requeue(self, delivery_ids: Sequence[str]) -> int:
        """Give each delivery a fresh round of the retry schedule, starting now.

        Works on any state but `pending` (already queued or in flight: queueing it again
        would run two attempts at once); returns how many were requeued.
        """
        rows = [
            r
            for r in await self.deliveries(delivery_ids)
            if r["status"] != DeliveryStatus.pending.value
        ]
        if not rows:
            return 0
        k = self.keys
        now = now_ms()
        async with self.redis.pipeline(transaction=True) as pipe:
            for row in rows:
                member = work_member(row["id"], row["subscriber_id"], row["event_id"])
                pipe.hset(
                    k.delivery(row["id"]),
                    mapping={
                        "status": DeliveryStatus.pending.value,
                        "schedule_index": 0,
                        "updated_at": now,
                        "reason": "",
                    },
                )
                pipe.zrem(k.dead, row["id"])
                pipe.zadd(k.retry_schedule, {member: now})
            await pipe.execute()
        await self.runner.one(retries.move_due_command(k, now=now_ms(), limit=1000))
        return len(rows)

    async def depths(self) -> dict[str, int]:
        """Queue depths for metrics: ready, retry, dead, dispatch backlog, open breakers."""
        k = self.keys
        ready, retry, dead, backlog, breakers = await self.runner.run(
            [
                ("XLEN", k.ready_stream),
                ("ZCARD", k.retry_schedule),
                ("ZCARD", k.dead),
                ("XLEN", k.events_stream),
                ("SCARD", k.open_breakers),
            ]
        )
        return {
            "ready": ready,
            "retry": retry,
            "dead": dead,
            "dispatch": backlog,
            "open_breakers": breakers,
        }

    async def _page(
        self, index: str, after: str | None, count: int, *, newest_first: bool
    ) -> list[str]:
        """Up to `count` ids of a lexicographic delivery index, past the cursor `after`."""
        if newest_first:
            upper = f"({after}" if after else "+"
            raw = await self.redis.zrevrangebylex(index, upper, "-", start=0, num=count)
        else:
            lower = f"({after}" if after else "-"
            raw = await self.redis.zrangebylex(index, lower, "+", start=0, num=count)
        return [r.decode() for r in raw]


def _hash(raw: list[bytes] | dict[bytes, bytes]) -> dict[str, str]:
    """HGETALL's reply, decoded: a dict under RESP3 (and fakeredis), a flat list under RESP2."""
    if isinstance(raw, dict):
        return decode_hash(raw)
    return {raw[i].decode(): raw[i + 1].decode() for i in range(0, len(raw), 2)}
