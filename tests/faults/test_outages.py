"""Outages of PostgreSQL and Redis: nothing lost, producers never hang, unsafe Redis refused."""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import pytest

from ops.services import PostgresProcess, RedisProcess, libpq_url
from tests.faults.conftest import run_python
from tests.support.worker import Worker, wait_for


def dead_letter_reasons(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(libpq_url(url)) as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT task_name, reason FROM dead_letters")]


# CI runs test_postgres_outage.py's 8 s outage instead (it dead-letters while down too).
@pytest.mark.slow
def test_a_dead_letter_written_while_postgres_is_down_is_kept_and_lands_after_it_returns(
    clean: Any,
    worker_env: dict[str, str],
    tmp_path: Any,
    throwaway_postgres: tuple[PostgresProcess, str],
) -> None:
    """Given a worker whose PostgreSQL is stopped, when a job fails permanently and a poison
    message arrives, then neither is dropped: both dead letters appear once PostgreSQL is back.
    """
    _, redis_client = clean
    server, url = throwaway_postgres
    env = {**worker_env, "JOBS_DATABASE_URL": url}
    worker = Worker(env, tmp_path, concurrency=1).start()
    try:
        server.stop("immediate")
        produce = (
            "import jobs; from tests import tasks; "
            "jobs.enqueue(tasks.fail_permanently, name='while-down')"
        )
        assert run_python(produce, env).returncode == 0
        redis_client.lpush("default", b"garbage while postgres is down")
        wait_for(
            lambda: b"dead_letter_store_unavailable" in worker.log_path.read_bytes(),
            20,
            "write failed",
        )
        wait_for(
            lambda: b"poison_message_deferred" in worker.log_path.read_bytes(), 20, "poison kept"
        )
        time.sleep(2)  # several retry rounds while the database is down
        server.start()
        wait_for(lambda: len(dead_letter_reasons(url)) == 2, 30, "both dead letters after recovery")
        assert sorted(dead_letter_reasons(url)) == [
            ("?", "decode_error"),
            ("tests.fail_permanently", "permanent_error"),
        ]
        wait_for(
            lambda: redis_client.zcard("jobs:delayed") == 0 and redis_client.llen("default") == 0,
            10,
            "nothing left",
        )
    finally:
        worker.stop()


def test_enqueue_against_a_frozen_redis_raises_broker_unavailable_within_about_a_second(
    worker_env: dict[str, str], throwaway_redis: RedisProcess
) -> None:
    """Given a Redis frozen with SIGSTOP, when a producer enqueues, then it gets
    BrokerUnavailable after about a second instead of hanging.
    """
    env = {**worker_env, "JOBS_REDIS_URL": throwaway_redis.url}
    code = """
import json, time, jobs
from tests import tasks
jobs.enqueue(tasks.record, name='warm-up')   # connection established before the freeze
print('READY', flush=True)
import sys; sys.stdin.readline()
started = time.monotonic()
try:
    jobs.enqueue(tasks.record, name='frozen')
    outcome = 'enqueued'
except jobs.BrokerUnavailable as exc:
    outcome = 'BrokerUnavailable: ' + str(exc)
print(json.dumps({'outcome': outcome, 'seconds': time.monotonic() - started}), flush=True)
"""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdin is not None
        assert proc.stdout.readline().strip() == "READY"
        throwaway_redis.freeze()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        result = json.loads(proc.stdout.readline())
    finally:
        throwaway_redis.resume()
        proc.kill()
        proc.communicate()
    assert result["outcome"].startswith("BrokerUnavailable")
    assert result["seconds"] < 2.0


def test_a_redis_that_may_evict_keys_is_refused_by_workers_and_producers(
    worker_env: dict[str, str], tmp_path: Any
) -> None:
    """Given a Redis with maxmemory-policy allkeys-lru, then a worker refuses to start and
    enqueue refuses to publish, both naming the policy and the opt-out setting.
    """
    server = RedisProcess(tmp_path / "lru", maxmemory_policy="allkeys-lru").start()
    try:
        env = {**worker_env, "JOBS_REDIS_URL": server.url}
        produced = run_python(
            "import jobs; from tests import tasks; jobs.enqueue(tasks.record, name='x')", env
        )
        assert produced.returncode != 0
        assert "UnsafeBroker" in produced.stderr
        assert "allkeys-lru" in produced.stderr
        assert "JOBS_ALLOW_VOLATILE_BROKER" in produced.stderr
        worker = Worker(env, tmp_path, concurrency=1).start(wait=False)
        assert worker.process is not None
        wait_for(lambda: worker.process.poll() is not None, 30, "worker refused to start")  # type: ignore[union-attr]
        worker.stop()
        assert "maxmemory-policy is 'allkeys-lru'" in worker.log()
        assert server.process is not None
        allowed = run_python(
            "import jobs; from tests import tasks; print(jobs.enqueue(tasks.record, name='x').id)",
            {**env, "JOBS_ALLOW_VOLATILE_BROKER": "true"},
        )
        assert allowed.returncode == 0, allowed.stderr
    finally:
        server.stop()
