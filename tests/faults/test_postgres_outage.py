"""PostgreSQL stopped during write-buffer flushes, view refreshes and dead-lettering.

One worker consumes ``default``, ``buffers`` and ``maintenance`` against a throwaway
PostgreSQL. Work of every kind is produced just before the database stops and again while it
is down: buffered event rows (flushes fail and retry), jobs writing a row each (retried),
jobs that fail permanently and poison messages (their dead letters cannot be written: the
messages are kept and tried again), and refreshes of ``mv_daily_stats``. After the database
comes back every row exists once, every dead letter is there, the view refreshed after the
restart, and Redis holds nothing left over.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

import jobs
from jobs import buffers, views
from jobs.buffers.producer import request_flush
from ops.services import PostgresProcess, libpq_url
from tests import tasks
from tests.conftest import TEST_TABLES
from tests.faults.conftest import create_partitions
from tests.integration.test_buffers import (
    buffer_env,  # noqa: F401 - the fixture, shared by import
    buffer_env_of,
    events,
    leftovers,
)
from tests.support.worker import Worker, wait_for
from workers import keys
from workers.settings import get_settings

#: Retry quickly and long enough to outlast any outage here (the defaults give up sooner:
#: a flush after 5 attempts, leaving its rows for the next scheduled flush; a refresh after 3).
QUICK_RETRIES = {"retry_base": 0.5, "retry_cap": 2.0, "max_attempts": 200}
RETRIED_TASKS = ("buffers.flush", "views.refresh", "tests.record")


@dataclass(frozen=True, slots=True)
class Load:
    """How much of each kind of work is produced before the outage and again during it."""

    rows: int
    jobs: int
    permanent: int
    poison: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the database holds after recovery."""

    events: int
    effects: int
    distinct_effects: int
    dead_letters: dict[str, int]
    view_success: float | None


def outcome(url: str) -> Outcome:
    """Count rows in the throwaway database."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        events_rows = conn.execute("SELECT count(DISTINCT id) FROM events").fetchone()
        effects = conn.execute("SELECT count(*), count(DISTINCT key) FROM test_effects").fetchone()
        letters = conn.execute(
            "SELECT reason, count(*) FROM dead_letters GROUP BY reason"
        ).fetchall()
        success = conn.execute(
            "SELECT extract(epoch FROM last_success_at) FROM view_refresh_state "
            "WHERE view = 'mv_daily_stats'"
        ).fetchone()
    assert events_rows is not None
    assert effects is not None
    return Outcome(
        events=int(events_rows[0]),
        effects=int(effects[0]),
        distinct_effects=int(effects[1]),
        dead_letters={str(reason): int(count) for reason, count in letters},
        view_success=float(success[0]) if success and success[0] is not None else None,
    )


@pytest.fixture
def outage_db(throwaway_postgres: tuple[PostgresProcess, str]) -> tuple[PostgresProcess, str]:
    """The throwaway PostgreSQL with the demo partitions and the test tables."""
    server, url = throwaway_postgres
    create_partitions(url)
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(TEST_TABLES)
    return server, url


def produce(load: Load, phase: str, redis_client: Any) -> None:
    """Rows into the buffer, jobs with a row each, failing jobs, poison and a refresh."""
    buffers.WriteBuffer("events").extend(events(load.rows))
    jobs.enqueue_many(tasks.record, [{"name": f"{phase}-{i}"} for i in range(load.jobs)])
    jobs.enqueue_many(
        tasks.fail_permanently, [{"name": f"{phase}-perm-{i}"} for i in range(load.permanent)]
    )
    if load.poison:
        redis_client.lpush(
            "default", *[f"poison {phase} {i}: not a message".encode() for i in range(load.poison)]
        )
    jobs.enqueue(views.refresh, view="mv_daily_stats", key=f"refresh-{phase}")


def failures_logged(worker: Worker) -> dict[str, int]:
    """How often the worker logged each kind of failure caused by the outage."""
    log = worker.log_path.read_bytes()
    return {
        event: log.count(event.encode())
        for event in (
            "buffer_flush_failed",
            "job_retry_scheduled",
            "dead_letter_store_unavailable",
            "poison_message_deferred",
            "view_refresh_failed",
        )
    }


def run_outage(
    redis_client: Any,
    worker_env: dict[str, str],
    tmp_path: Any,
    db: tuple[PostgresProcess, str],
    *,
    outage: float,
    load: Load,
) -> None:
    """Produce, stop PostgreSQL for ``outage`` s while producing more, restart, check."""
    server, url = db
    env = {
        **worker_env,
        **buffer_env_of(),
        "JOBS_DATABASE_URL": url,
        "JOBS_TASKS": json.dumps(dict.fromkeys(RETRIED_TASKS, QUICK_RETRIES)),
        "JOBS_DEAD_LETTER_RETRY_DELAY": "1",
    }
    worker = Worker(
        env, tmp_path, queues="default,buffers,maintenance", concurrency=2, name="pgout"
    ).start()
    try:
        produce(load, "before", redis_client)
        server.stop("immediate")
        stopped = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(libpq_url(url), connect_timeout=2).close()
        produce(load, "during", redis_client)
        wait_for(
            lambda: failures_logged(worker)["job_retry_scheduled"] > 0,
            outage,
            "the outage to make jobs fail",
        )
        time.sleep(max(0.0, outage - (time.monotonic() - stopped)))  # the outage itself
        during = failures_logged(worker)
        server.start()
        restarted = time.monotonic()
        restarted_at = time.time()
        request_flush("events", get_settings().buffers["events"])  # as beat's schedule does
        expected = Outcome(
            events=2 * load.rows,
            effects=2 * load.jobs,
            distinct_effects=2 * load.jobs,
            dead_letters={"permanent_error": 2 * load.permanent, "decode_error": 2 * load.poison},
            view_success=None,
        )

        def settled() -> bool:
            now = outcome(url)
            return (
                now.events == expected.events
                and now.effects == expected.effects
                and now.dead_letters == expected.dead_letters
                and (now.view_success or 0) >= restarted_at - 1
            )

        wait_for(settled, 60 + outage, "every row and dead letter after recovery", interval=0.5)
        recovery = time.monotonic() - restarted
        final = outcome(url)
        assert final.distinct_effects == final.effects == expected.effects
        assert final.dead_letters == expected.dead_letters
        wait_for(lambda: leftovers(redis_client) == (0, 0, 0), 20, "nothing left in the buffer")
        wait_for(
            lambda: (
                redis_client.zcard(keys.delayed()) == 0
                and sum(redis_client.llen(q) for q in ("default", "buffers", "maintenance")) == 0
            ),
            20,
            "no job left waiting",
        )
        assert worker.alive(), worker.log()
    finally:
        worker.stop()
    letters = sum(expected.dead_letters.values())
    print(
        f"FIGURE postgres_outage: PostgreSQL down {outage:.0f}s during flushes, refreshes and "
        f"dead-lettering: {final.events:,}/{expected.events:,} buffered rows, "
        f"{final.effects}/{expected.effects} job rows (each once), {letters}/{letters} dead "
        f"letters, view refreshed after restart; 0 lost; settled {recovery:.1f}s after restart; "
        f"failures while down: {during['buffer_flush_failed']} flush, "
        f"{during['job_retry_scheduled']} job retries, "
        f"{during['dead_letter_store_unavailable'] + during['poison_message_deferred']} "
        f"dead-letter writes deferred"
    )


@pytest.mark.usefixtures("buffer_env")
def test_an_8_second_postgres_outage_loses_no_row_and_no_dead_letter(
    clean: Any, worker_env: dict[str, str], tmp_path: Any, outage_db: tuple[Any, str]
) -> None:
    """Given a worker writing buffered rows, job rows, dead letters and view refreshes, when
    PostgreSQL is stopped for 8 s while more of each is produced, then after it returns every
    row exists exactly once, every dead letter is there with its reason, the view's last
    success is after the restart, and nothing is left in Redis.
    """
    _, redis_client = clean
    run_outage(
        redis_client,
        worker_env,
        tmp_path,
        outage_db,
        outage=8,
        load=Load(rows=6_000, jobs=40, permanent=10, poison=3),
    )


@pytest.mark.slow
@pytest.mark.usefixtures("buffer_env")
def test_a_30_second_postgres_outage_loses_no_row_and_no_dead_letter(
    clean: Any, worker_env: dict[str, str], tmp_path: Any, outage_db: tuple[Any, str]
) -> None:
    """As the 8 s variant, with a 30 s outage and more of each kind of work."""
    _, redis_client = clean
    run_outage(
        redis_client,
        worker_env,
        tmp_path,
        outage_db,
        outage=30,
        load=Load(rows=20_000, jobs=200, permanent=50, poison=5),
    )
