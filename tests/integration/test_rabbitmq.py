"""The same producer API and guarantees with RabbitMQ as the broker (Celery's other transport)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from tests.faults.conftest import run_python
from tests.integration.test_execution import dead, effects
from tests.support.worker import Worker, wait_for

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def rabbitmq_answers() -> bool:
    """Whether something listens on RabbitMQ's port (it is optional: Redis is the default)."""
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=0.5):
            return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not rabbitmq_answers(), reason="no RabbitMQ on 127.0.0.1:5672")


def test_jobs_run_retry_and_dead_letter_with_a_rabbitmq_broker(
    clean: Any, worker_env: dict[str, str], tmp_path: Any
) -> None:
    """Given JOBS_BROKER_URL=amqp://..., then enqueue dedups (in Redis), a worker runs the job,
    a flaky job retries to success and a permanent failure is dead-lettered.
    """
    db, _ = clean
    env = {**worker_env, "JOBS_BROKER_URL": AMQP_URL}
    purge = "from workers.app import app; app.control.purge()"
    assert run_python(purge, env).returncode == 0
    worker = Worker(env, tmp_path, concurrency=2).start()
    try:
        produce = (
            "import jobs; from tests import tasks\n"
            "a = jobs.enqueue(tasks.record, name='amqp-ok')\n"
            "b = jobs.enqueue(tasks.record, name='amqp-ok')\n"
            "assert b.deduplicated and b.id == a.id, (a, b)\n"
            "jobs.enqueue(tasks.record, name='amqp-flaky', fail_times=1)\n"
            "jobs.enqueue(tasks.fail_permanently, name='amqp-dead')\n"
        )
        result = run_python(produce, env)
        assert result.returncode == 0, result.stderr
        wait_for(lambda: effects(db, "amqp-ok") and effects(db, "amqp-flaky"), 30, "jobs ran")
        wait_for(lambda: dead(db), 30, "dead letter")
        assert effects(db, "amqp-ok") == [("amqp-ok", 1)]
        assert dead(db)[0][:2] == ("tests.fail_permanently", "permanent_error")
    finally:
        worker.stop()
