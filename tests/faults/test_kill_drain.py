"""Workers SIGKILLed again and again during a drain: no job lost, no side effect twice.

Moved here from ``tests/integration/test_no_loss.py`` (it kills workers, so it is a fault
scenario). CI runs the bounded variant (1,000 jobs, 2 kills: one of the main process, one of
the whole process group); the issue's full scenario (10,000 jobs, 5 kills) is marked slow.
"""

from __future__ import annotations

import json
import time
from functools import partial
from typing import Any

import pytest

import jobs
from tests import tasks
from tests.support.worker import wait_for
from workers import keys
from workers.settings import get_settings

#: ``tests.noop``'s time limit for these workers: a job killed with its pool child keeps its
#: claim for time limit + JOBS_CLAIM_LEASE_MARGIN, so a short limit keeps the drain short.
NOOP_TIME_LIMIT = 5
#: Worker processes per worker (prefork pool children).
CONCURRENCY = 2


def inflight_total(redis_client: Any) -> int:
    """Messages held by any consumer (fetched, not yet acknowledged)."""
    return sum(redis_client.hlen(key) for key in redis_client.scan_iter(keys.inflight("*")))


def done_count(db: Any) -> int:
    """Side effects written so far."""
    return int(db.execute("SELECT count(*) FROM test_effects").fetchone()[0])


def reached(db: Any, count: int) -> bool:
    """Whether at least ``count`` side effects exist."""
    return done_count(db) >= count


def settled(db: Any, redis_client: Any, expected: int) -> bool:
    """Every side effect exists and nothing is queued, delayed or in flight any more."""
    return bool(
        done_count(db) == expected
        and redis_client.llen("default") == 0
        and redis_client.zcard(keys.delayed()) == 0
        and inflight_total(redis_client) == 0
    )


@pytest.mark.parametrize(
    ("total", "kills"),
    [
        pytest.param(1_000, 2, id="1000-jobs-2-kills"),
        pytest.param(10_000, 5, id="10000-jobs-5-kills", marks=pytest.mark.slow),
    ],
)
def test_jobs_with_a_postgres_side_effect_survive_repeated_sigkills_of_their_worker(
    clean: Any, workers: Any, total: int, kills: int, delivery: str
) -> None:
    """Given ``total`` jobs whose side effect is a Postgres row gated by the job's UNIQUE
    idempotency key, when the draining worker is SIGKILLed ``kills`` times at evenly spaced
    points of the drain (alternately its main process alone and its whole process group, a new
    worker started after each kill), then every job's side effect exists exactly once (0 lost,
    0 twice), nothing is dead-lettered, and the body re-ran at most for the jobs caught between
    their side effect and their done mark (≤ pool size per kill).
    """
    db, redis_client = clean
    for start in range(0, total, 1000):
        jobs.enqueue_many(tasks.noop, [{"n": n} for n in range(start, min(start + 1000, total))])
    per_message = 1 if delivery == "messages" else get_settings().envelope_size
    assert redis_client.llen("default") == total // per_message
    extra_env = {"JOBS_TASKS": json.dumps({"tests.noop": {"time_limit": NOOP_TIME_LIMIT}})}
    started = time.monotonic()
    worker = workers(concurrency=CONCURRENCY, name="drain", extra_env=extra_env)
    kinds = []
    for number in range(1, kills + 1):
        mark = total * number // (kills + 1)
        wait_for(partial(reached, db, mark), 120, f"{mark} jobs done", interval=0.1)
        if number % 2:
            worker.kill_main()  # pool children lose their parent mid-job
            kinds.append("main")
        else:
            worker.kill_all()  # children die too: their claims wait for the lease
            kinds.append("group")
        worker = workers(concurrency=CONCURRENCY, name="drain", extra_env=extra_env)
    wait_for(lambda: settled(db, redis_client, total), 300, f"all {total} side effects", 0.5)
    seconds = time.monotonic() - started
    rows, distinct, reruns = db.execute(
        "SELECT count(*), count(DISTINCT key), count(*) FILTER (WHERE hits > 1) FROM test_effects"
    ).fetchone()
    dead = db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    print(
        f"\nFIGURE kill_drain ({delivery}): {total} jobs with a Postgres side effect, {kills} "
        "SIGKILLs of the "
        f"worker during the drain ({kinds.count('main')} main process, {kinds.count('group')} "
        f"whole process group): {total - distinct} lost, {rows - distinct} side effects twice, "
        f"{reruns} body re-runs stopped by the UNIQUE key, {dead} dead letters, "
        f"drained in {seconds:.1f} s"
    )
    worker.kill_all()  # its shutdown is not under test
    assert rows == distinct == total
    assert reruns <= kills * CONCURRENCY
    assert dead == 0
