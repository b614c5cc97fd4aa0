"""Workers frozen (SIGSTOP) while holding a job, and workers restarted (SIGTERM) under load.

These scenarios signal workers only, so they use the session's Redis and PostgreSQL
(``JOBS_CONSUMER_DEAD_AFTER=3`` and ``JOBS_CLAIM_LEASE_MARGIN=1`` there, see tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import jobs
from tests import tasks
from tests.faults.conftest import Producer, effect_hits, run_counts
from tests.support.worker import Worker, wait_for
from workers import keys

#: ``tests.record``'s time limit in the freeze scenarios: its claim lease is this plus
#: JOBS_CLAIM_LEASE_MARGIN (1 s in the test session), i.e. 11 s. Its soft limit (9 s) must stay
#: well above the short scenario's run (the time to notice the start + the 4 s freeze), or on
#: a loaded machine it stops the body before its side effect and the retry runs it again.
RECORD_TIME_LIMIT = 10.0
CLAIM_LEASE = RECORD_TIME_LIMIT + 1.0
#: JOBS_CONSUMER_DEAD_AFTER of the test session (seconds without a heartbeat → recovered).
CONSUMER_DEAD_AFTER = 3.0
#: How long the job sleeps before its side effect (the worker is frozen inside this sleep).
JOB_SLEEP = 2.0
#: The short freeze: longer than CONSUMER_DEAD_AFTER (the worker is kept frozen until the
#: recovery is logged in any case), shorter than the claim lease.
SHORT_FREEZE = 4.0


def holder_of(workers: list[Worker], pid: int) -> Worker:
    """The worker whose process group contains ``pid`` (a pool child)."""
    group = os.getpgid(pid)
    return next(worker for worker in workers if worker.pid == group)


def freeze_group(worker: Worker) -> None:
    """SIGSTOP the worker's main process and its pool children (the group we created)."""
    os.killpg(worker.pid, signal.SIGSTOP)


def resume_group(worker: Worker) -> None:
    """SIGCONT the group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGCONT)


def run_ended(worker: Worker) -> bool:
    """Whether the worker logged the end of a task run (success, failure or time limit)."""
    log = worker.log_path.read_bytes()
    return any(
        marker in log
        for marker in (b"] succeeded in ", b"raised unexpected", b"Hard time limit", b"WorkerLost")
    )


def settled(redis_client: Any) -> bool:
    """Nothing queued, delayed or in flight."""
    inflight = sum(redis_client.hlen(key) for key in redis_client.scan_iter(keys.inflight("*")))
    return bool(
        redis_client.llen("default") == 0
        and redis_client.zcard(keys.delayed()) == 0
        and inflight == 0
    )


def freeze_while_holding(
    clean: Any, workers: Any, name: str, freeze: float
) -> tuple[Worker, Worker, float, float]:
    """Two workers; the one that takes ``name`` is frozen ``freeze`` s inside the job's sleep.

    Returns (the frozen worker, the other worker, seconds from the freeze until the other
    worker logged the recovery of the frozen one's message, seconds the worker was frozen).
    """
    db, _ = clean
    extra_env = {"JOBS_TASKS": json.dumps({"tests.record": {"time_limit": RECORD_TIME_LIMIT}})}
    pool = [
        workers(concurrency=1, name=f"freeze-{index}", extra_env=extra_env, wait=False)
        for index in range(2)
    ]
    for worker in pool:
        worker.wait_ready()
    jobs.enqueue(tasks.record, name=name, sleep=JOB_SLEEP)
    row = wait_for(
        lambda: db.execute("SELECT pid FROM test_runs WHERE name = %s", (name,)).fetchone(),
        20,
        "the job started",
        interval=0.02,
    )
    frozen = holder_of(pool, int(row[0]))
    other = next(worker for worker in pool if worker is not frozen)
    frozen_at = time.monotonic()
    freeze_group(frozen)
    try:
        wait_for(
            lambda: b"consumer_recovered" in other.log_path.read_bytes(),
            CONSUMER_DEAD_AFTER + 5,
            "the other worker recovered the frozen worker's message",
        )
        recovered_after = time.monotonic() - frozen_at
        time.sleep(max(freeze - (time.monotonic() - frozen_at), 0))  # the fault: stay frozen
    finally:
        resume_group(frozen)
        frozen_for = time.monotonic() - frozen_at
    return frozen, other, recovered_after, frozen_for


def test_a_worker_frozen_longer_than_the_consumer_dead_timeout_does_not_repeat_the_side_effect(
    clean: Any, workers: Any
) -> None:
    """Given two workers and a job whose side effect is gated by its idempotency key, when the
    worker running it is frozen (SIGSTOP) for 4 s — longer than JOBS_CONSUMER_DEAD_AFTER (3 s),
    the redelivery timeout of this system — then the other worker recovers the message but
    finds the key claimed by a live run and defers it; after SIGCONT the frozen worker
    finishes, the deferred copy is skipped as done: the body ran once, 1 side effect.
    """
    db, redis_client = clean
    frozen, other, recovered_after, frozen_for = freeze_while_holding(
        clean, workers, "frozen-short", SHORT_FREEZE
    )
    wait_for(  # either worker may take the deferred copy once it is due
        lambda: any(
            b"job_skipped_already_done" in worker.log_path.read_bytes()
            for worker in (frozen, other)
        ),
        CLAIM_LEASE + 10,
        "the recovered copy skipped as done",
    )
    wait_for(lambda: settled(redis_client), 10, "nothing queued or in flight")
    hits = effect_hits(db, "frozen-short")
    runs = run_counts(db, "frozen-short")
    assert b"claim_busy" in other.log_path.read_bytes()
    assert frozen.alive(), frozen.log()
    print(
        f"\nFIGURE worker_sigstop: worker frozen {frozen_for:.1f} s (> consumer_dead_after "
        f"{CONSUMER_DEAD_AFTER:.0f} s) holding a job: message recovered by the other worker "
        f"{recovered_after:.1f} s after SIGSTOP, deferred on the live claim, skipped as done "
        f"after SIGCONT; body runs {sum(runs.values())}, side effects "
        f"{sum(hits.values())} (rows {len(hits)})"
    )
    assert hits == {"frozen-short": 1}, (frozen.log(), other.log())
    assert runs == {"frozen-short": 1}, (frozen.log(), other.log())
    assert db.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0
    for worker in (frozen, other):
        worker.kill_all()  # shutdown is not under test here (the fixture's stop is then a no-op)


@pytest.mark.slow
def test_a_worker_frozen_longer_than_the_claim_lease_does_not_reach_the_side_effect_again(
    clean: Any, workers: Any
) -> None:
    """Given the same set-up, when the worker running the job is frozen longer than the job's
    claim lease (time limit + margin, 11 s here), then the other worker claims and runs the job
    meanwhile; after SIGCONT the lease fence stops the resumed body before its side effect
    (its SIGALRM is already due), so the side effect ran once, one row; nothing is
    dead-lettered or left queued.
    """
    db, redis_client = clean
    freeze = CLAIM_LEASE + JOB_SLEEP + 3
    frozen, other, recovered_after, frozen_for = freeze_while_holding(
        clean, workers, "frozen-long", freeze
    )
    wait_for(lambda: settled(redis_client), 30, "nothing queued or in flight")
    wait_for(
        lambda: b"job_lease_expired" in frozen.log_path.read_bytes() or run_ended(frozen),
        15,
        "the resumed worker's run ended",
    )
    hits = effect_hits(db, "frozen-long")
    runs = run_counts(db, "frozen-long")
    fenced = b"job_lease_expired" in frozen.log_path.read_bytes()
    print(
        f"\nFIGURE worker_sigstop_past_lease: worker frozen {frozen_for:.0f} s (> claim lease "
        f"{CLAIM_LEASE:.0f} s) holding a job: recovered after {recovered_after:.1f} s and run "
        f"by the other worker; the resumed body was "
        f"{'stopped by the lease fence' if fenced else 'killed by the hard time limit'}; "
        f"body starts {sum(runs.values())}, side-effect executions {sum(hits.values())}, "
        f"rows {len(hits)}"
    )
    for worker in (frozen, other):
        worker.kill_all()
    assert hits == {"frozen-long": 1}, (frozen.log(), other.log())
    assert runs == {"frozen-long": 2}  # the frozen start and the other worker's
    assert db.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0


def flowing(db: Any, count: int) -> bool:
    """Whether at least ``count`` rolling-restart jobs are done."""
    return len(effect_hits(db, "roll-")) >= count


def test_a_rolling_restart_with_sigterm_under_load_loses_and_repeats_nothing(
    clean: Any, workers: Any, worker_env: dict[str, str], producers: Callable[..., Producer]
) -> None:
    """Given two workers draining a producer's ~25 jobs/s (each job sleeps 0.1 s), when every
    worker is restarted one at a time (SIGTERM, wait for its warm shutdown, start a new one),
    then each shutdown is clean (exit 0), every accepted job ran exactly once (run log) and
    has exactly one side effect: 0 lost, 0 twice.
    """
    db, redis_client = clean
    pool = [workers(concurrency=2, name=f"roll-{index}", wait=False) for index in range(2)]
    for worker in pool:
        worker.wait_ready()
    producer = producers(worker_env, prefix="roll", interval=0.04, job_sleep=0.1)
    shutdowns: list[float] = []
    for index, old in enumerate(pool):
        done = len(effect_hits(db, "roll-"))
        wait_for(partial(flowing, db, done + 25), 30, "jobs flowing")
        assert old.process is not None
        started = time.monotonic()
        old.process.send_signal(signal.SIGTERM)
        try:
            code = old.process.wait(30)
        except subprocess.TimeoutExpired:
            old.process.send_signal(signal.SIGUSR1)  # Celery logs every thread's stack
            time.sleep(1)
            raise AssertionError("warm shutdown did not finish in 30 s\n" + old.log()) from None
        shutdowns.append(time.monotonic() - started)
        assert code == 0, old.log()
        pool[index] = workers(concurrency=2, name=f"roll-{index}")
    done = len(effect_hits(db, "roll-"))
    wait_for(partial(flowing, db, done + 25), 30, "jobs flowing after restarts")
    calls = producer.stop()
    wanted = {call.name for call in calls if call.error is None}
    wait_for(
        lambda: wanted <= set(effect_hits(db, "roll-")) and settled(redis_client),
        60,
        "every accepted job done",
        interval=0.25,
    )
    hits = effect_hits(db, "roll-")
    runs = run_counts(db, "roll-")
    twice = sorted(name for name in wanted if hits.get(name, 0) > 1 or runs.get(name, 0) > 1)
    lost = wanted - set(hits)
    print(
        f"\nFIGURE rolling_restart: {len(pool)} workers (prefork -c 2) SIGTERMed and restarted "
        f"one at a time under ~25 jobs/s: {len(wanted)} jobs, {len(lost)} lost, {len(twice)} run "
        f"twice; warm shutdowns {', '.join(f'{s:.1f}' for s in shutdowns)} s, all exit 0"
    )
    for worker in pool:
        worker.kill_all()  # their shutdown is not under test (the replaced ones' was)
    assert {call.error for call in calls} == {None}
    assert not lost
    assert not twice
    assert db.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0


def pool_children(worker: Worker) -> list[int]:
    """The pids of the worker's pool children (its process group, without the main process)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != worker.pid:
            with contextlib.suppress(OSError):
                if os.getpgid(int(entry.name)) == worker.pid:
                    children.append(int(entry.name))
    return children


def test_a_warm_shutdown_waits_for_a_job_handed_to_a_child_just_before_it_without_stalling(
    clean: Any, workers: Any
) -> None:
    """Given a worker (-c 1) whose child is stopped, so the job the main process writes to it
    is not yet acknowledged by the child, when the worker gets SIGTERM and the child resumes
    after Celery's consumer has dropped that job from the pool's cache, then the child runs it
    and the warm shutdown still ends in seconds (stock Celery 5.7 reads no more results from
    the child, which then waits 30 s for them to be read before it exits); the job's message,
    never acknowledged, is redelivered to the next worker and skipped as done: 1 side effect.
    """
    db, redis_client = clean
    worker = workers(concurrency=1, name="handover")
    (child,) = pool_children(worker)
    os.kill(child, signal.SIGSTOP)
    try:
        jobs.enqueue(tasks.record, name="handover")
        wait_for(
            lambda: (
                redis_client.llen("default") == 0
                and sum(
                    redis_client.hlen(key) for key in redis_client.scan_iter(keys.inflight("*"))
                )
            ),
            10,
            "the worker took the message",
        )
        time.sleep(0.5)  # the main process writes the job into the stopped child's pipe
        assert worker.process is not None
        worker.process.send_signal(signal.SIGTERM)
        wait_for(lambda: b"Warm shutdown" in worker.log_path.read_bytes(), 10, "warm shutdown")
        time.sleep(1)  # the consumer has closed and flushed the pool
    finally:
        os.kill(child, signal.SIGCONT)
    resumed = time.monotonic()
    try:
        code = worker.process.wait(20)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            "warm shutdown stalled after the child resumed\n" + worker.log()
        ) from None
    shutdown = time.monotonic() - resumed
    assert code == 0, worker.log()
    assert effect_hits(db, "handover") == {"handover": 1}, worker.log()
    successor = workers(concurrency=1, name="handover-next")
    wait_for(lambda: settled(redis_client), 30, "the redelivered copy settled")
    print(
        f"\nFIGURE warm_shutdown_handover: job handed to a stopped child just before SIGTERM: "
        f"the child ran it after resuming, shutdown ended {shutdown:.1f} s later (exit 0); "
        f"the unacknowledged message was redelivered and skipped as done"
    )
    assert effect_hits(db, "handover") == {"handover": 1}, successor.log()
    assert run_counts(db, "handover") == {"handover": 1}
    assert shutdown < 10, worker.log()
