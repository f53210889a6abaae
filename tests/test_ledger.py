"""The ledger: accepts batched into one script call keep each event's own outcome, and survive
a Redis that forgot its Lua scripts (a restart, SCRIPT FLUSH)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from redis.asyncio import Redis

from router.ledger import EventStatus, IncomingEvent, Ledger, Overloaded
from subscriptions.ids import new_id, now_ms
from subscriptions.keys import Keys


def event() -> IncomingEvent:
    return IncomingEvent(
        event_id=new_id("evt"),
        body=b'{"type":"ContactCreate"}',
        event="ContactCreate",
        payload_type="ContactCreate",
        location_id=None,
        company_id=None,
        webhook_id=None,
        received_at=now_ms(),
        routable=True,
    )


async def test_accept_after_redis_forgot_the_scripts_still_stores_the_event(
    redis: Redis, key_prefix: str
) -> None:
    ledger = Ledger(redis, Keys(key_prefix), retention=60, dedupe_window=60, max_backlog=100)
    first = event()
    assert await ledger.accept(first) == (EventStatus.accepted, first.event_id)

    await redis.script_flush()
    second = event()

    assert await ledger.accept(second) == (EventStatus.accepted, second.event_id)
    assert await redis.xlen(ledger.keys.events_stream) == 2


async def test_concurrent_accepts_share_a_call_but_keep_their_own_outcomes(
    redis: Redis, key_prefix: str
) -> None:
    ledger = Ledger(redis, Keys(key_prefix), retention=60, dedupe_window=60, max_backlog=100)
    original = replace(event(), webhook_id="wh-1")
    again = replace(event(), webhook_id="wh-1")  # the platform's retry, in the same batch
    unroutable = replace(event(), routable=False)
    plain = event()

    results = await asyncio.gather(
        *(ledger.accept(e) for e in (original, again, unroutable, plain))
    )

    assert results == [
        (EventStatus.accepted, original.event_id),
        (EventStatus.duplicate, original.event_id),
        (EventStatus.unroutable, unroutable.event_id),
        (EventStatus.accepted, plain.event_id),
    ]
    assert await redis.xlen(ledger.keys.events_stream) == 2
    assert await redis.hget(ledger.keys.event(again.event_id), "body") is None
    assert await redis.hget(ledger.keys.event(plain.event_id), "body") == plain.body


async def test_a_full_backlog_refuses_only_the_events_past_it(
    redis: Redis, key_prefix: str
) -> None:
    ledger = Ledger(redis, Keys(key_prefix), retention=60, dedupe_window=60, max_backlog=2)
    events = [event() for _ in range(4)]

    results = await asyncio.gather(*(ledger.accept(e) for e in events), return_exceptions=True)

    assert results[:2] == [(EventStatus.accepted, e.event_id) for e in events[:2]]
    assert all(isinstance(r, Overloaded) for r in results[2:])
    assert await redis.xlen(ledger.keys.events_stream) == 2
    with pytest.raises(Overloaded):
        await ledger.accept(event())
