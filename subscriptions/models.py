"""The subscriber and its grants, and the routing rule that decides who is entitled to an event.

`entitlement_refusal` is DESIGN.md's routing rule as one pure function; the store applies it
when fanning out and the delivery worker applies it again just before every attempt.
"""

from __future__ import annotations

import base64
import secrets
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from subscriptions.catalog import Catalog


class SubscriberStatus(StrEnum):
    active = "active"
    paused = "paused"  # set by an operator; deliveries wait as `skipped`
    disabled = "disabled"  # set by the router when the receiver answered 410 Gone


class SigningSecret(BaseModel):
    """One `whsec_` secret; `expires_at` (ms) is set on a secret superseded by a rotation."""

    model_config = ConfigDict(frozen=True)
    secret: str
    expires_at: int | None = None


def generate_secret(nbytes: int = 32) -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of `nbytes` random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(nbytes)).decode("ascii")


class Subscriber(BaseModel):
    """An app that receives events, with its grants (`scopes`) and optional restrictions.

    `version` increases with every change; it is the ETag operators send back in If-Match.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    url: str
    scopes: list[str]
    events: list[str] | None = None
    location_ids: list[str] | None = None
    company_id: str | None = None
    status: SubscriberStatus = SubscriberStatus.active
    status_reason: str | None = None
    secrets: list[SigningSecret] = Field(min_length=1)
    created_at: int
    updated_at: int
    version: int = 1

    @property
    def secret(self) -> str:
        """The current signing secret (the newest one)."""
        return self.secrets[0].secret

    def signing_secrets(self, now_ms: int) -> list[str]:
        """Secrets that sign a delivery now: the current one and any still in their grace."""
        return [s.secret for s in self.secrets if s.expires_at is None or s.expires_at > now_ms]


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
