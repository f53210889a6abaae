"""Micro-batching: concurrent callers share a flush, and each hears only its own outcome."""

from __future__ import annotations

import asyncio

import pytest

from router.storage.batching import MicroBatcher


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    async def flush(self, items: list[int]) -> list[int | Exception]:
        self.batches.append(list(items))
        await asyncio.sleep(0)
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


async def test_concurrent_callers_share_one_flush() -> None:
    rec = Recorder()
    batcher = MicroBatcher(rec.flush, max_in_flight=1)
    results = await asyncio.gather(*(batcher.run(i) for i in range(50)))
    assert results == [i * 10 for i in range(50)]
    assert len(rec.batches) < 50
    assert sorted(i for b in rec.batches for i in b) == list(range(50))


async def test_an_items_error_fails_only_its_caller() -> None:
    batcher = MicroBatcher(Recorder().flush)
    results = await asyncio.gather(*(batcher.run(i) for i in (1, -2, 3)), return_exceptions=True)
    assert results[0] == 10 and results[2] == 30
    assert isinstance(results[1], ValueError) and str(results[1]) == "bad -2"


async def test_a_failed_flush_fails_every_caller_of_that_batch() -> None:
    async def broken(items: list[int]) -> list[int]:
        raise ConnectionError("gone")

    batcher = MicroBatcher(broken)
    results = await asyncio.gather(*(batcher.run(i) for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)


async def test_batch_size_and_weight_are_bounded() -> None:
    rec = Recorder()
    batcher = MicroBatcher(
        rec.flush, max_batch=4, max_in_flight=1, weight=lambda i: 100, max_weight=250
    )
    await asyncio.gather(*(batcher.run(i) for i in range(10)))
    assert max(len(b) for b in rec.batches) == 2  # three items of 100 would pass 250
    heavy = MicroBatcher(rec.flush, weight=lambda i: 10**9, max_weight=1)
    assert await heavy.run(7) == 70  # an item heavier than the bound still goes, alone


async def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    rec = Recorder()
    batcher = MicroBatcher(rec.flush, max_in_flight=1)
    first = asyncio.create_task(batcher.run(1))
    second = asyncio.create_task(batcher.run(2))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == 20
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_caller_arriving_as_the_last_drainer_finishes_is_still_flushed() -> None:
    # The drainer's task ends (queue empty) and, before its done-callback runs, a new caller
    # comes: it must not find the only lane still taken.
    async def immediate(items: list[int]) -> list[int]:
        return items

    batcher = MicroBatcher(immediate, max_in_flight=1)
    first = asyncio.ensure_future(batcher.run(1))
    await asyncio.sleep(0)  # `first` queues its item and schedules the drainer
    second = asyncio.ensure_future(batcher.run(2))  # runs right after the drainer's last step
    assert await asyncio.wait_for(second, 1) == 2
    assert await first == 1
