"""RetryPolicy and parse_retry_after: when a failed delivery is tried again, and when not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from router.core.retry import RetryPolicy, parse_retry_after

SCHEDULE = (5.0, 30.0, 120.0)


def test_attempt_limit_is_schedule_length_plus_one() -> None:
    assert RetryPolicy(SCHEDULE).max_attempts == 4
    assert RetryPolicy((1.0,)).max_attempts == 2


def test_every_failure_but_the_last_allowed_gets_a_delay() -> None:
    policy = RetryPolicy(SCHEDULE)
    assert [policy.next_delay(n) is not None for n in (1, 2, 3)] == [True, True, True]


def test_failure_of_the_last_attempt_gives_up() -> None:
    policy = RetryPolicy(SCHEDULE)
    assert policy.next_delay(4) is None
    assert policy.next_delay(5) is None


def test_retry_after_does_not_extend_the_attempt_limit() -> None:
    assert RetryPolicy(SCHEDULE).next_delay(4, retry_after=10.0) is None


@pytest.mark.parametrize(("failures", "scheduled"), [(1, 5.0), (2, 30.0), (3, 120.0)])
def test_delay_is_the_scheduled_one_within_twenty_percent(failures: int, scheduled: float) -> None:
    policy = RetryPolicy(SCHEDULE)
    delays = [policy.next_delay(failures) for _ in range(500)]
    assert all(d is not None and 0.8 * scheduled <= d <= 1.2 * scheduled for d in delays)


def test_delays_are_jittered_so_retries_do_not_arrive_in_lockstep() -> None:
    policy = RetryPolicy(SCHEDULE)
    delays = [policy.next_delay(2) for _ in range(500)]
    assert max(delays) - min(delays) > 0.2 * 30.0  # type: ignore[operator]


def test_zero_jitter_gives_the_schedule_exactly() -> None:
    policy = RetryPolicy(SCHEDULE, jitter=0.0)
    assert [policy.next_delay(n) for n in (1, 2, 3)] == list(SCHEDULE)


def test_retry_after_between_the_bounds_is_used_as_is() -> None:
    assert RetryPolicy(SCHEDULE).next_delay(1, retry_after=17.0) == 17.0


def test_retry_after_shorter_than_scheduled_waits_the_scheduled_delay() -> None:
    assert RetryPolicy(SCHEDULE).next_delay(2, retry_after=1.0) == 30.0


def test_retry_after_is_capped_at_ten_times_the_scheduled_delay() -> None:
    assert RetryPolicy(SCHEDULE).next_delay(1, retry_after=3600.0) == 50.0


def test_retry_after_zero_waits_the_scheduled_delay() -> None:
    assert RetryPolicy(SCHEDULE).next_delay(3, retry_after=0.0) == 120.0


@pytest.mark.parametrize(("header", "seconds"), [("120", 120.0), (" 7 ", 7.0), ("0", 0.0)])
def test_retry_after_in_seconds(header: str, seconds: float) -> None:
    assert parse_retry_after(header) == seconds


def test_retry_after_as_a_future_http_date() -> None:
    when = datetime.now(UTC) + timedelta(seconds=90)
    seconds = parse_retry_after(format_datetime(when, usegmt=True))
    assert seconds is not None
    assert 88.0 <= seconds <= 90.0


def test_retry_after_as_a_past_http_date_is_now() -> None:
    when = datetime.now(UTC) - timedelta(hours=1)
    assert parse_retry_after(format_datetime(when, usegmt=True)) == 0.0


@pytest.mark.parametrize("header", [None, "", "soon", "-5", "1.5", "Thu, 99 Foo 2025"])
def test_retry_after_absent_or_unreadable_is_none(header: str | None) -> None:
    assert parse_retry_after(header) is None
