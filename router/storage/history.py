"""What operators read and replay: stored events, deliveries and their attempts, listings
over the delivery indexes, requeues, and queue depths.

Delivery ids begin with their event's time (`router.core.records.delivery_id_for`), so every
delivery index, and the event index, is a sorted set of equal scores read in id order:
cursors are ids, "since" and "until" are lexicographic bounds (a time window costs no more
than a page), and entries past the retention are trimmed by their id. Each partition keeps
its own indexes; a listing reads a page from each and merges them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from router.core.records import DeliveryStatus, EventStatus, delivery_id_for, event_id_of
from router.storage.client import CommandRunner
from router.storage.keys import RouterKeys, by_partition, delivery_partition
from router.storage.ledger import MOVE_DUE_LIMIT
from router.storage.scripts import requeue, retries
from subscriptions.ids import id_floor, now_ms

# Index entries examined per listing page when filters drop most of them.
SCAN_PER_PAGE = 1000
REPLAY_PAGE = 500


# The event fields a listing shows (never the body, which may be large).
EVENT_FIELDS = (
    "event",
    "payload_type",
    "status",
    "location_id",
    "company_id",
    "webhook_id",
    "received_at",
)


class DeliveryPage(NamedTuple):
    items: list[dict[str, str]]
    next_cursor: str | None


@dataclass(frozen=True)
class Window:
    """Ids created at or after `since_ms` and before `until_ms` (ms since the epoch; None:
    unbounded), as bounds on an index of `prefix` ids."""

    since_ms: int | None = None
    until_ms: int | None = None

    def floor(self, prefix: str) -> str | None:
        return None if self.since_ms is None else id_floor(prefix, self.since_ms)

    def ceiling(self, prefix: str) -> str | None:
        return None if self.until_ms is None else id_floor(prefix, self.until_ms)


@dataclass(frozen=True)
class EventFilter:
    """What an event listing keeps; None fields keep everything."""

    event: str | None = None
    location_id: str | None = None
    company_id: str | None = None
    status: EventStatus | None = None

    def keeps(self, row: dict[str, str]) -> bool:
        return (
            (self.event is None or row.get("event") == self.event)
            and (self.location_id is None or row.get("location_id") == self.location_id)
            and (self.company_id is None or row.get("company_id") == self.company_id)
            and (self.status is None or row.get("status") == self.status.value)
        )


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
        return await self.deliveries(await self._page([index], None, 10_000, newest_first=False))

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
        window: Window | None = None,
    ) -> DeliveryPage:
        """Deliveries newest first, filtered, at most `limit` after `cursor`, of events
        received within `window`. The narrowest index is read (a subscriber's, the dead set,
        or all) within the window's bounds; a page examines at most SCAN_PER_PAGE entries, so
        a filter that matches little returns a short page with a cursor to go on from."""
        k, partitions = self.keys, self.keys.all_partitions()
        if subscriber_id:
            indexes = [k.subscriber_deliveries(subscriber_id, p) for p in partitions]
        elif status is DeliveryStatus.dead:
            indexes = [k.dead(p) for p in partitions]
        else:
            indexes = [k.deliveries(p) for p in partitions]
        items: list[dict[str, str]] = []
        scanned = 0
        window = window or Window()
        floor, ceiling = window.floor("dlv"), window.ceiling("dlv")
        while len(items) < limit and scanned < SCAN_PER_PAGE:
            ids = await self._page(
                indexes, cursor, limit, newest_first=True, floor=floor, ceiling=ceiling
            )
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

    async def list_events(
        self,
        *,
        keep: EventFilter,
        window: Window,
        limit: int,
        cursor: str | None,
        subscriber_id: str | None = None,
    ) -> DeliveryPage:
        """Stored events newest first (their listing fields, no body), kept by `keep`, within
        `window`, at most `limit` after the event id `cursor`; with `subscriber_id`, only
        events that have a delivery to that subscriber (read from its delivery index, whose
        ids embed their event's). Bounded like `list_deliveries`: at most SCAN_PER_PAGE
        entries a page."""
        partitions = self.keys.all_partitions()
        to_event: Callable[[str], str]
        if subscriber_id is None:
            indexes = [self.keys.event_index(p) for p in partitions]
            prefix, to_event, after = "evt", str, cursor
        else:
            indexes = [self.keys.subscriber_deliveries(subscriber_id, p) for p in partitions]
            prefix, to_event = "dlv", event_id_of
            after = delivery_id_for(cursor, subscriber_id) if cursor else None
        floor, ceiling = window.floor(prefix), window.ceiling(prefix)
        items: list[dict[str, str]] = []
        scanned = 0
        while len(items) < limit and scanned < SCAN_PER_PAGE:
            ids = await self._page(
                indexes, after, limit, newest_first=True, floor=floor, ceiling=ceiling
            )
            if not ids:
                return DeliveryPage(items, None)
            scanned += len(ids)
            for row in await self.event_rows([to_event(i) for i in ids]):
                if keep.keeps(row):
                    items.append(row)
                    if len(items) == limit:
                        return DeliveryPage(items, row["id"])
            after = ids[-1]
        return DeliveryPage(items, to_event(after) if after else None)

    async def event_rows(self, event_ids: Sequence[str]) -> list[dict[str, str]]:
        """The listing fields of the events among `event_ids` still stored, in that order."""
        if not event_ids:
            return []
        replies = await self.runner.run(
            [("HMGET", self.keys.event(e), *EVENT_FIELDS) for e in event_ids]
        )
        return [
            {f: v.decode() for f, v in zip(EVENT_FIELDS, values, strict=True) if v is not None}
            | {"id": e}
            for e, values in zip(event_ids, replies, strict=True)
            if values[0] is not None
        ]

    async def replay(self, subscriber_id: str, status: DeliveryStatus, since_ms: int | None) -> int:
        """Requeue every delivery of a subscriber in `status` (of events received at or after
        `since_ms`, if given), a page at a time; returns how many."""
        partitions = self.keys.all_partitions()
        indexes = [self.keys.subscriber_deliveries(subscriber_id, p) for p in partitions]
        cursor = id_floor("dlv", since_ms) if since_ms is not None else None
        requeued = 0
        while ids := await self._page(indexes, cursor, REPLAY_PAGE, newest_first=False):
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
        now = now_ms()
        groups = by_partition(rows, lambda row: delivery_partition(row["id"]))
        await self.runner.run(
            [requeue.requeue_command(self.keys, p, group, now=now) for p, group in groups.items()],
            durable=True,
        )
        await self.runner.run(
            [
                retries.move_due_command(self.keys, p, now=now_ms(), limit=MOVE_DUE_LIMIT)
                for p in groups
            ],
            durable=True,
        )
        return len(rows)

    async def depths(self) -> dict[str, int]:
        """Queue depths for metrics: ready, retry, dead, dispatch backlog, open breakers."""
        k = self.keys
        reads = {
            "ready": lambda p: ("XLEN", k.ready_stream(p)),
            "retry": lambda p: ("ZCARD", k.retry_schedule(p)),
            "dead": lambda p: ("ZCARD", k.dead(p)),
            "dispatch": lambda p: ("XLEN", k.events_stream(p)),
            "open_breakers": lambda p: ("SCARD", k.open_breakers(p)),
        }
        partitions = k.all_partitions()
        replies = await self.runner.run([read(p) for read in reads.values() for p in partitions])
        n = len(partitions)
        return {name: sum(replies[i * n : (i + 1) * n]) for i, name in enumerate(reads)}

    async def _page(
        self,
        indexes: Sequence[str],
        after: str | None,
        count: int,
        *,
        newest_first: bool,
        floor: str | None = None,
        ceiling: str | None = None,
    ) -> list[str]:
        """Up to `count` ids past the cursor `after` of the lexicographic indexes taken
        together (a page of each, merged), none below `floor` nor at or above `ceiling`."""
        if newest_first:
            below = min(after, ceiling) if after and ceiling else after or ceiling
            upper = f"({below}" if below else "+"
            lower = f"[{floor}" if floor else "-"
            reads = [("ZREVRANGEBYLEX", i, upper, lower, "LIMIT", 0, count) for i in indexes]
        else:
            lower = f"({after}" if after else "-"
            reads = [("ZRANGEBYLEX", i, lower, "+", "LIMIT", 0, count) for i in indexes]
        pages = await self.runner.run(reads)
        merged = sorted({r.decode() for page in pages for r in page}, reverse=newest_first)
        return merged[:count]


def _hash(raw: list[bytes] | dict[bytes, bytes]) -> dict[str, str]:
    """HGETALL's reply, decoded: a dict under RESP3 (and fakeredis), a flat list under RESP2."""
    if isinstance(raw, dict):
        return decode_hash(raw)
    return {raw[i].decode(): raw[i + 1].decode() for i in range(0, len(raw), 2)}
