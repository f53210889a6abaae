"""The router's records: event and delivery states, an accepted event, a unit of delivery work
and its one wire format, and how a delivery is named.

A delivery's work travels through Redis as a *member* string (`<delivery> <subscriber>
<event>`): in the ready stream, the retry schedule and the parked sets. `WorkItem.member`
spells it and `WorkItem.parse` reads it; nothing else does.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from functools import lru_cache
from typing import Any, NamedTuple

import orjson

from subscriptions.catalog import resource_value


class EventStatus(StrEnum):
    accepted = "accepted"
    duplicate = "duplicate"
    unroutable = "unroutable"


class DeliveryStatus(StrEnum):
    pending = "pending"
    succeeded = "succeeded"
    failed = "failed"  # will be retried
    dead = "dead"
    skipped = "skipped"


TERMINAL = frozenset({DeliveryStatus.succeeded, DeliveryStatus.dead, DeliveryStatus.skipped})


class IncomingEvent(NamedTuple):
    """An event as ingest hands it to the store (a tuple: made for every event accepted, and
    cheaper to build than a frozen dataclass)."""

    event_id: str
    body: bytes
    event: str  # the event name routing uses (after aliases)
    payload_type: str  # the payload's own `type` ('' when it had none)
    location_id: str | None
    company_id: str | None
    webhook_id: str | None
    body_digest: str | None  # sha256 hex of the body, when a body seen before is a duplicate
    received_at: int  # ms
    routable: bool
    traceparent: str | None = None  # the ingest span's W3C trace context, when tracing is on


def work_member(delivery_id: str, subscriber_id: str, event_id: str) -> str:
    """The member string that stands for a delivery's work in every queue."""
    return f"{delivery_id} {subscriber_id} {event_id}"


class WorkItem(NamedTuple):
    """One ready-stream entry: a delivery due for an attempt (a tuple: made for every
    delivery read, and cheaper to build than a frozen dataclass)."""

    entry_id: str
    delivery_id: str
    subscriber_id: str
    event_id: str

    @property
    def member(self) -> str:
        return work_member(self.delivery_id, self.subscriber_id, self.event_id)

    @classmethod
    def parse(cls, entry_id: bytes | str, member: bytes | str) -> WorkItem:
        text = member.decode() if isinstance(member, bytes) else member
        delivery_id, subscriber_id, event_id = text.split(" ")
        eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        return cls(eid, delivery_id, subscriber_id, event_id)


class AttemptContext(NamedTuple):
    """What one attempt needs from the store; empty or None where a record is gone."""

    delivery: dict[str, str]  # status, attempts, schedule_index; empty: the record expired
    # body, event, location_id, company_id, received_at (traceparent if read); empty: expired
    event: dict[str, Any]
    subscriber: bytes | None  # the subscriber's JSON; None: deleted
    breaker: dict[str, str]  # failures, open_until; empty: closed


def payload_of(body: bytes | str | None) -> dict[str, Any] | None:
    """An event's raw body parsed, if it is a JSON object (None otherwise)."""
    if body is None:
        return None
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None


def resource_of(body: bytes | None, path: str) -> str | None:
    """The resource an event's raw body is about (the value at the catalog's dotted `path`);
    None if the body names none."""
    payload = payload_of(body)
    return None if payload is None else resource_value(payload, path)


ID_BODY_LENGTH = 26  # the characters after `evt_` in an event id (`subscriptions.ids`)


@lru_cache(maxsize=65_536)
def _subscriber_suffix(subscriber_id: str) -> str:
    digest = hashlib.blake2b(subscriber_id.encode(), digest_size=5).digest()
    return "".join("0123456789abcdefghjkmnpqrstvwxyz"[b % 32] for b in digest)


def delivery_id_for(event_id: str, subscriber_id: str) -> str:
    """Deterministic, so re-dispatching an event can never create a second delivery for the
    same subscriber; it sorts by the event's time, like the event id it embeds."""
    return f"dlv_{event_id.removeprefix('evt_')}{_subscriber_suffix(subscriber_id)}"


def event_id_of(delivery_id: str) -> str:
    """The id of the event a delivery was made for (the inverse of `delivery_id_for`)."""
    return f"evt_{delivery_id.removeprefix('dlv_')[:ID_BODY_LENGTH]}"
