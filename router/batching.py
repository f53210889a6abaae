"""Micro-batching of Redis work: concurrent callers share one pipeline round trip.

Ingest accepts, delivery contexts and delivery outcomes are each a handful of commands; sent
one caller at a time, round trips and per-call client overhead dominate. A caller hands the
batcher a function that queues its commands on a pipeline and awaits its own results: nothing
is reported done before its own commands are confirmed, and an error fails only its owner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.client import Pipeline

Build = Callable[[Pipeline], Awaitable[None]]
RunPipeline = Callable[..., Awaitable[list[Any]]]


class PipelineBatcher:
    """Queues callers' commands and sends whatever has accumulated as one pipeline."""

    def __init__(
        self, run_pipeline: RunPipeline, max_batch: int = 128, max_in_flight: int = 4
    ) -> None:
        self._run_pipeline = run_pipeline
        self._max_batch = max_batch
        # Several pipelines may be in flight: one lane would make every caller wait for the
        # round trip ahead of it, and latency would grow with load instead of batch size.
        self._max_in_flight = max_in_flight
        self._queue: list[tuple[Build, asyncio.Future[list[Any]]]] = []
        self._drainers: set[asyncio.Task[None]] = set()

    async def run(self, build: Build) -> list[Any]:
        """The results of the commands `build` queued, once Redis has answered them.

        Raises the first error among them (or the pipeline's own, e.g. a lost connection).
        """
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.append((build, future))
        if len(self._drainers) < self._max_in_flight:
            drainer = asyncio.create_task(self._drain())
            self._drainers.add(drainer)
            drainer.add_done_callback(self._drainers.discard)
        return await future

    async def _drain(self) -> None:
        while self._queue:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            await self._send(batch)

    async def _send(self, batch: list[tuple[Build, asyncio.Future[list[Any]]]]) -> None:
        counts: list[int] = []

        async def build_all(pipe: Pipeline) -> None:
            counts.clear()
            for build, _ in batch:
                before = len(pipe.command_stack)
                await build(pipe)
                counts.append(len(pipe.command_stack) - before)

        try:
            results = await self._run_pipeline(build_all, raise_on_error=False)
        except BaseException as exc:  # every waiter must hear about it, whatever it was
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        start = 0
        for (_, future), count in zip(batch, counts, strict=True):
            mine = results[start : start + count]
            start += count
            if future.done():  # its caller was cancelled
                continue
            error = next((r for r in mine if isinstance(r, Exception)), None)
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(mine)
