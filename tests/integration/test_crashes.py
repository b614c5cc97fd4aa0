"""Worker crashes: SIGKILL mid-task, a job that kills its own worker, crash failpoints."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

import jobs
from tests import tasks
from tests.integration.test_execution import dead, effects, runs
from tests.support.worker import wait_for

#: Every test runs with one message per job and with envelopes (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("delivery")


def test_a_worker_sigkilled_mid_task_has_the_task_completed_exactly_once_by_a_new_worker(
    clean: Any, workers: Any
) -> None:
    """Given a task sleeping inside its body, when the whole worker is SIGKILLed, then after a
    new worker starts the task completes, and its side effect exists exactly once.
    """
    db, redis_client = clean
    short_lease = {"JOBS_TASKS": json.dumps({"tests.record": {"time_limit": 5}})}
    first = workers(concurrency=1, extra_env=short_lease)
    jobs.enqueue(tasks.record, name="sleepy", sleep=3)
    wait_for(lambda: runs(db, "sleepy"), 20, "task started")
    first.kill_all()
    assert effects(db, "sleepy") == []
    workers(concurrency=1, extra_env=short_lease)
    # recovery: heartbeat silence (3 s) + the dead run's claim lease (time limit 5 s + 1 s)
    wait_for(lambda: effects(db, "sleepy"), 30, "task completed after restart")
    time.sleep(1)
    assert effects(db, "sleepy") == [("sleepy", 1)]
    assert redis_client.zcard("jobs:delayed") == 0


def test_a_job_that_kills_its_worker_runs_three_times_then_is_dead_lettered(
    clean: Any, workers: Any
) -> None:
    """Given a job whose body SIGKILLs its pool process, then it runs 3 times (worker_lost_max)
    and is dead-lettered as worker_lost_exhausted instead of looping forever.
    """
    db, _ = clean
    workers(concurrency=1)
    jobs.enqueue(tasks.kill_self, name="suicidal")
    wait_for(lambda: dead(db), 60, "dead letter")
    assert dead(db)[0][:2] == ("tests.kill_self", "worker_lost_exhausted")
    time.sleep(1)
    assert len(runs(db, "suicidal")) == 3


def test_a_job_killed_by_its_hard_time_limit_is_requeued_not_dropped_then_dead_lettered(
    clean: Any, workers: Any
) -> None:
    """Given a job that ignores its soft time limit until the hard one kills its process, then
    it is requeued each time (stock Celery would acknowledge and drop it) and, after 3 starts,
    dead-lettered as worker_lost_exhausted: never silently lost.
    """
    db, redis_client = clean
    workers(concurrency=1)
    jobs.enqueue(tasks.overrun, name="overrun")
    wait_for(lambda: dead(db), 60, "dead letter after three hard time limits")
    assert dead(db)[0][:2] == ("tests.overrun", "worker_lost_exhausted")
    assert len(runs(db, "overrun")) == 3
    wait_for(lambda: redis_client.llen("default") == 0, 10, "queue empty")
