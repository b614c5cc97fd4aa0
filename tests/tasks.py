"""Tasks the integration tests run in real workers (loaded via JOBS_EXTRA_TASK_MODULES).

Side effects go to ``test_effects`` (UNIQUE key: the once-only gate) and every attempt is
logged in ``test_runs`` so tests can count attempts and measure retry delays.
"""

from __future__ import annotations

import os
import signal
import time

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import text

from workers import resources
from workers.errors import PermanentError
from workers.task import current_job, job


class Boom(Exception):
    """A retryable failure."""


def log_run(name: str) -> int:
    """Record this attempt; returns the attempt number."""
    attempt = current_job().attempt
    with resources.engine().begin() as conn:
        conn.execute(
            text("INSERT INTO test_runs (name, attempt, pid) VALUES (:n, :a, :p)"),
            {"n": name, "a": attempt, "p": os.getpid()},
        )
    return attempt


def effect(name: str) -> None:
    """The side effect, gated by the job's idempotency key; ``hits`` counts runs that got here."""
    with resources.engine().begin() as conn:
        conn.execute(
            text(
                "INSERT INTO test_effects (key, name) VALUES (:k, :n) "
                "ON CONFLICT (key) DO UPDATE SET hits = test_effects.hits + 1"
            ),
            {"k": current_job().key, "n": name},
        )


@job(
    name="tests.record",
    queue="default",
    time_limit=20,
    max_attempts=3,
    retry_base=0.3,
    retry_cap=2.0,
)
def record(*, name: str, sleep: float = 0.0, fail_times: int = 0, permanent: bool = False) -> None:
    """Log the attempt; optionally sleep, fail ``fail_times`` times or fail permanently."""
    attempt = log_run(name)
    if sleep:
        time.sleep(sleep)
    if permanent:
        raise PermanentError(f"{name}: permanent failure")
    if attempt <= fail_times:
        raise Boom(f"{name}: failure on attempt {attempt}")
    effect(name)


@job(name="tests.noop", queue="default", time_limit=20)
def noop(*, n: int) -> None:
    """Record a side effect (for bulk drains)."""
    effect(f"noop-{n}")


@job(name="tests.kill_self", queue="default", time_limit=20)
def kill_self(*, name: str) -> None:
    """Log the attempt and SIGKILL this worker process (a job that crashes its worker)."""
    log_run(name)
    os.kill(os.getpid(), signal.SIGKILL)


@job(name="tests.kill_self_or_record", queue="default", time_limit=20)
def kill_self_or_record(*, name: str, lethal: bool = False) -> None:
    """Log the attempt; SIGKILL this worker process if ``lethal``, else record the effect."""
    log_run(name)
    if lethal:
        os.kill(os.getpid(), signal.SIGKILL)
    effect(name)


@job(name="tests.fail_permanently", queue="default", time_limit=20)
def fail_permanently(*, name: str) -> None:
    """Fail permanently without touching the database."""
    raise PermanentError(f"{name}: declined")


@job(name="tests.overrun", queue="default", time_limit=2)
def overrun(*, name: str) -> None:
    """Log the attempt, then ignore the soft time limit until the hard one kills the process."""
    log_run(name)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            time.sleep(deadline - time.monotonic())
        except SoftTimeLimitExceeded:
            continue
