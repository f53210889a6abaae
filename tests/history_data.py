"""Stored events and deliveries made straight through the ledger, for tests of what operators
(and subscriber-bound keys) read: no receiver, no worker, every state chosen by the test."""

from __future__ import annotations

from collections.abc import Sequence

from router.core.outcome import Outcome
from router.core.records import DeliveryStatus, IncomingEvent, WorkItem, delivery_id_for
from router.storage.ledger import Ledger
from subscriptions.ids import new_id, now_ms


def incoming(
    event: str = "ContactCreate",
    *,
    at_ms: int | None = None,
    location_id: str | None = None,
    company_id: str | None = None,
    routable: bool = True,
) -> IncomingEvent:
    """An event received at `at_ms` (default now), its id made at that time."""
    at = now_ms() if at_ms is None else at_ms
    return IncomingEvent(
        event_id=new_id("evt", at),
        body=b'{"type":"%s","n":"%s"}' % (event.encode(), new_id("n").encode()),
        event=event,
        payload_type=event,
        location_id=location_id,
        company_id=company_id,
        webhook_id=None,
        body_digest=None,
        received_at=at,
        routable=routable,
    )


async def store_event(ledger: Ledger, event: IncomingEvent, subscribers: Sequence[str]) -> str:
    """Accept `event` and, if it is routable, give it a pending delivery per subscriber (as
    the dispatcher would). Returns its id."""
    await ledger.ensure_groups()
    await ledger.accept(event)
    if event.routable:
        # BLOCK 1, not 0: on a cluster most partitions' streams are empty, and 0 waits forever.
        for partition in ledger.partitions:
            for entry, event_id in await ledger.read_events(partition, "test", 100, 1):
                await ledger.create_deliveries([(entry, event_id, event.event, list(subscribers))])
    return event.event_id


async def settle(ledger: Ledger, outcomes: dict[str, DeliveryStatus]) -> None:
    """Finish every ready delivery named in `outcomes` (delivery id → final state) with one
    logged attempt that answered 500 (200 for a success)."""
    items: list[WorkItem] = []
    for partition in ledger.partitions:
        items += await ledger.read_ready(partition, "test", 1000, 1)
    for item in items:
        status = outcomes.get(item.delivery_id)
        if status is None:
            continue
        code = 200 if status is DeliveryStatus.succeeded else 500
        attempt = {
            "attempt": 1,
            "at": "2026-01-01T00:00:00.000Z",
            "status_code": code,
            "error": None,
            "duration_ms": 1.5,
            "response_body": f"answer of {item.subscriber_id}",
        }
        fields: dict[str, str | int] = {"last_status_code": code}
        if status is DeliveryStatus.dead:
            fields["reason"] = "gave up"
        await ledger.finish(item, Outcome(status, fields, attempt=attempt))


def delivery_of(event_id: str, subscriber_id: str) -> str:
    return delivery_id_for(event_id, subscriber_id)
