"""The routing rule: who is entitled to an event (docs/architecture.md, "The routing rule").

An event of type T, location L, company C goes to subscriber S iff the catalog maps T to a
scope R; S is active and holds R exactly; S has no event filter or it names T; and S has no
tenant binding, or L is one of its locations, or C is its company. One pure function: the
store applies it when fanning out, the delivery pipeline again just before every attempt, and
`explain` spells it out, so the three can never disagree.
"""

from __future__ import annotations

from subscriptions.catalog import Catalog
from subscriptions.models import Subscriber, SubscriberStatus


def entitlement_refusals(
    subscriber: Subscriber,
    event: str,
    location_id: str | None,
    company_id: str | None,
    catalog: Catalog,
) -> list[str]:
    """Every reason `subscriber` may not receive `event` of this tenant; empty if it may.

    The reasons follow the rule's order: the event has a scope in the catalog; the subscriber
    is active and holds that exact scope; its event filter (if any) names the event; its tenant
    binding (if any) contains the location or equals the company.
    """
    reasons: list[str] = []
    required = catalog.required_scope(event)
    if required is None:
        reasons.append(f"event {event} has no scope in the catalog")
    if subscriber.status is not SubscriberStatus.active:
        reasons.append(f"subscriber is {subscriber.status.value}")
    if required is not None and required not in subscriber.scopes:
        reasons.append(f"missing scope {required}")
    if subscriber.events is not None and event not in subscriber.events:
        reasons.append(f"event filter does not include {event}")
    if not _tenant_matches(subscriber, location_id, company_id):
        reasons.append("event belongs to another tenant")
    return reasons


def _tenant_matches(
    subscriber: Subscriber, location_id: str | None, company_id: str | None
) -> bool:
    if subscriber.location_ids is None and subscriber.company_id is None:
        return True
    if location_id is not None and location_id in (subscriber.location_ids or ()):
        return True
    return company_id is not None and company_id == subscriber.company_id


def entitlement_refusal(
    subscriber: Subscriber,
    event: str,
    location_id: str | None,
    company_id: str | None,
    catalog: Catalog,
) -> str | None:
    """Why `subscriber` may not receive `event` of this tenant, or None if it may.

    The first of `entitlement_refusals`, so a refusal and an explanation never disagree.
    """
    reasons = entitlement_refusals(subscriber, event, location_id, company_id, catalog)
    return reasons[0] if reasons else None
