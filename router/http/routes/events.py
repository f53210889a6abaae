"""Stored events: what arrived, how it was routed, and the deliveries it produced."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from router.core.records import EventStatus
from router.http.context import HISTORY
from router.http.errors import not_found
from router.http.operations import Resource
from router.http.routes.deliveries import Delivery

resource = Resource("events")


class StoredEvent(BaseModel):
    id: str
    type: str = Field(description="The event name routing used (after aliases)")
    payload_type: str | None = Field(description="The payload's own `type` field")
    status: EventStatus
    location_id: str | None
    company_id: str | None
    webhook_id: str | None
    received_at: datetime
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
    "/v1/events/{event_id}",
    summary="One stored event and its deliveries",
    scope="read_events",
    response=StoredEvent,
    errors=(404,),
)
async def get_event(request: web.Request) -> web.Response:
    history = request.app[HISTORY]
    event_id = request.match_info["event_id"]
    row = await history.event(event_id)
    if row is None:
        raise not_found(f"Event {event_id}")
    deliveries = [Delivery.from_record(r) for r in await history.event_deliveries(event_id)]
    event = StoredEvent(
        id=event_id,
        type=row["event"],
        payload_type=row.get("payload_type") or None,
        status=EventStatus(row["status"]),
        location_id=row.get("location_id") or None,
        company_id=row.get("company_id") or None,
        webhook_id=row.get("webhook_id") or None,
        received_at=datetime.fromtimestamp(int(row["received_at"]) / 1000, tz=UTC),
        deliveries=deliveries,
    )
    return event.render_with(row["body"])
