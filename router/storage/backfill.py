"""A backfill's reads and writes: a page of a window's retained events, the deliveries made for
one subscriber, and the cursor that lets a repeated call go on where an interrupted one
stopped.

Every stored event is in its partition's event index (the accept script adds it, `Ledger.trim`
forgets it past the retention), so a window is read in id (= time) order without scanning the
keyspace. Deliveries are created by
the same script dispatch uses: it creates only those that do not exist yet, so whatever a
backfill schedules twice, or dispatch and a backfill both schedule, exists once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from router.storage.client import CommandRunner
from router.storage.keys import RouterKeys
from router.storage.scripts import deliveries
from router.storage.streams import DISPATCH_GROUP
from subscriptions.ids import id_floor, now_ms


class Cursor(NamedTuple):
    """How far a backfill has got: the partition it is in and the last event handled there
    (None: none yet)."""

    partition: int
    after: str | None


class BackfillStore:
    def __init__(self, runner: CommandRunner, keys: RouterKeys, *, retention: int) -> None:
        self.runner = runner
        self.keys = keys
        self.retention = retention

    async def events(
        self, partition: int, cursor: str | None, since: str, until: str, count: int
    ) -> list[str]:
        """Up to `count` retained event ids of `partition` from `since` (or past `cursor`) to
        before `until` (both id floors), oldest first."""
        low = f"({cursor}" if cursor is not None else f"[{since}"
        index = self.keys.event_index(partition)
        page = await self.runner.one(("ZRANGEBYLEX", index, low, f"({until}", "LIMIT", 0, count))
        return [member.decode() for member in page]

    async def schedule(
        self, partition: int, subscriber_id: str, events: Sequence[tuple[str, str]]
    ) -> int:
        """A pending, queued delivery to the subscriber for each (event id, event name) of
        `partition` that has none yet (one script call per event, all in one round trip);
        returns how many were created."""
        if not events:
            return 0
        now = now_ms()
        floor = id_floor("dlv", now - self.retention * 1000)
        calls = [
            deliveries.create_deliveries_command(
                self.keys,
                partition,
                group=DISPATCH_GROUP,
                entry_id="",
                event_id=event_id,
                event=event,
                subscriber_ids=[subscriber_id],
                now=now,
                retention=self.retention,
                oldest_kept=floor,
            )
            for event_id, event in events
        ]
        return sum(int(n) for n in await self.runner.run(calls, durable=True))

    async def cursor(self, subscriber_id: str, window: str) -> Cursor | None:
        raw = await self.runner.one(("GET", self.keys.backfill_cursor(subscriber_id, window)))
        if raw is None:
            return None
        partition, _, after = raw.decode().partition(" ")
        return Cursor(int(partition), after or None)

    async def save_cursor(self, subscriber_id: str, window: str, cursor: Cursor) -> None:
        # Kept as long as the events it points into: past that, a fresh start finds nothing.
        key = self.keys.backfill_cursor(subscriber_id, window)
        value = f"{cursor.partition} {cursor.after or ''}"
        await self.runner.one(("SET", key, value, "EX", self.retention))

    async def clear_cursor(self, subscriber_id: str, window: str) -> None:
        await self.runner.one(("DEL", self.keys.backfill_cursor(subscriber_id, window)))
