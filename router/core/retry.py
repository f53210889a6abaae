"""The retry policy: when a failed delivery is attempted again, and when it is given up.

A policy is a value handed to the delivery worker; change the schedule with
`ROUTER_RETRY_SCHEDULE`, or replace this class, without touching the delivery code.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from subscriptions.ids import now_ms


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential-ish backoff on a fixed schedule, with jitter and Retry-After honoured.

    `schedule[i]` is the wait after failed attempt i+1, so `len(schedule) + 1` attempts are
    made before a delivery is dead.
    """

    schedule: tuple[float, ...]
    jitter: float = 0.2
    retry_after_ceiling: float = 10.0  # Retry-After is honoured up to this multiple of the delay

    @property
    def max_attempts(self) -> int:
        return len(self.schedule) + 1

    def next_delay(self, failed_attempts: int, retry_after: float | None = None) -> float | None:
        """Seconds to wait after the `failed_attempts`-th consecutive failure; None = give up.

        The scheduled delay gets +/- `jitter` so retries of many deliveries do not arrive in
        lockstep. A receiver's Retry-After replaces it, clamped to [scheduled, ceiling x
        scheduled]: never sooner than we would have retried anyway, never absurdly later.
        """
        if failed_attempts > len(self.schedule):
            return None
        base = self.schedule[failed_attempts - 1]
        if retry_after is not None:
            return min(max(retry_after, base), base * self.retry_after_ceiling)
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


def parse_retry_after(value: str | None) -> float | None:
    """A Retry-After header (delta-seconds or HTTP-date) as seconds from now; None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now_ms() / 1000)
