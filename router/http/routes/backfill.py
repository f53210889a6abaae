"""Backfill: deliveries for the retained events a subscriber is entitled to now and has none
for (`router.pipeline.backfill`); one of the deliveries resource's verbs."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from router.http.auth import subscriber_not_found
from router.http.context import CATALOG, LEDGER, SETTINGS, SUBSCRIBERS
from router.http.errors import validation_failed
from router.http.operations import Resource
from router.http.routes.subscribers import MAX_EVENTS, EventName, event_problems
from router.pipeline.backfill import Backfill
from subscriptions.ids import now_ms, rfc3339

resource = Resource("deliveries")


class Scheduled(BaseModel):
    scheduled: int = Field(description="Deliveries created by this call")


class BackfillRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    since: datetime = Field(
        description="Events received at or after this time (within ROUTER_RETENTION)"
    )
    until: datetime = Field(description="Events received before this time")
    events: list[EventName] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_EVENTS,
        description="Only these events (the subscriber's own event filter applies as well)",
    )


def _ms(moment: datetime) -> int:
    """Milliseconds since the epoch; a time without an offset is UTC."""
    return int(moment.replace(tzinfo=moment.tzinfo or UTC).timestamp() * 1000)


@resource.post(
    "/v1/subscribers/{subscriber_id}/backfill",
    summary="Deliver the retained events of a window the subscriber is entitled to now and "
    "has no delivery for",
    scope="write_deliveries",
    bound="subscriber_path",
    body=BackfillRequest,
    response=Scheduled,
    status=202,
    errors=(404, 422),
)
async def backfill(request: web.Request, body: BackfillRequest) -> Scheduled:
    """Answers once every page is scheduled; a call cut short (a crash, a client timeout)
    and repeated goes on from where it stopped."""
    since, until = _ms(body.since), _ms(body.until)
    retention = request.app[SETTINGS].retention
    oldest = now_ms() - retention * 1000
    problems = event_problems(request.app[CATALOG], body.events)
    if since < oldest:
        problems.append(
            (
                "since",
                f"before the retention: events are kept {retention} s (ROUTER_RETENTION), "
                f"none received before {rfc3339(oldest)} remains",
            )
        )
    if until <= since:
        problems.append(("until", "must be after since"))
    if problems:
        raise validation_failed(problems)
    subscriber_id = request.match_info["subscriber_id"]
    subscriber = await request.app[SUBSCRIBERS].get(subscriber_id)
    if subscriber is None:
        raise subscriber_not_found()
    scheduled = await Backfill(request.app[LEDGER], request.app[CATALOG]).run(
        subscriber, since, until, body.events
    )
    return Scheduled(scheduled=scheduled)
