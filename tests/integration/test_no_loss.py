"""No job lost, not even in the fetch window: kills during a drain and crash failpoints."""

from __future__ import annotations

import time
from typing import Any

import pytest

import jobs
from tests import tasks
from tests.integration.test_execution import dead, effects
from tests.support.worker import wait_for


def inflight_total(redis_client: Any) -> int:
    return sum(redis_client.hlen(key) for key in redis_client.scan_iter("jobs:inflight:*"))


def settled(db: Any, redis_client: Any, expected: int) -> bool:
    done = db.execute("SELECT count(*) FROM test_effects").fetchone()[0]
    return bool(
        done == expected and redis_client.llen("default") == 0 and inflight_total(redis_client) == 0
    )


def test_ten_thousand_jobs_survive_five_sigkills_of_the_worker_main_process(
    clean: Any, workers: Any
) -> None:
    """Given 10,000 jobs with a Postgres side effect, when the worker's main process is
    SIGKILLed 5 times during the drain (a new worker started after each kill), then every job's
    side effect exists exactly once: 0 lost, 0 twice.
    """
    db, redis_client = clean
    total = 10_000
    for start in range(0, total, 1000):
        jobs.enqueue_many(tasks.noop, [{"n": n} for n in range(start, start + 1000)])
    assert redis_client.llen("default") == total
    worker = workers(concurrency=2, name="drain")
    for _ in range(5):
        time.sleep(1.5)
        worker.kill_main()
        worker = workers(concurrency=2, name="drain")
    wait_for(lambda: settled(db, redis_client, total), 240, "all 10,000 side effects", interval=0.5)
    rows, distinct, reruns = db.execute(
        "SELECT count(*), count(DISTINCT key), count(*) FILTER (WHERE hits > 1) FROM test_effects"
    ).fetchone()
    print(
        f"\nFIGURE kill-drain: jobs={total} kills=5 effects={rows} distinct={distinct} "
        f"body_reruns={reruns}"
    )
    assert rows == distinct == total
    assert reruns <= 5 * 2  # only jobs caught between side effect and done-mark may re-run
    assert dead(db) == []


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
