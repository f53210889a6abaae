"""Micro-batching of Redis work: concurrent callers share one script call.

Ingest accepts, attempt contexts and delivery outcomes are each a little Redis work; sent one
caller at a time, round trips and per-command client overhead dominate (redis-py parses every
reply of a pipeline under its own timeout context), so each is one script call per batch. A
caller hands the batcher its item and awaits its own result: nothing is reported done before
its own work is confirmed, and an error in one item's result fails only that item's caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Results for a batch, in item order; an exception in place of a result fails its item only.
Flush = Callable[[list[T]], Awaitable[Sequence[R | Exception]]]


class MicroBatcher(Generic[T, R]):
    """Queues callers' items and flushes whatever has accumulated as one batch."""

    def __init__(
        self,
        flush: Flush[T, R],
        *,
        max_batch: int = 128,
        max_in_flight: int = 4,
        weight: Callable[[T], int] | None = None,
        max_weight: int = 0,
    ) -> None:
        self._flush = flush
        self._max_batch = max_batch
        # Several batches may be in flight: one lane would make every caller wait for the
        # round trip ahead of it, and latency would grow with load instead of batch size.
        self._max_in_flight = max_in_flight
        # Bounds a batch's size in another unit (body bytes), so one flush cannot grow into
        # a command that blocks Redis for long; a single item is always sent, whatever it weighs.
        self._weight = weight
        self._max_weight = max_weight
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._drainers: set[asyncio.Task[None]] = set()

    async def run(self, item: T) -> R:
        """The result for `item`, once its batch has been flushed.

        Raises the item's own error, or the flush's (e.g. a lost connection).
        """
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if len(self._drainers) < self._max_in_flight:
            drainer = asyncio.create_task(self._drain())
            self._drainers.add(drainer)
            drainer.add_done_callback(self._drainers.discard)  # if cancelled before it ran
        return await future

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        end = min(len(self._queue), self._max_batch)
        if self._weight is not None:
            total = 0
            for i in range(end):
                total += self._weight(self._queue[i][0])
                if total > self._max_weight and i > 0:
                    end = i
                    break
        batch = self._queue[:end]
        del self._queue[:end]
        return batch

    async def _drain(self) -> None:
        try:
            while self._queue:
                await self._send(self._take())
        finally:
            # Leave in the same step that saw the queue empty. Left to the done-callback, a
            # caller arriving before it ran could find every lane taken by drainers that have
            # finished, start none, and wait for a flush that never comes.
            self._drainers.discard(asyncio.current_task())  # type: ignore[arg-type]

    async def _send(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._flush([item for item, _ in batch])
        except BaseException as exc:  # every waiter must hear about it, whatever it was
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # its caller was cancelled
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
