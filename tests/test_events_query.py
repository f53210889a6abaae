"""`GET /v1/events` and its filters, and deliveries listed by time (issue 17, part 2).

Events are listed newest first from a time-ordered index; `since`/`until` (RFC 3339, since
inclusive, until exclusive) bound the index read itself, the other filters are checked on
each event read, a bounded number a page.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from router.core.records import DeliveryStatus
from router.http.context import LEDGER
from router.storage import history
from subscriptions.ids import now_ms, rfc3339
from tests.conftest import ADMIN_TOKEN
from tests.history_data import delivery_of, incoming, settle, store_event

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
HOUR = 3_600_000


async def events(client: TestClient, **query: Any) -> dict[str, Any]:
    resp = await client.get("/v1/events", params=query, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def ids(client: TestClient, **query: Any) -> list[str]:
    return [e["id"] for e in (await events(client, **query))["items"]]


@pytest.fixture
async def stored(app: web.Application) -> dict[str, str]:
    """Five events an hour apart, oldest first: two of location L1, one of company C1, one
    unroutable, and one delivered to sub_a (dead)."""
    ledger = app[LEDGER]
    start = now_ms() - 5 * HOUR
    made = {
        "l1_old": incoming(at_ms=start, location_id="L1"),
        "c1": incoming("OpportunityCreate", at_ms=start + HOUR, company_id="C1"),
        "unroutable": incoming("MysteryEvent", at_ms=start + 2 * HOUR, routable=False),
        "l1_new": incoming(at_ms=start + 3 * HOUR, location_id="L1"),
        "delivered": incoming(at_ms=start + 4 * HOUR),
    }
    for name, event in made.items():
        await store_event(ledger, event, ["sub_a"] if name == "delivered" else [])
    await settle(ledger, {delivery_of(made["delivered"].event_id, "sub_a"): DeliveryStatus.dead})
    return {name: e.event_id for name, e in made.items()} | {"start": rfc3339(start)}


async def test_events_are_listed_newest_first_without_their_bodies(
    client: TestClient, stored: dict[str, str]
) -> None:
    page = await events(client)
    assert [e["id"] for e in page["items"]] == [
        stored[n] for n in ("delivered", "l1_new", "unroutable", "c1", "l1_old")
    ]
    first = page["items"][0]
    assert set(first) == {
        "id",
        "type",
        "payload_type",
        "status",
        "location_id",
        "company_id",
        "webhook_id",
        "received_at",
    }
    assert page["next_cursor"] is None


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"type": "OpportunityCreate"}, ["c1"]),
        ({"location_id": "L1"}, ["l1_new", "l1_old"]),
        ({"company_id": "C1"}, ["c1"]),
        ({"status": "unroutable"}, ["unroutable"]),
        ({"type": "ContactCreate", "location_id": "L1"}, ["l1_new", "l1_old"]),
        ({"location_id": "nowhere"}, []),
    ],
)
async def test_each_filter_keeps_only_matching_events(
    client: TestClient, stored: dict[str, str], query: dict[str, str], expected: list[str]
) -> None:
    assert await ids(client, **query) == [stored[n] for n in expected]


async def test_since_and_until_bound_the_listing(
    client: TestClient, stored: dict[str, str]
) -> None:
    start = now_ms() - 5 * HOUR  # within a second of the fixture's start
    window = await ids(
        client, since=rfc3339(start - 60_000 + HOUR), until=rfc3339(start - 60_000 + 3 * HOUR)
    )
    assert window == [stored["unroutable"], stored["c1"]]


async def test_a_window_starting_at_an_events_time_includes_it(
    client: TestClient, stored: dict[str, str]
) -> None:
    received = (await events(client))["items"][-1]["received_at"]
    assert (await ids(client, since=received))[-1] == stored["l1_old"]
    assert stored["l1_old"] not in await ids(client, until=received)


async def test_pages_follow_the_cursor_through_a_filter(
    client: TestClient, stored: dict[str, str]
) -> None:
    first = await events(client, location_id="L1", limit=1)
    assert [e["id"] for e in first["items"]] == [stored["l1_new"]]
    second = await events(client, location_id="L1", limit=1, cursor=first["next_cursor"])
    assert [e["id"] for e in second["items"]] == [stored["l1_old"]]


async def test_a_page_examines_a_bounded_number_of_events(
    client: TestClient, stored: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "SCAN_PER_PAGE", 2)
    page = await events(client, company_id="C1", limit=1)
    assert page["items"] == []  # the two newest examined, neither matched
    assert page["next_cursor"] == stored["l1_new"]
    more = await events(client, company_id="C1", limit=1, cursor=page["next_cursor"])
    assert [e["id"] for e in more["items"]] == [stored["c1"]]


@pytest.mark.parametrize("field", ["since", "until"])
@pytest.mark.parametrize(
    "value", ["yesterday", "2026-01-01", "2026-01-01T00:00:00", "1767225600", "2026-13-01T00:00Z"]
)
async def test_a_malformed_time_is_422_naming_its_field(
    client: TestClient, field: str, value: str
) -> None:
    for path in ("/v1/events", "/v1/deliveries"):
        resp = await client.get(path, params={field: value}, headers=ADMIN)
        assert resp.status == 422, (path, value)
        assert [e["extensions"]["field"] for e in (await resp.json())["errors"]] == [field]


async def test_until_not_after_since_is_an_empty_window(
    client: TestClient, stored: dict[str, str]
) -> None:
    assert await ids(client, since=stored["start"], until=stored["start"]) == []
    assert await ids(client, since="2100-01-01T00:00:00Z", until="2000-01-01T00:00:00Z") == []


async def test_an_offset_is_honoured(client: TestClient, stored: dict[str, str]) -> None:
    received = (await events(client))["items"][0]["received_at"]  # `…Z`
    later = received.replace("Z", "+00:00")
    assert await ids(client, since=later) == [stored["delivered"]]


async def test_deliveries_filter_by_their_events_time(
    client: TestClient, stored: dict[str, str]
) -> None:
    delivered_at = (await events(client))["items"][0]["received_at"]
    resp = await client.get("/v1/deliveries", params={"since": delivered_at}, headers=ADMIN)
    assert [d["event_id"] for d in (await resp.json())["items"]] == [stored["delivered"]]
    resp = await client.get("/v1/deliveries", params={"until": delivered_at}, headers=ADMIN)
    assert (await resp.json())["items"] == []
    dead = await client.get(
        "/v1/deliveries", params={"status": "dead", "since": stored["start"]}, headers=ADMIN
    )
    assert len((await dead.json())["items"]) == 1


async def test_the_index_forgets_events_past_the_retention(app: web.Application) -> None:
    ledger = app[LEDGER]
    old = await store_event(ledger, incoming(at_ms=now_ms() - ledger.retention * 1000 - 1), [])
    new = await store_event(ledger, incoming(), [])
    await ledger.trim()
    listing = await app[LEDGER].runner.run(
        [("ZRANGE", ledger.keys.event_index(p), 0, -1) for p in ledger.partitions]
    )
    kept = {m.decode() for page in listing for m in page}
    assert new in kept and old not in kept
