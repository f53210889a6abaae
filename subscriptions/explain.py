"""Why a subscriber would, or would not, receive an event: the routing rule, spelled out.

An operator asks this when a receiver says it never got an event. The verdict is computed
by the same rule the router applies (`subscriptions.routing`), so it
cannot disagree with what the router does.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from subscriptions.catalog import Catalog
from subscriptions.models import Ordering, RateLimit, Subscriber
from subscriptions.routing import Payload, entitlement_refusal, entitlement_refusals


class DeliveryTerms(BaseModel):
    """The subscriber's own terms for a delivery of the event."""

    model_config = ConfigDict(frozen=True)

    rate_limit: RateLimit | None = Field(description="null: no limit")
    retry_schedule: list[float] | None = Field(description="null: the router's schedule")
    ordering: Ordering
    resource_key: str | None = Field(
        description="With ordering `resource`: the payload field whose value orders the "
        "event's deliveries (from the catalog); null: not ordered"
    )


class Verdict(BaseModel):
    """Whether one subscriber is entitled to one event, and every reason it is not."""

    model_config = ConfigDict(frozen=True)

    subscriber_id: str
    event: str = Field(description="The event name, after resolving payload-type aliases")
    required_scope: str | None = Field(description="The scope the event needs; null if unknown")
    entitled: bool
    reasons: list[str] = Field(description="Every reason the event would not be delivered")
    delivery: DeliveryTerms = Field(description="How it would be delivered")


def explain(
    subscriber: Subscriber,
    event: str,
    location_id: str | None,
    company_id: str | None,
    catalog: Catalog,
    payload: Payload = None,
) -> Verdict:
    """The verdict for `event` (an event name or a payload `type` alias) of this tenant and,
    if given, this payload (without one, a subscriber with a payload filter is refused)."""
    name = catalog.event_for_payload_type(event)
    args = (subscriber, name, location_id, company_id, catalog, payload)
    return Verdict(
        subscriber_id=subscriber.id,
        event=name,
        required_scope=catalog.required_scope(name),
        entitled=entitlement_refusal(*args) is None,
        reasons=entitlement_refusals(*args),
        delivery=DeliveryTerms(
            rate_limit=subscriber.rate_limit,
            retry_schedule=subscriber.retry_schedule,
            ordering=subscriber.ordering,
            resource_key=catalog.resource_key(name) if subscriber.ordering == "resource" else None,
        ),
    )
