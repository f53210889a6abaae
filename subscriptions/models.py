"""The subscriber: its grants (scopes), its restrictions, its signing secrets and status.
Who is entitled to what is `subscriptions.routing`'s."""

from __future__ import annotations

import base64
import secrets
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
)

from subscriptions.filters import PayloadFilter, compile_filter


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


MAX_RATE = 10_000.0  # requests per second
MAX_BURST = 10_000
MAX_RETRY_STEPS = 20
MAX_RETRY_DELAY = 604_800.0  # a week, in seconds


def _not_bool(value: object) -> object:
    # pydantic would read JSON's true and false as 1 and 0.
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


def _no_bools(value: object) -> object:
    if isinstance(value, list):
        for item in value:
            _not_bool(item)
    return value


Number = Annotated[float, BeforeValidator(_not_bool)]


class RateLimit(BaseModel):
    """At most `per_second` requests a second to the subscriber, across every process of
    the router; after a pause, up to `burst` at once."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    per_second: Number = Field(gt=0, le=MAX_RATE, description="Requests per second")
    burst: Annotated[int, BeforeValidator(_not_bool)] = Field(
        default=1, ge=1, le=MAX_BURST, description="Requests allowed at once after a pause"
    )


RetrySchedule = Annotated[
    list[Annotated[float, Field(ge=0, le=MAX_RETRY_DELAY)]],
    BeforeValidator(_no_bools),
    Field(
        min_length=1,
        max_length=MAX_RETRY_STEPS,
        description="Seconds to wait after each failed attempt; its length + 1 attempts in all",
    ),
]


def _compiled(value: object) -> PayloadFilter:
    # Compiled when the subscriber is read, so each version of it is compiled once.
    return value if isinstance(value, PayloadFilter) else compile_filter(value)


# Stored and shown as given; held compiled (`subscriptions.filters`).
Filter = Annotated[
    PayloadFilter,
    PlainValidator(_compiled),
    PlainSerializer(lambda f: f.source, return_type=dict),
    WithJsonSchema({"type": "object"}),
]
# `resource`: deliveries that share a resource key (the catalog names it per event) are
# attempted one at a time, in the order their events were accepted.
Ordering = Literal["none", "resource"]


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
    rate_limit: RateLimit | None = None
    retry_schedule: RetrySchedule | None = None  # None: the router's ROUTER_RETRY_SCHEDULE
    ordering: Ordering = "none"
    filter: Filter | None = None  # payload filter; None: every entitled event
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
