"""The delayed-job store: countdowns and retries wait in Redis, not in worker memory."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

import jobs
from tests import tasks
from tests.integration.test_execution import runs
from tests.support.worker import wait_for
from workers import keys
from workers.housekeeping import Housekeeper
from workers.job import Job
from workers.publisher import envelope
from workers.settings import get_settings

#: Every test runs with one message per job and with envelopes (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("delivery")


def test_a_countdown_longer_than_the_visibility_timeout_runs_exactly_once(
    clean: Any, workers: Any
) -> None:
    """Given kombu's visibility timeout set to 2 s, when a job is enqueued with countdown 5 s,
    then it waits in the delayed store (not in a worker), runs once at about 5 s, and never
    again.
    """
    db, redis_client = clean
    workers(concurrency=1, extra_env={"JOBS_BROKER_TRANSPORT_OPTIONS": '{"visibility_timeout": 2}'})
    enqueued = time.monotonic()
    jobs.enqueue(tasks.record, name="later", countdown=5)
    assert redis_client.zcard(keys.delayed()) == 1
    assert redis_client.llen("default") == 0
    wait_for(lambda: runs(db, "later"), 15, "the delayed job ran")
    waited = time.monotonic() - enqueued
    assert 4.5 <= waited <= 7.0, waited
    time.sleep(6)  # three visibility timeouts: a redelivery would show up as a second run
    assert len(runs(db, "later")) == 1


def test_two_promoters_running_concurrently_promote_each_due_job_once(clean: Any) -> None:
    """Given 5,000 due jobs in the delayed store, when two promoters run at the same time, then
    every job lands in its queue exactly once.
    """
    _, redis_client = clean
    due = time.time() - 1
    members = {}
    for n in range(5000):
        job = Job(
            id=f"d{n}", task="tests.noop", key=f"k{n}", queue="default", args=(), kwargs={"n": n}
        )
        members[f"default\n{json.dumps(envelope(job))}"] = due
    redis_client.zadd(keys.delayed(), members)
    promoters = [Housekeeper(get_settings()) for _ in range(2)]
    for promoter in promoters:
        promoter.connect()
    counts: list[int] = []
    barrier = threading.Barrier(2)

    def promote(promoter: Housekeeper) -> None:
        barrier.wait()
        total = 0
        while redis_client.zcard(keys.delayed()):
            total += promoter.promote_due(time.time())
        counts.append(total)

    threads = [threading.Thread(target=promote, args=(p,)) for p in promoters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    queued = [json.loads(raw)["headers"]["id"] for raw in redis_client.lrange("default", 0, -1)]
    assert sum(counts) == 5000
    assert len(queued) == 5000
    assert len(set(queued)) == 5000
    assert redis_client.zcard(keys.delayed()) == 0
