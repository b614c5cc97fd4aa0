"""Retries with backoff and full jitter, permanent errors and exhaustion → dead letters."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

import jobs
from tests import tasks
from tests.integration.test_execution import dead, effects, runs
from tests.support.worker import wait_for
from workers.backoff import backoff_ceiling

#: Every test runs with one message per job and with envelopes (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("delivery")


def test_a_job_failing_twice_then_succeeding_runs_three_attempts_within_backoff_bounds(
    clean: Any, workers: Any
) -> None:
    """Given a task that fails on attempts 1 and 2, then the worker runs attempts 1, 2, 3 (the
    attempt number is visible to the task), each retry waits at most the full-jitter ceiling,
    and the side effect happens once.
    """
    db, _ = clean
    workers()
    jobs.enqueue(tasks.record, name="flaky", fail_times=2)
    wait_for(lambda: effects(db, "flaky"), 30, "success on attempt 3")
    attempts = runs(db, "flaky")
    assert [a for a, _ in attempts] == [1, 2, 3]
    for (attempt, at), (_, next_at) in itertools.pairwise(attempts):
        gap = (next_at - at).total_seconds()
        ceiling = backoff_ceiling(attempt, base=0.3, cap=2.0)
        # full jitter: delay in [0, ceiling]; plus promotion tick (≤ 0.25 s) and scheduling slack
        assert 0 <= gap <= ceiling + 1.0, (attempt, gap, ceiling)
    assert effects(db, "flaky") == [("flaky", 1)]
    assert dead(db) == []


def test_a_permanent_error_is_dead_lettered_at_once(clean: Any, workers: Any) -> None:
    """Given a task raising PermanentError, then it runs once and lands in dead_letters with
    reason permanent_error, attempts 1, its key and kwargs.
    """
    db, _ = clean
    workers()
    ref = jobs.enqueue(tasks.record, name="perm", permanent=True)
    wait_for(lambda: dead(db), 20, "dead letter")
    assert dead(db) == [
        (
            "tests.record",
            "permanent_error",
            1,
            "PermanentError",
            ref.key,
            {"name": "perm", "permanent": True},
        )
    ]
    assert len(runs(db, "perm")) == 1


def test_exhausted_retries_are_dead_lettered_with_attempts_equal_to_max(
    clean: Any, workers: Any
) -> None:
    """Given a task that always fails (max_attempts=3), then it runs 3 times and is
    dead-lettered with reason exhausted and attempts 3; no side effect.
    """
    db, _ = clean
    workers()
    jobs.enqueue(tasks.record, name="always", fail_times=99)
    wait_for(lambda: dead(db), 30, "dead letter")
    task, reason, attempts, exc_type, _, _ = dead(db)[0]
    assert (task, reason, attempts, exc_type) == ("tests.record", "exhausted", 3, "Boom")
    assert [a for a, _ in runs(db, "always")] == [1, 2, 3]
    assert effects(db, "always") == []
    row = db.execute("SELECT traceback, fingerprint FROM dead_letters").fetchone()
    assert "Boom" in row[0]
    assert row[1].startswith("Boom@tasks.py:record")
