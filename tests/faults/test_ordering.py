"""Deliveries about one resource keep their ingest order, 10,000 events against a receiver that
fails half the requests, across two router processes."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

import pytest

from subscriptions.catalog import load_catalog
from subscriptions.models import MAX_RETRY_STEPS

from .harness import (
    LOCATION_ID,
    OUTSIDER,
    DeliveryLedger,
    LoadResult,
    burst,
    read_records,
    wait_until,
)

pytestmark = pytest.mark.faults

RESOURCES = 100  # half contacts, half opportunities
PER_RESOURCE = 100  # 10,000 events in all
# Two event types per kind of resource, so one order holds events of both (the catalog keys
# each by its payload's `id`).
CONTACT_EVENTS = ("ContactTagUpdate", "ContactDndUpdate")
OPPORTUNITY_EVENTS = ("OpportunityStageUpdate", "OpportunityStatusUpdate")
SCOPES = ["contacts.readonly", "opportunities.readonly"]
# As many retries as a schedule may hold, soon after each other: the receiver's `flaky` stops
# failing before they run out, so every delivery succeeds and the run stays short.
RETRY_SCHEDULE = [0.05] * MAX_RETRY_STEPS
DEADLINE = 600.0  # seconds for every delivery to arrive: generous, for a loaded machine
CATALOG = load_catalog()


def event_payload(event: str, resource: str, n: int, run: str) -> dict[str, Any]:
    """Event `n` about `resource`, shaped like the platform's payload of that type (our own
    values), the resource at the payload path the catalog documents for the event."""
    path = CATALOG.resource_key(event)
    assert path is not None, f"the catalog documents no resource key for {event}"
    common = {"type": event, "locationId": LOCATION_ID, "webhookId": f"wh_{run}_{resource}_{n}"}
    if event in CONTACT_EVENTS:
        body = common | {
            "email": f"{resource}@example.test",
            "name": "Ordered Contact",
            "dateAdded": "2024-05-01T10:00:00.000Z",
            "dnd": event == "ContactDndUpdate",
            "tags": [f"change-{n}"],
            "attachments": [],
            "customFields": [],
        }
    else:
        body = common | {
            "contactId": "ct_ordering",
            "monetaryValue": 100 + n,
            "name": "Ordered opportunity",
            "pipelineId": "pl_ordering",
            "pipelineStageId": f"stage-{n}",
            "status": "open" if event == "OpportunityStageUpdate" else "won",
            "dateAdded": "2024-05-01T10:00:00.000Z",
        }
    target = body
    *parents, leaf = path.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = resource
    return body


def order_violations(
    records: list[dict[str, Any]], marker: str, sequence: dict[str, tuple[str, int]]
) -> list[str]:
    """Requests to `marker` that break their resource's ingest order: taken in arrival order
    (the receiver's file order), each must be for the earliest event of its resource not yet
    answered 2xx. A later event requested before an earlier one succeeded, or an event
    requested again after its success, is a violation; so is a resource left unfinished."""
    head: Counter[str] = Counter()  # resource -> how many of its events have succeeded
    found = []
    for r in records:
        if r["marker"] != marker:
            continue
        resource, n = sequence[r["event_id"]]
        if n != head[resource]:
            found.append(f"{resource}: event #{n} requested while #{head[resource]} was next")
        elif 200 <= r["status"] < 300:
            head[resource] += 1
    resources = {resource for resource, _ in sequence.values()}
    found += [
        f"{resource}: {head[resource]} of {PER_RESOURCE} delivered"
        for resource in sorted(resources)
        if head[resource] != PER_RESOURCE
    ]
    return found


def success_inversions(
    records: list[dict[str, Any]], marker: str, sequence: dict[str, tuple[str, int]]
) -> int:
    """Successful deliveries to `marker` that arrived after a later event of their resource."""
    latest: dict[str, int] = {}
    inversions = 0
    for r in records:
        if r["marker"] != marker or not 200 <= r["status"] < 300:
            continue
        resource, n = sequence[r["event_id"]]
        inversions += n < latest.get(resource, -1)
        latest[resource] = max(n, latest.get(resource, -1))
    return inversions


def waited(
    records: list[dict[str, Any]],
    marker: str,
    sequence: dict[str, tuple[str, int]],
    accepted_at: dict[str, float],
) -> int:
    """Events posted (and then accepted) before the previous event of their resource had
    reached `marker`: the ones the order had to hold back, a measure of how much the scenario
    put it to work."""
    delivered_at = {
        sequence[r["event_id"]]: r["t"]
        for r in reversed(records)
        if r["marker"] == marker and 200 <= r["status"] < 300
    }
    return sum(
        1
        for event_id, (resource, n) in sequence.items()
        if n > 0 and accepted_at[event_id] < delivered_at.get((resource, n - 1), float("inf"))
    )


async def test_ordered_deliveries_keep_ingest_order_per_resource_against_a_flaky_receiver(
    cluster, report
) -> None:
    started = time.monotonic()
    # The breaker is not under test: at even odds it would open now and then and only stall.
    c = cluster(ROUTER_BREAKER_THRESHOLD="1000000", ROUTER_DELIVERY_TIMEOUT="10")
    rx = await c.receiver()
    await c.serve()
    await c.worker()  # two processes dispatch and deliver: an order must hold across them
    for name, ordering in (("ordered", "resource"), ("unordered", "none")):
        await c.api(
            "POST",
            "/v1/subscribers",
            {
                "name": name,
                "url": rx.url(name, "flaky"),
                "scopes": SCOPES,
                "ordering": ordering,
                "retry_schedule": RETRY_SCHEDULE,
            },
        )
    await c.subscribe(OUTSIDER, rx.url(OUTSIDER), ["contacts.write", "opportunities.write"])
    all_events = CONTACT_EVENTS + OPPORTUNITY_EVENTS
    ledger = DeliveryLedger([rx], {e: {"ordered", "unordered"} for e in all_events}, {OUTSIDER})

    # Round n posts event n of every resource, all at once, and ends when each has its 202:
    # a resource's events are accepted one after another, so its ingest order is beyond doubt.
    run = uuid.uuid4().hex[:8]
    resources = [f"ct_{i:03d}" for i in range(RESOURCES // 2)]
    resources += [f"op_{i:03d}" for i in range(RESOURCES - len(resources))]
    position: dict[str, tuple[str, int]] = {}  # webhookId -> (resource, n)
    load = LoadResult()
    for n in range(PER_RESOURCE):
        payloads = []
        for resource in resources:
            kinds = CONTACT_EVENTS if resource.startswith("ct_") else OPPORTUNITY_EVENTS
            body = event_payload(kinds[n % 2], resource, n, run)
            position[body["webhookId"]] = (resource, n)
            payloads.append(body)
        await burst(f"{c.base_url}/webhooks", payloads, load)
    sent_in = time.monotonic() - started
    sequence = {load.event_ids[w]: where for w, where in position.items() if w in load.event_ids}

    complete = await wait_until(lambda: not ledger.missing(load), DEADLINE, interval=2.0)
    assert complete, f"{len(ledger.missing(load))} deliveries missing after {DEADLINE:.0f}s"
    tally = ledger.tally(load)
    records = read_records([rx])
    attempts = Counter(r["marker"] for r in records)
    failed = Counter(r["marker"] for r in records if r["status"] == 500)
    ordered = order_violations(records, "ordered", sequence)
    unordered = order_violations(records, "unordered", sequence)
    inverted = {m: success_inversions(records, m, sequence) for m in ("ordered", "unordered")}
    report(
        tally.line(
            "ordering by resource, flaky receiver",
            time.monotonic() - started,
            f"resources={RESOURCES} ingest={sent_in:.1f}s "
            f"ordered-requests={attempts['ordered']} ordered-500s={failed['ordered']} "
            f"ordered-held-back={waited(records, 'ordered', sequence, load.accepted_at)} "
            f"ordered-violations={len(ordered)} "
            f"ordered-success-inversions={inverted['ordered']} "
            f"unordered-requests={attempts['unordered']} unordered-500s={failed['unordered']} "
            f"unordered-violations={len(unordered)} "
            f"unordered-success-inversions={inverted['unordered']} "
            f"error-logs={len(c.errors_in_logs())}",
        )
    )
    assert load.given_up == 0 and load.server_errors == 0, load.statuses
    assert len(load.accepted) == RESOURCES * PER_RESOURCE
    assert tally.lost == 0 and tally.duplicates == 0 and tally.trespass == 0
    assert ordered == [], ordered[:20]
    assert inverted["ordered"] == 0
    # Even odds over ~20,000 requests per subscriber: the receiver did fail about half.
    assert 0.4 < failed["ordered"] / attempts["ordered"] < 0.6
    assert c.errors_in_logs() == []
