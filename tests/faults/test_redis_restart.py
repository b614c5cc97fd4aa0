"""Redis (AOF) killed and restarted under a running worker: it reconnects, nothing is lost."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ops.services import RedisProcess
from tests.faults.conftest import run_python
from tests.support.worker import Worker, wait_for


# CI runs test_redis_faults.py's kill and restart under a live producer instead.
@pytest.mark.slow
def test_jobs_accepted_before_a_redis_crash_all_run_after_it_restarts(
    clean: Any, worker_env: dict[str, str], tmp_path: Any, throwaway_redis: RedisProcess
) -> None:
    """Given 40 slow jobs accepted (and fsynced) and a worker draining them, when Redis is
    SIGKILLed and restarted on the same port, then the worker reconnects and every job's side
    effect exists exactly once.
    """
    db, _ = clean
    env = {**worker_env, "JOBS_REDIS_URL": throwaway_redis.url}
    produce = (
        "import jobs; from tests import tasks\n"
        "jobs.enqueue_many(tasks.record, [{'name': f'r{i}', 'sleep': 0.1} for i in range(40)])\n"
    )
    assert run_python(produce, env).returncode == 0
    time.sleep(1.5)  # appendfsync everysec: accepted jobs are on disk
    worker = Worker(env, tmp_path, concurrency=2).start()
    try:
        wait_for(
            lambda: db.execute("SELECT count(*) FROM test_effects").fetchone()[0] >= 5,
            30,
            "drain started",
        )
        throwaway_redis.kill()
        time.sleep(2)
        throwaway_redis.start()
        wait_for(
            lambda: db.execute("SELECT count(*) FROM test_effects").fetchone()[0] == 40,
            90,
            "all 40 jobs after the restart",
            interval=0.5,
        )
        rows, distinct = db.execute(
            "SELECT count(*), count(DISTINCT key) FROM test_effects"
        ).fetchone()
        assert rows == distinct == 40
        assert worker.process is not None
        assert worker.process.poll() is None
    finally:
        worker.stop()
