"""The subscriber: its grants (scopes), its restrictions, its signing secrets and status.
Who is entitled to what is `subscriptions.routing`'s."""

from __future__ import annotations

import base64
import secrets
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


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
