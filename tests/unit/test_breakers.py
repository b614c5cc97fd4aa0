"""Circuit breakers, pure parts: which results count, park times, replies, the policy's guards."""

from __future__ import annotations

import random
from typing import Any

import pytest

from workers import breakers, resources
from workers.breakers import Permit, Result, State, Thresholds, classify
from workers.errors import Defer, InvalidArguments, PermanentError, Retry, Throttled
from workers.job import Job
from workers.policies import DEFAULT_POLICIES, Execution, declared_options
from workers.policies.breaker import PERMIT, Breaker
from workers.settings import Settings


def a_job(**kwargs: Any) -> Job:
    return Job(
        id="j1", task="tests.breaker.deliver", key="k1", queue="default", args=(), kwargs=kwargs
    )


def an_execution(**options: Any) -> Execution:
    return Execution(app=None, settings=Settings(), options=options, time_limit=10.0)


@pytest.fixture
def no_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any Redis access by the code under test fails the test."""

    def refuse() -> None:
        raise AssertionError("Redis was called")

    monkeypatch.setattr(resources, "redis_client", refuse)
    monkeypatch.setattr(resources, "scripts", refuse)


def test_retryable_errors_are_failures_and_a_return_is_a_success() -> None:
    """A plain exception, a timeout and ``Retry`` (e.g. a 503 with Retry-After) count against the
    destination; a call that returned counts for it.
    """
    assert classify(None) is Result.SUCCESS
    assert classify(RuntimeError("503")) is Result.FAILURE
    assert classify(TimeoutError()) is Result.FAILURE
    assert classify(Retry(delay=2.0)) is Result.FAILURE


def test_permanent_errors_throttling_and_deferrals_count_for_nothing() -> None:
    """A permanent error (HTTP 400: the destination answered), a 429 (the rate limiter's
    concern) and a deferral (no call was made) are neutral.
    """
    assert classify(PermanentError("400")) is Result.NEUTRAL
    assert classify(InvalidArguments("bad")) is Result.NEUTRAL
    assert classify(Throttled(2.0)) is Result.NEUTRAL
    assert classify(Defer(1.0, "rate_limited")) is Result.NEUTRAL


def test_thresholds_come_from_the_settings() -> None:
    """The JOBS_BREAKER_* settings are the thresholds, defaults as in issue 3."""
    assert Thresholds.from_settings(Settings()) == Thresholds(
        failures=5, failure_ratio=0.5, min_calls=10, window=60, open_seconds=30, probes=3
    )
    tuned = Settings(breaker_open_seconds=3, breaker_failures=2)
    assert Thresholds.from_settings(tuned).open_seconds == 3
    assert Thresholds.from_settings(tuned).failures == 2


def test_a_job_refused_by_an_open_breaker_is_parked_until_half_open_plus_a_small_spread() -> None:
    """Refused while open with 12 s to go: parked 12 s plus at most 10 % of the open time (and at
    most 1 s), so parked jobs do not all come back in the same instant.
    """
    permit = Permit("h", allowed=False, wait=12.0, generation=1, probe=False, state=State.OPEN)
    rng = random.Random(7)
    waits = [permit.park_for(Thresholds(), rng) for _ in range(200)]
    assert all(12.0 <= w <= 13.0 for w in waits)
    assert max(waits) - min(waits) > 0.5
    short = [permit.park_for(Thresholds(open_seconds=3), rng) for _ in range(200)]
    assert all(12.0 <= w <= 12.3 for w in short)


def test_a_job_refused_while_the_probes_are_out_waits_briefly() -> None:
    """Refused while half-open: a 1-2 s jittered wait, never longer than the open time."""
    permit = Permit("h", allowed=False, wait=0, generation=2, probe=False, state=State.HALF_OPEN)
    rng = random.Random(7)
    assert all(1.0 <= permit.park_for(Thresholds(), rng) <= 2.0 for _ in range(100))
    assert all(0.5 <= permit.park_for(Thresholds(open_seconds=0.5), rng) <= 1.0 for _ in range(100))


def test_script_replies_become_permits_and_states() -> None:
    """Allow replies map to permits (wait in seconds, probe flag, state); a missing breaker's
    peek is None; a closed one shows no open times.
    """
    assert breakers.parse_allow("h", [b"deny", 2500, 3, 0]) == Permit(
        "h", allowed=False, wait=2.5, generation=3, probe=False, state=State.OPEN
    )
    assert breakers.parse_allow("h", [b"allow", 0, 4, 1]).state is State.HALF_OPEN
    assert breakers.parse_allow("h", [b"allow", 0, 0, 0]).state is State.CLOSED
    assert breakers.parse_allow("h", [b"busy", 0, 4, 0]).state is State.HALF_OPEN
    assert breakers.parse_peek("h", [b"missing"]) is None
    shown = breakers.parse_peek("h", [b"open", 5, 7, 1_700_000_000_000, 1_700_000_030_000, 0, 1])
    assert shown is not None
    assert shown.as_dict() == {
        "name": "h",
        "state": "open",
        "failures": 5,
        "calls": 7,
        "opened_at": "2023-11-14T22:13:20+00:00",
        "half_open_at": "2023-11-14T22:13:50+00:00",
        "probes_in_flight": 0,
    }
    closed = breakers.parse_peek("h", [b"closed", 0, 2, 1_700_000_000_000, 1, 3, 4])
    assert closed is not None
    assert (closed.opened_at, closed.half_open_at, closed.probes_in_flight) == (None, None, 0)


def test_breaker_key_is_a_declared_option_and_the_breaker_runs_before_the_rate_limit() -> None:
    """``breaker_key`` is accepted by ``@job``; the breaker is checked after the claim and before
    the rate limit (a job for a dead destination never burns a token); Retry is entered before
    all three, so a transient error in any of their ``before`` hooks is retried.
    """
    assert "breaker_key" in declared_options()
    names = [type(policy).__name__ for policy in DEFAULT_POLICIES]
    order = [names.index(n) for n in ("Retry", "Idempotency", "Breaker", "RateLimit")]
    assert order == sorted(order)


def test_a_task_without_breaker_key_makes_no_redis_call(no_redis: None) -> None:
    """No ``breaker_key`` (or a key function returning None): before, after_success and
    after_failure never touch Redis.
    """
    policy = Breaker()
    for execution in (an_execution(), an_execution(breaker_key=lambda _job: None)):
        policy.before(a_job(), execution)
        policy.after_success(a_job(), execution)
        policy.after_failure(a_job(), execution, RuntimeError("boom"))
        assert PERMIT not in execution.extra


def test_a_neutral_result_of_a_non_probe_call_makes_no_redis_call(no_redis: None) -> None:
    """A permanent error after a call allowed while closed changes nothing: no Redis call."""
    execution = an_execution()
    execution.extra[PERMIT] = Permit(
        "h", allowed=True, wait=0, generation=0, probe=False, state=State.CLOSED
    )
    Breaker().after_failure(a_job(), execution, PermanentError("400"))
    assert PERMIT not in execution.extra


def test_a_broken_breaker_key_is_a_permanent_error_naming_the_task(no_redis: None) -> None:
    """A key function that raises or returns a non-string dead-letters the job with a message
    naming the task, instead of retrying a bug.
    """
    with pytest.raises(PermanentError, match=r"breaker_key of tests\.breaker\.deliver failed"):
        Breaker().before(a_job(), an_execution(breaker_key=lambda job: job.kwargs["url"]))
    with pytest.raises(PermanentError, match="returned int"):
        Breaker().before(a_job(), an_execution(breaker_key=lambda _job: 42))
