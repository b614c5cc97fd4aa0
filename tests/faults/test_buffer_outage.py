"""Write buffers while PostgreSQL is down: rows stay in Redis and land once it is back."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from jobs import buffers
from ops.services import PostgresProcess, libpq_url
from tests.faults.conftest import create_partitions
from tests.integration.test_buffers import (
    buffer_env,  # noqa: F401 - the fixture, shared by import
    buffer_env_of,
    events,
    leftovers,
)
from tests.support.worker import wait_for
from workers import keys


def rows_in(url: str) -> int:
    with psycopg.connect(libpq_url(url)) as conn:
        return int(conn.execute("SELECT count(DISTINCT id) FROM events").fetchone()[0])


def waiting_or_claimed(redis_client: Any) -> int:
    """Rows of the events buffer still in Redis: waiting, or in a claimed batch."""
    batches = redis_client.scan_iter(match=keys.buffer_processing("events", "*"))
    claimed = sum(len(redis_client.get(key).split(b"\n")) for key in batches)
    return int(redis_client.llen(keys.buffer("events"))) + claimed


@pytest.mark.usefixtures("buffer_env")
def test_rows_buffered_while_postgres_is_down_stay_in_redis_and_land_after_it_returns(
    clean: Any,
    workers: Any,
    throwaway_postgres: tuple[PostgresProcess, str],
) -> None:
    """Given a worker flushing into a PostgreSQL that is then stopped, when 12,000 rows are
    appended (a flush is enqueued and fails), then every row stays in Redis while the flush
    retries with backoff, and once PostgreSQL is back all 12,000 land, once each.
    """
    _, redis_client = clean
    server, url = throwaway_postgres
    create_partitions(url)
    worker = workers(
        queues="buffers",
        extra_env={
            **buffer_env_of(),
            "JOBS_DATABASE_URL": url,
            "JOBS_TASKS": json.dumps(
                {"buffers.flush": {"retry_base": 0.5, "retry_cap": 2, "max_attempts": 50}}
            ),
        },
    )
    server.stop("immediate")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(libpq_url(url), connect_timeout=2).close()
    buffers.WriteBuffer("events").extend(events(12_000))

    def failures() -> int:
        return worker.log_path.read_bytes().count(b"buffer_flush_failed")

    wait_for(lambda: failures() >= 3, 30, "three failed flush attempts")
    assert waiting_or_claimed(redis_client) == 12_000
    server.start()
    wait_for(lambda: rows_in(url) == 12_000, 30, "rows written after PostgreSQL returned")
    wait_for(lambda: leftovers(redis_client) == (0, 0, 0), 10, "nothing left in Redis")
    with psycopg.connect(libpq_url(url)) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 12_000
        assert conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0
    print(f"FIGURE buffer outage: {failures()} failed flush attempts, 0 rows lost")
