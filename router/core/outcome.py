"""The outcome policy: what one attempt's result means for its delivery.

A success closes the subscriber's breaker; `410 Gone` is final and disables the subscriber;
any other failure is retried on the `RetryPolicy`'s schedule (a receiver's `Retry-After`
honoured within its bounds) and counts towards opening the breaker, until the schedule is
used up and the delivery is dead. `judge` decides; the delivery pipeline records what it
decided, atomically with the queue acknowledgement. Change the policy here, not there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from router.core.records import DeliveryStatus
from router.core.retry import RetryPolicy
from subscriptions.ids import rfc3339


class AttemptResult(NamedTuple):
    """What one POST to a receiver came to."""

    status_code: int | None
    error: str | None
    duration_ms: float
    response_body: str
    retry_after: float | None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True)
class Outcome:
    """A delivery's next state, as the store records it."""

    status: DeliveryStatus
    fields: dict[str, str | int] = field(default_factory=dict)  # delivery fields to set
    attempt: dict[str, Any] | None = None  # the attempt's log entry, if one was made
    retry_at: int | None = None  # ms; the retry schedule's due time
    # True closes the subscriber's breaker, False counts a failure towards opening it, None
    # leaves it alone (no attempt reached the receiver).
    breaker: bool | None = None
    disable_reason: str | None = None  # the subscriber is to be disabled, for this reason

    @property
    def metric(self) -> str:
        """The `router_deliveries_total` outcome label (the StrEnum is its value)."""
        return self.status


GONE_REASON = "receiver answered 410 Gone; subscriber disabled"


def skipped(reason: str) -> Outcome:
    """No attempt: the routing rule (or the event's expiry) says this delivery is not due."""
    return Outcome(DeliveryStatus.skipped, {"reason": reason})


def failed_internally(error: BaseException) -> Outcome:
    """A bug met while handling the delivery: dead-lettered with the reason, where an
    operator can see and replay it, instead of a poison message reclaimed forever."""
    return Outcome(DeliveryStatus.dead, {"reason": f"internal error: {type(error).__name__}"})


def judge(
    result: AttemptResult,
    *,
    attempt: int,
    failures: int,
    policy: RetryPolicy,
    started_ms: int,
    now_ms: int,
) -> Outcome:
    """The outcome of attempt number `attempt`, made at `started_ms`, after `failures`
    consecutive failed attempts of this delivery so far."""
    entry = {
        "attempt": attempt,
        "at": rfc3339(started_ms),
        "status_code": result.status_code,
        "error": result.error,
        "duration_ms": result.duration_ms,
        "response_body": result.response_body,
    }
    fields: dict[str, str | int] = {
        "attempts": attempt,
        "last_status_code": result.status_code or "",
        "last_error": result.error or "",
        "next_attempt_at": "",
    }
    if result.succeeded:
        return Outcome(DeliveryStatus.succeeded, fields, entry, breaker=True)
    if result.status_code == 410:
        fields["reason"] = GONE_REASON
        return Outcome(DeliveryStatus.dead, fields, entry, disable_reason=GONE_REASON)
    failures += 1
    fields["schedule_index"] = failures
    delay = policy.next_delay(failures, result.retry_after)
    if delay is None:
        fields["reason"] = f"gave up after {attempt} attempts"
        return Outcome(DeliveryStatus.dead, fields, entry, breaker=False)
    due = now_ms + int(delay * 1000)
    fields["next_attempt_at"] = due
    return Outcome(DeliveryStatus.failed, fields, entry, retry_at=due, breaker=False)
