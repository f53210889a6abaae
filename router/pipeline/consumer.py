"""The one consumer loop every queue's reader runs: read (or reclaim) a batch, hand it over,
wait out Redis outages with backoff, and recreate consumer groups a restarted Redis lost."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from redis.exceptions import ResponseError

from router.storage.client import UNAVAILABLE

log = logging.getLogger("router.consumer")

T = TypeVar("T")
CLAIM_CHECK_SECONDS = 2.0  # how often to look for work left by dead or stalled consumers
READ_BLOCK_MS = 1000
MAX_BACKOFF_SECONDS = 5.0


class Consumer(Generic[T]):
    """Reads batches for `handle` until stopped.

    `room()` says how much to read next, waiting for room if need be (0: ask again), and
    `settled(count)` is told once that much has been read and handled (or failed);
    `read(count, block_ms)` and `claim(count)` fetch new and abandoned work. Work left by a dead
    or stalled consumer is looked for every CLAIM_CHECK_SECONDS (sooner for a short
    `reclaim_after_ms`), before new work.
    """

    def __init__(
        self,
        what: str,
        *,
        room: Callable[[], Awaitable[int]],
        read: Callable[[int, int], Awaitable[list[T]]],
        claim: Callable[[int], Awaitable[list[T]]],
        handle: Callable[[list[T]], Awaitable[object]],
        ensure_groups: Callable[[], Awaitable[None]],
        reclaim_after_ms: int,
        settled: Callable[[int], None] = lambda count: None,
        block_ms: int = READ_BLOCK_MS,
    ) -> None:
        self.what = what
        self.room = room
        self.read = read
        self.claim = claim
        self.handle = handle
        self.ensure_groups = ensure_groups
        self.settled = settled
        self.block_ms = block_ms
        self.claim_every = min(reclaim_after_ms / 4000, CLAIM_CHECK_SECONDS)

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume until `stopping` is set; survives Redis outages by waiting them out."""
        backoff = 0.1
        next_claim = 0.0
        while not stopping.is_set():
            count = await self.room()
            if count <= 0:
                continue
            try:
                if time.monotonic() >= next_claim:
                    next_claim = time.monotonic() + self.claim_every
                    batch = await self.claim(count)
                    if batch:
                        log.info("reclaimed %d %s from a stalled process", len(batch), self.what)
                else:
                    batch = await self.read(count, self.block_ms)
                if batch:
                    await self.handle(batch)
                backoff = 0.1
            except UNAVAILABLE:
                log.warning("Redis unavailable; %s reader retrying in %.1fs", self.what, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            except ResponseError as exc:
                # The stream or group vanished (a Redis that restarted empty, or was flushed).
                if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                    raise
                await self.ensure_groups()
            finally:
                self.settled(count)
