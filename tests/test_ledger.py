"""The ledger: accepts batched into one script call keep each event's own outcome, and survive
a Redis that forgot its Lua scripts (a restart, SCRIPT FLUSH)."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from router.core.outcome import Outcome
from router.core.records import DeliveryStatus, EventStatus, IncomingEvent, WorkItem
from router.storage import ledger as ledger_module
from router.storage.ledger import Ledger, Overloaded
from router.storage.streams import EMPTY_READ_POLL_SECONDS
from subscriptions.ids import new_id, now_ms
from subscriptions.keys import SubscriberKeys
from tests.conftest import make_history, make_ledger


def event() -> IncomingEvent:
    return IncomingEvent(
        event_id=new_id("evt"),
        body=b'{"type":"ContactCreate"}',
        event="ContactCreate",
        payload_type="ContactCreate",
        location_id=None,
        company_id=None,
        webhook_id=None,
        body_digest=None,
        received_at=now_ms(),
        routable=True,
    )


async def test_accept_after_redis_forgot_the_scripts_still_stores_the_event(
    redis: Redis, key_prefix: str
) -> None:
    ledger = make_ledger(redis, key_prefix, max_backlog=100)
    first = event()
    assert await ledger.accept(first) == (EventStatus.accepted, first.event_id)

    await redis.script_flush()
    second = event()

    assert await ledger.accept(second) == (EventStatus.accepted, second.event_id)
    assert await redis.xlen(ledger.keys.events_stream(0)) == 2


async def test_concurrent_accepts_share_a_call_but_keep_their_own_outcomes(
    redis: Redis, key_prefix: str
) -> None:
    ledger = make_ledger(redis, key_prefix, max_backlog=100)
    original = event()._replace(webhook_id="wh-1")
    again = event()._replace(webhook_id="wh-1")  # the platform's retry, in the same batch
    unroutable = event()._replace(routable=False)
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
    assert await redis.xlen(ledger.keys.events_stream(0)) == 2
    assert await redis.hget(ledger.keys.event(again.event_id), "body") is None
    assert await redis.hget(ledger.keys.event(plain.event_id), "body") == plain.body


async def test_a_full_backlog_refuses_only_the_events_past_it(
    redis: Redis, key_prefix: str
) -> None:
    ledger = make_ledger(redis, key_prefix, max_backlog=2)
    events = [event() for _ in range(4)]

    results = await asyncio.gather(*(ledger.accept(e) for e in events), return_exceptions=True)

    assert results[:2] == [(EventStatus.accepted, e.event_id) for e in events[:2]]
    assert all(isinstance(r, Overloaded) for r in results[2:])
    assert await redis.xlen(ledger.keys.events_stream(0)) == 2
    with pytest.raises(Overloaded):
        await ledger.accept(event())


async def _queue_deliveries(ledger: Ledger, subscribers: list[str]) -> list[WorkItem]:
    """Accept one event, create a delivery per subscriber, and read them as a worker."""
    accepted = event()
    await ledger.accept(accepted)
    await ledger.ensure_groups()
    ((entry, event_id),) = await ledger.read_events(0, "d", 10, 0)
    await ledger.create_deliveries([(entry, event_id, "ContactCreate", subscribers)])
    return await ledger.read_ready(0, "w", 10, 0)


async def test_an_empty_read_waits_instead_of_answering_at_once(
    redis: Redis, key_prefix: str
) -> None:
    # The embedded store does not block XREADGROUP; without the wait, an idle worker's read
    # loop spun a whole core.
    ledger = make_ledger(redis, key_prefix, max_backlog=100)
    await ledger.ensure_groups()
    loop = asyncio.get_running_loop()

    started = loop.time()
    assert await ledger.read_ready(0, "w", 10, 200) == []
    assert await ledger.read_events(0, "d", 10, 200) == []

    assert loop.time() - started >= 2 * EMPTY_READ_POLL_SECONDS * 0.9


async def test_concurrent_attempts_read_their_contexts_in_one_call(
    redis: Redis, key_prefix: str
) -> None:
    ledger = make_ledger(redis, key_prefix, max_backlog=100)
    items = await _queue_deliveries(ledger, ["sub_a", "sub_b", "sub_gone"])
    await redis.hset(
        SubscriberKeys(key_prefix).subscribers, mapping={"sub_a": b'{"a":1}', "sub_b": b'{"b":2}'}
    )
    await redis.hset(ledger.keys.breaker("sub_b"), mapping={"failures": 3, "open_until": 9})

    contexts = await asyncio.gather(*(ledger.attempt_context(item) for item in items))

    by_sub = {item.subscriber_id: ctx for item, ctx in zip(items, contexts, strict=True)}
    assert by_sub["sub_a"].subscriber == b'{"a":1}' and by_sub["sub_a"].breaker == {}
    assert by_sub["sub_b"].breaker == {"failures": "3", "open_until": "9"}
    assert by_sub["sub_gone"].subscriber is None
    for ctx in contexts:
        assert ctx.delivery == {"status": "pending", "attempts": "0", "schedule_index": "0"}
        assert ctx.event["body"] == b'{"type":"ContactCreate"}'
        assert ctx.event["event"] == "ContactCreate" and ctx.event["location_id"] is None

    await redis.delete(
        ledger.keys.event(items[0].event_id), ledger.keys.delivery(items[0].delivery_id)
    )
    gone = await ledger.attempt_context(items[0])
    assert gone.delivery == {} and gone.event == {}


async def test_concurrent_outcomes_are_recorded_each_in_full(redis: Redis, key_prefix: str) -> None:
    ledger = make_ledger(redis, key_prefix, max_backlog=100)
    ok, retry, dead = await _queue_deliveries(ledger, ["sub_a", "sub_b", "sub_c"])

    await asyncio.gather(
        ledger.finish(ok, Outcome(DeliveryStatus.succeeded, attempt={"n": 1}, breaker=True)),
        ledger.finish(
            retry,
            Outcome(
                DeliveryStatus.failed,
                {"schedule_index": 1},
                attempt={"n": 1},
                retry_at=12345,
                breaker=False,
            ),
            breaker_threshold=1,
            probe_interval_ms=1000,
        ),
        ledger.finish(dead, Outcome(DeliveryStatus.dead, {"reason": "gave up"})),
    )

    k = ledger.keys
    assert (await make_history(redis, key_prefix).delivery(ok.delivery_id))["status"] == "succeeded"
    assert await make_history(redis, key_prefix).attempts(ok.delivery_id) == [{"n": 1}]
    assert (await make_history(redis, key_prefix).delivery(retry.delivery_id))[
        "schedule_index"
    ] == "1"
    assert await redis.zscore(k.retry_schedule(0), retry.member) == 12345
    assert await redis.sismember(k.open_breakers(0), "sub_b")
    assert (await make_history(redis, key_prefix).delivery(dead.delivery_id))["reason"] == "gave up"
    assert await make_history(redis, key_prefix).attempts(dead.delivery_id) == []
    assert await redis.zrange(k.dead(0), 0, -1) == [dead.delivery_id.encode()]
    assert await redis.xlen(k.ready_stream(0)) == 0  # all three acknowledged and deleted


async def test_an_events_failed_write_fails_only_that_event(redis: Redis, key_prefix: str) -> None:
    ledger = make_ledger(redis, key_prefix, max_backlog=100)
    good, bad = event(), event()
    await redis.set(ledger.keys.event(bad.event_id), b"not a hash")  # HSET will fail

    results = await asyncio.gather(ledger.accept(good), ledger.accept(bad), return_exceptions=True)

    assert results[0] == (EventStatus.accepted, good.event_id)
    assert isinstance(results[1], ResponseError) and "WRONGTYPE" in str(results[1])
    assert await redis.xlen(ledger.keys.events_stream(0)) == 1


async def test_a_failed_outcome_fails_only_its_own_caller(redis: Redis, key_prefix: str) -> None:
    ledger = make_ledger(redis, key_prefix, max_backlog=100)
    ok, broken = await _queue_deliveries(ledger, ["sub_a", "sub_b"])
    await redis.set(ledger.keys.delivery(broken.delivery_id), b"not a hash")

    results = await asyncio.gather(
        ledger.finish(ok, Outcome(DeliveryStatus.succeeded, breaker=True)),
        ledger.finish(broken, Outcome(DeliveryStatus.succeeded, breaker=True)),
        return_exceptions=True,
    )

    assert results[0] == 0  # recorded; no open breaker to close
    assert isinstance(results[1], ResponseError)
    assert (await make_history(redis, key_prefix).delivery(ok.delivery_id))["status"] == "succeeded"


async def test_a_malformed_record_fails_only_its_own_context(redis: Redis, key_prefix: str) -> None:
    ledger = make_ledger(redis, key_prefix, max_backlog=100)
    good, broken = await _queue_deliveries(ledger, ["sub_a", "sub_b"])
    await redis.hset(ledger.keys.delivery(broken.delivery_id), "status", b"\xff\xfe")

    results = await asyncio.gather(
        ledger.attempt_context(good), ledger.attempt_context(broken), return_exceptions=True
    )

    assert results[0].delivery["status"] == "pending"
    assert isinstance(results[1], UnicodeDecodeError)


async def test_trim_before_any_stream_or_group_exists_is_a_no_op(
    redis: Redis, key_prefix: str
) -> None:
    """A process's first trim can run before its readers created the streams (or after a
    Redis restarted empty): there are no consumers to forget, and that is not an error."""
    ledger = make_ledger(redis, key_prefix)
    await ledger.trim()
    partition = ledger.partitions[0]
    await redis.xadd(ledger.keys.ready_stream(partition), {"d": b"x"})  # a stream with no group yet
    await ledger.trim()
    await ledger.ensure_groups()
    await ledger.trim()


async def test_a_watermark_read_before_an_event_existed_is_not_reused_for_it(
    redis: Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process accepts A and, once it is acknowledged, B; B is dispatched first (by
    # another dispatcher) and its attempt asks whether older events still wait. A read made
    # before B existed cannot have seen A: reused, it let B go before A.
    monkeypatch.setattr(ledger_module, "WATERMARK_TTL", 3600.0)  # reuse whatever it may
    deliverer = make_ledger(redis, key_prefix)
    ingest = make_ledger(redis, key_prefix)
    assert await deliverer.dispatch_watermark(new_id("evt")) is None  # nothing waits yet
    await asyncio.sleep(0.002)  # A and B are made in a later millisecond than that read
    older = event()
    await ingest.accept(older)
    later = new_id("evt")

    assert await deliverer.dispatch_watermark(later) == older.event_id
    # A read made after B existed stands for it (and for anything older) while it is fresh.
    await ingest.accept(event())
    assert await deliverer.dispatch_watermark(older.event_id) == older.event_id
