"""The routing rule: who is entitled to an event (docs/architecture.md, "The routing rule").

An event of type T, location L, company C, payload P goes to subscriber S iff the catalog
maps T to a scope R; S is active and holds R exactly; S has no event filter or it names T;
S has no tenant binding, or L is one of its locations, or C is its company; and S has no
payload filter or P matches it (`subscriptions.filters`). One pure function,
`entitlement_refusal`: the store applies it when fanning out, the delivery pipeline again
just before every attempt, and `explain` spells it out, so the three can never disagree.
`Audience` is the same rule for every candidate of one (event, tenant) at once, the payload
applied last, so fan-out reads and parses an event's payload only when a filter needs it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from subscriptions.catalog import Catalog
from subscriptions.filters import FilterIndex
from subscriptions.models import Subscriber, SubscriberStatus

# The event's parsed JSON body; None when it is not at hand (a subscriber with a payload
# filter is then refused: the rule never guesses).
Payload = Mapping[str, Any] | None


def entitlement_refusals(
    subscriber: Subscriber,
    event: str,
    location_id: str | None,
    company_id: str | None,
    catalog: Catalog,
    payload: Payload,
) -> list[str]:
    """Every reason `subscriber` may not receive `event` of this tenant with this payload;
    empty if it may.

    The reasons follow the rule's order: the event has a scope in the catalog; the subscriber
    is active and holds that exact scope; its event filter (if any) names the event; its tenant
    binding (if any) contains the location or equals the company; its payload filter (if any)
    matches the payload.
    """
    reasons = standing_refusals(subscriber, event, location_id, company_id, catalog)
    refusal = filter_refusal(subscriber, payload)
    return reasons if refusal is None else [*reasons, refusal]


def entitlement_refusal(
    subscriber: Subscriber,
    event: str,
    location_id: str | None,
    company_id: str | None,
    catalog: Catalog,
    payload: Payload,
) -> str | None:
    """Why `subscriber` may not receive `event` of this tenant with this payload, or None if
    it may: the rule's one entry point.

    The first of `entitlement_refusals`, so a refusal and an explanation never disagree.
    """
    reasons = standing_refusals(subscriber, event, location_id, company_id, catalog)
    return reasons[0] if reasons else filter_refusal(subscriber, payload)


def standing_refusals(
    subscriber: Subscriber,
    event: str,
    location_id: str | None,
    company_id: str | None,
    catalog: Catalog,
) -> list[str]:
    """The reasons that do not depend on the payload: scope, status, event filter, tenant."""
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


def filter_refusal(subscriber: Subscriber, payload: Payload) -> str | None:
    """Why the subscriber's payload filter keeps `payload` out (the predicate that failed and
    the value found), or None if it has no filter or the filter matches."""
    if subscriber.filter is None:
        return None
    if payload is None:
        return "filter: no payload to check it against"
    failure = subscriber.filter.failure(payload)
    return None if failure is None else f"filter: {failure}"


def _tenant_matches(
    subscriber: Subscriber, location_id: str | None, company_id: str | None
) -> bool:
    if subscriber.location_ids is None and subscriber.company_id is None:
        return True
    if location_id is not None and location_id in (subscriber.location_ids or ()):
        return True
    return company_id is not None and company_id == subscriber.company_id


class Audience:
    """The subscribers an (event, tenant) may go to, before their payload filters: built
    once from the candidates that pass `standing_refusals`, then asked per event.

    `entitled(payload)` gives the same subscribers as `entitlement_refusal` would, in the
    candidates' order: those without a filter, and those whose filter matches the payload
    (tested through a `FilterIndex`, so a payload costs a lookup per filtered path and a
    test of only the filters that can match it).
    """

    def __init__(self, candidates: Sequence[Subscriber]) -> None:
        self.subscribers = list(candidates)
        self._unfiltered = [i for i, s in enumerate(self.subscribers) if s.filter is None]
        self._filters = FilterIndex(
            [(i, s.filter) for i, s in enumerate(self.subscribers) if s.filter is not None]
        )

    @property
    def needs_payload(self) -> bool:
        """True if some candidate's filter must see the payload."""
        return len(self._filters) > 0

    def entitled(self, payload: Payload) -> list[Subscriber]:
        if not self.needs_payload:
            return self.subscribers
        matched = self._filters.matching(payload) if payload is not None else []
        return [self.subscribers[i] for i in sorted([*self._unfiltered, *matched])]
