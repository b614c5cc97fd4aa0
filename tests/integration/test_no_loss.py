"""No job lost, not even in the fetch window: crash failpoints.

The 10,000-job SIGKILL drain lives in ``tests/faults/test_kill_drain.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

import jobs
from tests import tasks
from tests.integration.test_execution import dead, effects
from tests.support.worker import wait_for

#: Every test runs with one message per job and with envelopes (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("delivery")


def inflight_total(redis_client: Any) -> int:
    return sum(redis_client.hlen(key) for key in redis_client.scan_iter("jobs:inflight:*"))


@pytest.mark.parametrize(
    ("failpoint", "where"),
    [("after_fetch", "main process, message popped but not yet handed on")],
)
def test_a_worker_killed_right_after_fetch_loses_nothing(
    clean: Any, workers: Any, failpoint: str, where: str
) -> None:
    """Given the failpoint after_fetch (worker main process SIGKILLs itself right after popping
    a message), when a healthy worker starts, then the job is recovered and runs once.
    """
    db, _ = clean
    del where
    jobs.enqueue(tasks.record, name="fetched")
    crashed = workers(
        concurrency=1,
        extra_env={"JOBS_FAILPOINT": failpoint, "JOBS_FAILPOINT_LIMIT": "1"},
        wait=False,
    )
    wait_for(lambda: crashed.process.poll() is not None, 30, "worker crashed at the failpoint")
    assert effects(db, "fetched") == []
    workers(concurrency=1)
    wait_for(lambda: effects(db, "fetched"), 30, "job recovered")
    assert effects(db, "fetched") == [("fetched", 1)]


def test_a_worker_killed_after_the_side_effect_before_the_ack_does_not_repeat_it(
    clean: Any, workers: Any
) -> None:
    """Given the failpoint after_side_effect (the pool process dies after the body returned,
    before the key is marked done and the message acked), then the job is redelivered, the
    UNIQUE key gates the side effect to one row, and the job ends done.
    """
    db, redis_client = clean
    ref = jobs.enqueue(tasks.record, name="effected")
    workers(
        concurrency=1,
        extra_env={"JOBS_FAILPOINT": "after_side_effect", "JOBS_FAILPOINT_LIMIT": "1"},
    )
    wait_for(lambda: redis_client.exists(f"jobs:done:{ref.key}"), 30, "job done after redelivery")
    assert [name for name, _ in effects(db, "effected")] == ["effected"]
    assert dead(db) == []


def test_a_worker_killed_after_the_dead_letter_insert_before_the_ack_keeps_one_dead_letter(
    clean: Any, workers: Any
) -> None:
    """Given the failpoint after_dead_letter, then the redelivered job updates the same dead
    letter row instead of adding a second one.
    """
    db, redis_client = clean
    jobs.enqueue(tasks.fail_permanently, name="dl-crash")
    workers(
        concurrency=1,
        extra_env={"JOBS_FAILPOINT": "after_dead_letter", "JOBS_FAILPOINT_LIMIT": "1"},
    )
    wait_for(
        lambda: db.execute("SELECT failure_count FROM dead_letters").fetchone() == (2,),
        30,
        "re-recorded",
    )
    wait_for(
        lambda: redis_client.llen("default") == 0 and inflight_total(redis_client) == 0, 10, "acked"
    )
    assert db.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 1
