"""Pure pieces of replay: the rate limiter, rate parsing and the CLI's time parsing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ops.cli.dlq import parse_moment
from workers.errors import InvalidJob
from workers.replay import TokenBucket, parse_rate


class FakeClock:
    """A clock that only moves when the bucket sleeps (or the test says so)."""

    def __init__(self) -> None:
        """Start at t=100 s."""
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        """The current time."""
        return self.now

    def sleep(self, seconds: float) -> None:
        """Advance the clock instead of sleeping."""
        self.slept.append(seconds)
        self.now += seconds


def test_a_full_bucket_lets_one_seconds_worth_through_without_sleeping() -> None:
    """Given a 10/s bucket, when 10 tokens are taken at once, then nobody sleeps."""
    clock = FakeClock()
    bucket = TokenBucket(10, clock=clock, sleep=clock.sleep)
    assert bucket.take(10) == 0.0
    assert clock.slept == []


def test_the_long_run_rate_holds_for_any_batch_size() -> None:
    """The long run rate holds for any batch size.

    Given a 10/s bucket, when 100 tokens are taken in batches of 7, then the time spent is
    about 9 s (100 tokens, minus the 10 the full bucket started with, at 10/s).
    """
    clock = FakeClock()
    bucket = TokenBucket(10, clock=clock, sleep=clock.sleep)
    start = clock.now
    for size in [7] * 14 + [2]:
        bucket.take(size)
    assert clock.now - start == pytest.approx(9.0)


def test_tokens_refill_while_idle_but_never_beyond_one_seconds_worth() -> None:
    """Given a drained 5/s bucket left idle for a minute, then only 5 tokens are free again."""
    clock = FakeClock()
    bucket = TokenBucket(5, clock=clock, sleep=clock.sleep)
    bucket.take(5)
    clock.now += 60
    assert bucket.take(5) == 0.0
    assert bucket.take(1) == pytest.approx(0.2)


def test_a_rate_below_one_per_second_still_lets_one_job_through() -> None:
    """Given 0.5/s, then the first job goes at once and the second waits 2 s."""
    clock = FakeClock()
    bucket = TokenBucket(0.5, clock=clock, sleep=clock.sleep)
    assert bucket.take(1) == 0.0
    assert bucket.take(1) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        ("20", 20.0),
        ("20/s", 20.0),
        (" 600/m ", 10.0),
        ("3600/h", 1.0),
        ("0.5", 0.5),
        ("30/min", 0.5),
    ],
)
def test_rates_are_read_per_second_minute_or_hour(text: str, per_second: float) -> None:
    """Given N, N/s, N/m or N/h, then the rate is in jobs per second."""
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["", "fast", "10/d", "-3", "0", "0/s"])
def test_malformed_or_zero_rates_are_refused(text: str) -> None:
    """Given a rate that is not a positive N[/unit], then InvalidJob names the rate."""
    with pytest.raises(InvalidJob) as caught:
        parse_rate(text)
    assert caught.value.field == "rate"


def test_relative_ages_count_back_from_now() -> None:
    """Given 90m, 2d or 1w, then the moment is that long before now."""
    now = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)
    assert parse_moment("90m", now=now) == now - timedelta(minutes=90)
    assert parse_moment("2d", now=now) == now - timedelta(days=2)
    assert parse_moment("1w", now=now) == now - timedelta(weeks=1)
    assert parse_moment("30s", now=now) == now - timedelta(seconds=30)


def test_iso_datetimes_are_utc_when_naive_and_converted_when_not() -> None:
    """Given ISO datetimes, then naive ones are read as UTC and offsets are converted to UTC."""
    assert parse_moment("2024-05-01T12:00") == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_moment("2024-05-01") == datetime(2024, 5, 1, tzinfo=UTC)
    assert parse_moment("2024-05-01T14:00+02:00") == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("text", ["yesterday", "1y", "2024-13-01", "-1h"])
def test_anything_else_is_refused_with_the_accepted_forms(text: str) -> None:
    """Given text that is neither an ISO datetime nor an age, then ValueError says what works."""
    with pytest.raises(ValueError, match="neither an ISO datetime"):
        parse_moment(text)
