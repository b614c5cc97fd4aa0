"""Redis killed (AOF, fsync always) or frozen (SIGSTOP) while producers enqueue and workers drain.

Each scenario runs its own redis-server (it is killed or frozen); PostgreSQL is the session's.
Producers are subprocesses calling ``jobs.enqueue`` in a loop (``tests.faults.conftest``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ops.services import RedisProcess
from tests.faults.conftest import (
    EnqueueCall,
    FsyncAlwaysRedis,
    Producer,
    effect_hits,
    percentile,
)
from tests.support.worker import Worker, wait_for
from workers import keys

#: Measures rates or time windows: ops/test.sh runs these alone, after the parallel phase.
pytestmark = pytest.mark.serial

#: A refused enqueue must fail within this many seconds (the client's 1 s socket timeout).
FAIL_FAST = 1.5
#: A call slower than this is a hang, whatever the percentiles say.
HANG = 2.5
#: Seconds after SIGCONT within which throughput must be back (the issue's bound).
THROUGHPUT_BACK = 15.0
#: "Steady" again: a 1 s window completes at least this fraction of the pre-fault rate.
STEADY_FRACTION = 0.8
#: Workers of the kill scenario run ``tests.record`` with this time limit: a job whose done
#: mark failed (Redis gone) keeps its claim for the limit + JOBS_CLAIM_LEASE_MARGIN before it
#: can run again. (The freeze scenario keeps the task's own 20 s: its done marks, sent before
#: the freeze, are executed by Redis after SIGCONT.)
WORKER_ENV = {"JOBS_TASKS": json.dumps({"tests.record": {"time_limit": 5}})}


def accepted(calls: list[EnqueueCall]) -> set[str]:
    """Names of the jobs whose enqueue returned."""
    return {call.name for call in calls if call.error is None}


def completion_times(db: Any, prefix: str) -> list[float]:
    """Unix times at which the side effects of ``prefix`` jobs were written, in order."""
    rows = db.execute(
        "SELECT extract(epoch FROM created_at) FROM test_effects WHERE name LIKE %s "
        "ORDER BY created_at",
        (prefix + "%",),
    ).fetchall()
    return [float(row[0]) for row in rows]


def queue_empty(server_url: str) -> bool:
    """Nothing waiting, delayed or in flight on the throwaway Redis."""
    import redis  # noqa: PLC0415

    client = redis.Redis.from_url(server_url, socket_timeout=2)
    try:
        inflight = sum(client.hlen(key) for key in client.scan_iter(keys.inflight("*")))
        return client.llen("default") == 0 and client.zcard(keys.delayed()) == 0 and not inflight
    finally:
        client.close()


def test_redis_killed_and_restarted_mid_run_refuses_clearly_and_loses_no_accepted_job(
    db: Any,
    worker_env: dict[str, str],
    tmp_path: Path,
    fsync_always_redis: FsyncAlwaysRedis,
    producers: Callable[..., Producer],
) -> None:
    """Given Redis with AOF and ``appendfsync always``, a producer enqueueing ~100 jobs/s and a
    worker draining them, when Redis is SIGKILLed and restarted 2 s later, then every enqueue
    during the outage raises BrokerUnavailable within ~1 s (none hangs), and after recovery
    every job whose enqueue returned has its side effect exactly once (0 accepted jobs lost).
    """
    server = fsync_always_redis
    env = {**worker_env, "JOBS_REDIS_URL": server.url}
    worker = Worker(env, tmp_path, concurrency=2, name="aof", extra_env=WORKER_ENV).start()
    try:
        producer = producers(env, prefix="aof", interval=0.01)
        wait_for(lambda: len(effect_hits(db, "aof-")) >= 100, 30, "100 jobs done before the kill")
        killed = time.time()
        server.kill()
        wait_for(
            lambda: (
                sum(1 for c in producer.calls() if c.at > killed and c.error) >= 20
                and time.time() - killed >= 2
            ),
            15,
            "refusals during the outage",
        )
        server.start()
        restarted = time.time()
        wait_for(
            lambda: sum(1 for c in producer.calls() if c.at > restarted and not c.error) >= 100,
            30,
            "enqueues accepted again after the restart",
        )
        calls = producer.stop()
        wanted = accepted(calls)
        wait_for(
            lambda: wanted <= set(effect_hits(db, "aof-")) and queue_empty(server.url),
            90,
            "every accepted job done after the restart",
            interval=0.5,
        )
        drained = time.time() - restarted
        assert worker.alive(), worker.log()
    finally:
        worker.kill_all()  # its shutdown is not under test
    hits = effect_hits(db, "aof-")
    outage = [c for c in calls if killed <= c.at < restarted]
    refused = [c for c in outage if c.error]
    errors = {c.error for c in calls if c.error}
    lost = wanted - set(hits)
    reruns = sum(1 for name in wanted if hits.get(name, 0) > 1)
    slowest_refusal = max(c.seconds for c in refused)
    print(
        f"\nFIGURE redis_kill_aof: Redis (AOF, fsync always) SIGKILLed and restarted after "
        f"{restarted - killed:.1f} s under ~100 enqueues/s: {len(refused)} enqueues during the "
        f"outage all refused with {'/'.join(sorted(errors))} (slowest {slowest_refusal:.3f} s, "
        f"slowest call overall {max(c.seconds for c in calls):.3f} s); {len(wanted)} accepted, "
        f"{len(lost)} lost, {reruns} body re-runs (UNIQUE key kept 1 row each), all done "
        f"{drained:.1f} s after the restart"
    )
    assert refused, "no enqueue was attempted during the outage"
    assert errors == {"BrokerUnavailable"}
    assert slowest_refusal <= FAIL_FAST
    assert max(c.seconds for c in calls) <= HANG
    assert not lost
    assert reruns <= 2  # only jobs running when Redis died (pool of 2) may reach the body again


@pytest.mark.parametrize(
    "freeze",
    [
        pytest.param(5.0, id="5s"),
        pytest.param(20.0, id="20s", marks=pytest.mark.slow),
    ],
)
def test_a_frozen_redis_makes_enqueue_fail_fast_and_throughput_returns_after_sigcont(  # noqa: PLR0917 - pytest fixtures
    db: Any,
    worker_env: dict[str, str],
    tmp_path: Path,
    throwaway_redis: RedisProcess,
    producers: Callable[..., Producer],
    freeze: float,
) -> None:
    """Given a producer enqueueing ~100 jobs/s and a worker draining them, when Redis is frozen
    (SIGSTOP) for ``freeze`` seconds, then every enqueue either succeeds or raises
    BrokerUnavailable, enqueue p99 ≤ 1.5 s and no call hangs; after SIGCONT the first job
    completes and the completion rate is back to ≥ 80 % of its pre-freeze rate within 15 s;
    and no accepted job is lost.
    """
    env = {**worker_env, "JOBS_REDIS_URL": throwaway_redis.url}
    worker = Worker(env, tmp_path, concurrency=2, name="freeze").start()
    try:
        producer = producers(env, prefix="frz", interval=0.01)
        wait_for(lambda: len(effect_hits(db, "frz-")) >= 50, 30, "drain running")
        time.sleep(2.0)  # a steady pre-freeze window to measure the normal completion rate
        frozen = time.time()
        before = [t for t in completion_times(db, "frz-") if frozen - 2.0 <= t < frozen]
        rate_before = len(before) / 2.0
        throwaway_redis.freeze()
        try:
            time.sleep(freeze)  # the fault itself: Redis answers nothing for `freeze` seconds
        finally:
            throwaway_redis.resume()
        resumed = time.time()

        def steady_at() -> float | None:
            done = [t for t in completion_times(db, "frz-") if t >= resumed]
            for index, moment in enumerate(done):
                window = [t for t in done[index:] if t < moment + 1.0]
                if moment + 1.0 <= time.time() and len(window) >= STEADY_FRACTION * rate_before:
                    return moment + 1.0 - resumed
            return None

        wait_for(steady_at, THROUGHPUT_BACK + 5, "steady throughput after SIGCONT", 0.25)
        steady = steady_at()
        first = min(t for t in completion_times(db, "frz-") if t >= resumed) - resumed
        calls = producer.stop()
        wanted = accepted(calls)
        wait_for(lambda: wanted <= set(effect_hits(db, "frz-")), 60, "every accepted job done", 0.5)
        assert worker.alive(), worker.log()
    finally:
        worker.kill_all()  # its shutdown is not under test
    durations = [c.seconds for c in calls]
    during = [c for c in calls if frozen <= c.at < resumed]
    errors = {c.error for c in calls if c.error}
    p99 = percentile(durations, 0.99)
    p99_frozen = percentile([c.seconds for c in during], 0.99)
    assert steady is not None
    print(
        f"\nFIGURE redis_sigstop_{freeze:.0f}s: Redis frozen {freeze:.0f} s under ~100 "
        f"enqueues/s: enqueue p99 {p99:.3f} s over {len(calls)} calls (p99 while frozen "
        f"{p99_frozen:.3f} s, max {max(durations):.3f} s; {sum(1 for c in during if c.error)} "
        f"refused with {'/'.join(sorted(errors)) or 'nothing'}); first job completed "
        f"{first:.1f} s and throughput back (≥ {STEADY_FRACTION:.0%} of {rate_before:.0f}/s) "
        f"{steady:.1f} s after SIGCONT; {len(wanted)} accepted, 0 lost"
    )
    assert during, "no enqueue was attempted during the freeze"
    assert errors <= {"BrokerUnavailable"}
    assert any(c.error for c in during)
    assert p99 <= FAIL_FAST
    assert max(durations) <= HANG
    assert first <= THROUGHPUT_BACK
    assert steady <= THROUGHPUT_BACK
