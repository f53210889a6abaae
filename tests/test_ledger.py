"""The ledger survives a Redis that forgot its Lua scripts (a restart, SCRIPT FLUSH)."""

from __future__ import annotations

from redis.asyncio import Redis

from router.ledger import EventStatus, IncomingEvent, Ledger
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
