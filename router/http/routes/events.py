"""Stored events: what arrived, how it was routed, and the deliveries it produced.

A subscriber-bound key sees only the events that have a delivery to its subscriber (they are
what it was sent, payload included), and of their deliveries only its own; any other event
is 404 to it, exactly as one that does not exist. Its listing reads its own delivery index,
so it never walks other subscribers' events.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from router.core.records import EventStatus, delivery_id_for
from router.http.auth import bound_subscriber
from router.http.context import CATALOG, HISTORY
from router.http.errors import not_found
from router.http.operations import Resource
from router.http.routes.deliveries import Delivery, Instant, window
from router.storage.history import EventFilter

resource = Resource("events")

QueryText = Annotated[str, StringConstraints(max_length=200)]


class EventSummary(BaseModel):
    id: str
    type: str = Field(description="The event name routing used (after aliases)")
    payload_type: str | None = Field(description="The payload's own `type` field")
    status: EventStatus
    location_id: str | None
    company_id: str | None
    webhook_id: str | None
    received_at: datetime

    @classmethod
    def from_record(cls, row: dict[str, Any]) -> EventSummary:
        return cls(
            id=row["id"],
            type=row["event"],
            payload_type=row.get("payload_type") or None,
            status=EventStatus(row["status"]),
            location_id=row.get("location_id") or None,
            company_id=row.get("company_id") or None,
            webhook_id=row.get("webhook_id") or None,
            received_at=datetime.fromtimestamp(int(row["received_at"]) / 1000, tz=UTC),
        )


class EventList(BaseModel):
    items: list[EventSummary]
    next_cursor: str | None


class EventQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: QueryText | None = Field(
        default=None, description="Only events of this name (a payload type alias is resolved)"
    )
    location_id: QueryText | None = Field(default=None, description="Only this location's")
    company_id: QueryText | None = Field(default=None, description="Only this company's")
    status: EventStatus | None = None
    since: Instant | None = Field(
        default=None, description="Only events received at or after this RFC 3339 time"
    )
    until: Instant | None = Field(
        default=None, description="Only events received before this RFC 3339 time (exclusive)"
    )
    limit: int = Field(default=50, ge=1, le=100)
    cursor: QueryText | None = Field(default=None, description="`next_cursor` of the previous page")


class StoredEvent(EventSummary):
    deliveries: list[Delivery]
    payload: Any = Field(
        default=None, description="The event body exactly as received (its JSON text, verbatim)"
    )

    def render_with(self, body: bytes) -> web.Response:
        """This event as JSON with `body` as its payload, spliced in verbatim: parsing and
        re-serialising would change what was received (integers beyond 64 bits, -0.0,
        duplicate keys, number spellings)."""
        head = self.model_dump_json(exclude={"payload"}).encode()
        return web.Response(
            body=head[:-1] + b',"payload":' + body.strip() + b"}", content_type="application/json"
        )


@resource.get(
    "/v1/events",
    summary="List stored events, newest first, filtered (paged like every listing)",
    scope="read_events",
    bound="filter",
    query=EventQuery,
    response=EventList,
    errors=(422,),
)
async def list_events(request: web.Request, query: EventQuery) -> EventList:
    """A page examines at most a bounded number of events, so a filter that matches little
    may return a short (even empty) page with a `next_cursor` to go on from; `since` and
    `until` bound the index read itself and cost nothing extra."""
    event_type = query.type and request.app[CATALOG].event_for_payload_type(query.type)
    page = await request.app[HISTORY].list_events(
        keep=EventFilter(event_type, query.location_id, query.company_id, query.status),
        window=window(query.since, query.until),
        limit=query.limit,
        cursor=query.cursor,
        subscriber_id=bound_subscriber(request),
    )
    return EventList(
        items=[EventSummary.from_record(row) for row in page.items], next_cursor=page.next_cursor
    )


@resource.get(
    "/v1/events/{event_id}",
    summary="One stored event and its deliveries",
    scope="read_events",
    bound="filter",
    response=StoredEvent,
    errors=(404,),
)
async def get_event(request: web.Request) -> web.Response:
    history = request.app[HISTORY]
    event_id = request.match_info["event_id"]
    bound = bound_subscriber(request)
    own = None if bound is None else await history.delivery(delivery_id_for(event_id, bound))
    row = await history.event(event_id) if bound is None or own is not None else None
    if row is None:
        raise not_found(f"Event {event_id}")
    rows = [own] if own is not None else await history.event_deliveries(event_id)
    event = StoredEvent(
        **EventSummary.from_record(row).model_dump(),
        deliveries=[Delivery.from_record(r) for r in rows],
    )
    return event.render_with(row["body"])
