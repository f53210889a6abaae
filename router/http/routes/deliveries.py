"""Deliveries: their log of attempts, a manual retry, replaying a subscriber's deliveries, and
how a subscriber's deliveries have been going lately.

A subscriber-bound key lists only its subscriber's deliveries and gets 404 for any other's,
exactly as for a delivery that does not exist.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from router.core.records import DeliveryStatus
from router.http.auth import bound_subscriber, subscriber_not_found
from router.http.context import HISTORY, SETTINGS, SUBSCRIBERS
from router.http.errors import conflict, not_found
from router.http.operations import Resource
from router.storage.history import Window
from subscriptions.ids import now_ms

resource = Resource("deliveries")

# RFC 3339 section 5.6, `date-time`: an offset (or Z) is required, so no time is read in
# whichever zone the server happens to be in; unlike pydantic's lax parsing, no Unix numbers.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})")
_NOT_RFC3339 = "must be an RFC 3339 time with an offset, e.g. 2026-01-31T09:30:00Z"


def _rfc3339(value: object) -> object:
    if isinstance(value, str) and _RFC3339.fullmatch(value) is None:
        raise ValueError(_NOT_RFC3339)
    return value


Instant = Annotated[datetime, BeforeValidator(_rfc3339)]
_SINCE = "Only those of events received at or after this RFC 3339 time"
_UNTIL = "Only those of events received before this RFC 3339 time (exclusive)"


def window(since: datetime | None, until: datetime | None) -> Window:
    """The listing window of a `since`/`until` query (empty when `until` is not after
    `since`: a window like any other, not an error)."""

    def ms(at: datetime | None) -> int | None:
        # Ids start at the epoch: an earlier time bounds nothing.
        return None if at is None else max(0, int(at.timestamp() * 1000))

    return Window(ms(since), ms(until))


class Attempt(BaseModel):
    attempt: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float
    response_body: str = Field(description="First 4 KiB of the receiver's answer")


class Delivery(BaseModel):
    id: str
    event_id: str
    subscriber_id: str
    event: str
    status: DeliveryStatus
    attempt_count: int
    created_at: datetime
    updated_at: datetime
    next_attempt_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    reason: str | None = Field(default=None, description="Why it was skipped or is dead")

    @classmethod
    def from_record(cls, row: dict[str, str]) -> Delivery:
        def opt(name: str) -> str | None:
            return row.get(name) or None

        def ms(name: str) -> datetime | None:
            value = opt(name)
            return None if value is None else datetime.fromtimestamp(int(value) / 1000, tz=UTC)

        code = opt("last_status_code")
        return cls(
            id=row["id"],
            event_id=row["event_id"],
            subscriber_id=row["subscriber_id"],
            event=row.get("event", ""),
            status=DeliveryStatus(row["status"]),
            attempt_count=int(row.get("attempts", 0)),
            created_at=ms("created_at"),  # type: ignore[arg-type]
            updated_at=ms("updated_at"),  # type: ignore[arg-type]
            next_attempt_at=ms("next_attempt_at") if row["status"] == "failed" else None,
            last_status_code=int(code) if code else None,
            last_error=opt("last_error"),
            reason=opt("reason"),
        )


class DeliveryDetail(Delivery):
    attempts: list[Attempt]


class DeliveryList(BaseModel):
    items: list[Delivery]
    next_cursor: str | None


class DeliveryQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    subscriber_id: str | None = Field(default=None, max_length=200)
    status: DeliveryStatus | None = None
    event: str | None = Field(default=None, max_length=200)
    since: Instant | None = Field(default=None, description=_SINCE)
    until: Instant | None = Field(default=None, description=_UNTIL)
    limit: int = Field(default=50, ge=1, le=100)
    cursor: str | None = Field(default=None, max_length=200)


class Requeued(BaseModel):
    requeued: int


# Deliveries examined for a subscriber's health: enough for a rate, one listing page's read.
HEALTH_SAMPLE = 100
_JUDGED = {DeliveryStatus.succeeded, DeliveryStatus.failed, DeliveryStatus.dead}
_FAILING = {DeliveryStatus.failed, DeliveryStatus.dead}


class Breaker(BaseModel):
    state: Literal["closed", "open", "half_open"] = Field(
        description="`open`: attempts are held until `open_until`; `half_open`: one probe "
        "attempt may run, and its success closes the breaker"
    )
    consecutive_failures: int
    open_until: datetime | None


class SubscriberHealth(BaseModel):
    breaker: Breaker
    sampled: int = Field(
        description=f"Recent deliveries examined, newest first (at most {HEALTH_SAMPLE})"
    )
    success_rate: float | None = Field(
        description="Of the sampled deliveries that were attempted (succeeded, failed or dead), "
        "the share that succeeded; null when none was"
    )
    last_failure: Delivery | None = Field(
        description="The newest sampled delivery that is failed or dead, with its last error"
    )


def breaker_view(raw: dict[str, str], threshold: int, now: int) -> Breaker:
    """What a subscriber's breaker hash means for its next attempt (`router.pipeline.attempt`
    applies the same rule)."""
    failures = int(raw.get("failures", 0))
    open_until = int(raw.get("open_until", 0))
    if failures < threshold:
        state: Literal["closed", "open", "half_open"] = "closed"
    else:
        state = "open" if now < open_until else "half_open"
    return Breaker(
        state=state,
        consecutive_failures=failures,
        open_until=datetime.fromtimestamp(open_until / 1000, tz=UTC) if open_until else None,
    )


def _no_number(value: object) -> object:
    # The document says an RFC 3339 string; pydantic would read a number as Unix time.
    if isinstance(value, int | float):
        raise ValueError("must be an RFC 3339 date-time string")
    return value


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Not `pending`: those are queued already, so the document does not offer it.
    status: Literal["succeeded", "failed", "dead", "skipped"] = Field(
        default="dead", description="Replay the deliveries in this state"
    )
    since: Annotated[datetime, BeforeValidator(_no_number)] | None = Field(
        default=None, description="Only deliveries of events received at or after this time"
    )


async def _visible_delivery(request: web.Request, delivery_id: str) -> dict[str, str]:
    """The delivery's record; 404 if it does not exist or belongs to a subscriber other than
    the one the caller's key is bound to (the same body for both)."""
    row = await request.app[HISTORY].delivery(delivery_id)
    bound = bound_subscriber(request)
    if row is None or (bound is not None and row["subscriber_id"] != bound):
        raise not_found(f"Delivery {delivery_id}")
    return row


@resource.get(
    "/v1/deliveries",
    summary="List deliveries, newest first",
    scope="read_deliveries",
    bound="filter",
    query=DeliveryQuery,
    response=DeliveryList,
    errors=(422,),
)
async def list_deliveries(request: web.Request, query: DeliveryQuery) -> DeliveryList:
    """A subscriber-bound key lists its own subscriber's deliveries (none when the query
    names another subscriber)."""
    bound = bound_subscriber(request)
    if bound is not None and query.subscriber_id not in (None, bound):
        return DeliveryList(items=[], next_cursor=None)
    page = await request.app[HISTORY].list_deliveries(
        subscriber_id=bound or query.subscriber_id,
        status=query.status,
        event=query.event,
        limit=query.limit,
        cursor=query.cursor,
        window=window(query.since, query.until),
    )
    return DeliveryList(
        items=[Delivery.from_record(row) for row in page.items], next_cursor=page.next_cursor
    )


@resource.get(
    "/v1/deliveries/{delivery_id}",
    summary="One delivery with every attempt",
    scope="read_deliveries",
    bound="filter",
    response=DeliveryDetail,
    errors=(404,),
)
async def get_delivery(request: web.Request) -> DeliveryDetail:
    history = request.app[HISTORY]
    delivery_id = request.match_info["delivery_id"]
    row = await _visible_delivery(request, delivery_id)
    base = Delivery.from_record(row)
    attempts = [Attempt.model_validate(a) for a in await history.attempts(delivery_id)]
    return DeliveryDetail(**base.model_dump(), attempts=attempts)


@resource.post(
    "/v1/deliveries/{delivery_id}/retry",
    summary="Attempt a delivery again now, whatever its state",
    scope="write_deliveries",
    bound="filter",
    response=Requeued,
    status=202,
    errors=(404, 409),
)
async def retry_delivery(request: web.Request) -> Requeued:
    delivery_id = request.match_info["delivery_id"]
    history = request.app[HISTORY]
    row = await _visible_delivery(request, delivery_id)
    if row["status"] == DeliveryStatus.pending.value:
        raise conflict(f"Delivery {delivery_id} is already pending (queued or being attempted)")
    return Requeued(requeued=await history.requeue([delivery_id]))


@resource.post(
    "/v1/subscribers/{subscriber_id}/replay",
    summary="Requeue a subscriber's deliveries in one state (dead by default)",
    scope="write_deliveries",
    bound="subscriber_path",
    body=ReplayRequest,
    response=Requeued,
    status=202,
    errors=(404, 422),
)
async def replay(request: web.Request, body: ReplayRequest) -> Requeued:
    subscriber_id = request.match_info["subscriber_id"]
    if await request.app[SUBSCRIBERS].get(subscriber_id) is None:
        raise subscriber_not_found()
    since = body.since.replace(tzinfo=body.since.tzinfo or UTC) if body.since else None
    since_ms = int(since.timestamp() * 1000) if since else None
    return Requeued(
        requeued=await request.app[HISTORY].replay(
            subscriber_id, DeliveryStatus(body.status), since_ms
        )
    )


@resource.get(
    "/v1/subscribers/{subscriber_id}/health",
    summary="A subscriber's breaker, recent success rate and last failure",
    scope="read_deliveries",
    bound="subscriber_path",
    response=SubscriberHealth,
    errors=(404,),
)
async def subscriber_health(request: web.Request) -> SubscriberHealth:
    subscriber_id = request.match_info["subscriber_id"]
    if await request.app[SUBSCRIBERS].get(subscriber_id) is None:
        raise subscriber_not_found()
    history = request.app[HISTORY]
    page = await history.list_deliveries(
        subscriber_id=subscriber_id, status=None, event=None, limit=HEALTH_SAMPLE, cursor=None
    )
    recent = [Delivery.from_record(row) for row in page.items]
    judged = [d for d in recent if d.status in _JUDGED]
    succeeded = sum(d.status is DeliveryStatus.succeeded for d in judged)
    threshold = request.app[SETTINGS].breaker_threshold
    return SubscriberHealth(
        breaker=breaker_view(await history.breaker(subscriber_id), threshold, now_ms()),
        sampled=len(recent),
        success_rate=succeeded / len(judged) if judged else None,
        last_failure=next((d for d in recent if d.status in _FAILING), None),
    )
