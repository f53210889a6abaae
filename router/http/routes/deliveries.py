"""Deliveries: their log of attempts, a manual retry, and replaying a subscriber's deliveries."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from router.core.records import DeliveryStatus
from router.http.context import HISTORY, SUBSCRIBERS
from router.http.errors import conflict, not_found
from router.http.operations import Resource

resource = Resource("deliveries")


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
    limit: int = Field(default=50, ge=1, le=100)
    cursor: str | None = Field(default=None, max_length=200)


class Requeued(BaseModel):
    requeued: int


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


@resource.get(
    "/v1/deliveries",
    summary="List deliveries, newest first",
    scope="read_deliveries",
    query=DeliveryQuery,
    response=DeliveryList,
    errors=(422,),
)
async def list_deliveries(request: web.Request, query: DeliveryQuery) -> DeliveryList:
    page = await request.app[HISTORY].list_deliveries(
        subscriber_id=query.subscriber_id,
        status=query.status,
        event=query.event,
        limit=query.limit,
        cursor=query.cursor,
    )
    return DeliveryList(
        items=[Delivery.from_record(row) for row in page.items], next_cursor=page.next_cursor
    )


@resource.get(
    "/v1/deliveries/{delivery_id}",
    summary="One delivery with every attempt",
    scope="read_deliveries",
    response=DeliveryDetail,
    errors=(404,),
)
async def get_delivery(request: web.Request) -> DeliveryDetail:
    history = request.app[HISTORY]
    delivery_id = request.match_info["delivery_id"]
    row = await history.delivery(delivery_id)
    if row is None:
        raise not_found(f"Delivery {delivery_id}")
    base = Delivery.from_record(row)
    attempts = [Attempt.model_validate(a) for a in await history.attempts(delivery_id)]
    return DeliveryDetail(**base.model_dump(), attempts=attempts)


@resource.post(
    "/v1/deliveries/{delivery_id}/retry",
    summary="Attempt a delivery again now, whatever its state",
    scope="write_deliveries",
    response=Requeued,
    status=202,
    errors=(404, 409),
)
async def retry_delivery(request: web.Request) -> Requeued:
    delivery_id = request.match_info["delivery_id"]
    history = request.app[HISTORY]
    row = await history.delivery(delivery_id)
    if row is None:
        raise not_found(f"Delivery {delivery_id}")
    if row["status"] == DeliveryStatus.pending.value:
        raise conflict(f"Delivery {delivery_id} is already pending (queued or being attempted)")
    return Requeued(requeued=await history.requeue([delivery_id]))


@resource.post(
    "/v1/subscribers/{subscriber_id}/replay",
    summary="Requeue a subscriber's deliveries in one state (dead by default)",
    scope="write_deliveries",
    body=ReplayRequest,
    response=Requeued,
    status=202,
    errors=(404, 422),
)
async def replay(request: web.Request, body: ReplayRequest) -> Requeued:
    subscriber_id = request.match_info["subscriber_id"]
    if await request.app[SUBSCRIBERS].get(subscriber_id) is None:
        raise not_found(f"Subscriber {subscriber_id}")
    since = body.since.replace(tzinfo=body.since.tzinfo or UTC) if body.since else None
    since_ms = int(since.timestamp() * 1000) if since else None
    return Requeued(
        requeued=await request.app[HISTORY].replay(
            subscriber_id, DeliveryStatus(body.status), since_ms
        )
    )
