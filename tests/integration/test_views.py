"""Materialized-view refresh against the real PostgreSQL and real workers: single-flight,
readers during CONCURRENTLY, first population, errors, staleness, and a worker SIGKILLed in
the middle of ``REFRESH ... CONCURRENTLY``.

The slow view: ``test_slow_mv`` sleeps ``test_view_sleep.seconds`` per refresh (pg_sleep in its
query), with the unique index CONCURRENTLY needs.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Self

import psycopg
import pytest

import jobs
from jobs import views
from jobs.views import refresh_view, staleness, view_state
from ops.services import libpq_url
from tests.support.worker import wait_for
from workers import resources
from workers.errors import PermanentError, Retry
from workers.registries import ViewSpec

SLOW = ViewSpec(view="test_slow_mv", interval=60, statement_timeout=120, lock_timeout=5)
PLAIN = SLOW.model_copy(update={"concurrently": False})
#: JOBS_VIEWS of the test workers.
WORKER_VIEWS = json.dumps(
    [{"view": "mv_daily_stats", "interval": 300}, {"view": "test_slow_mv", "interval": 60,
      "statement_timeout": 120, "lock_timeout": 5}]
)  # fmt: skip
SETUP = """
DROP MATERIALIZED VIEW IF EXISTS test_slow_mv;
DROP MATERIALIZED VIEW IF EXISTS test_no_index_mv;
DROP TABLE IF EXISTS test_view_sleep;
CREATE TABLE test_view_sleep (seconds float8 NOT NULL);
INSERT INTO test_view_sleep VALUES (0);
CREATE MATERIALIZED VIEW test_slow_mv AS
    SELECT 1 AS id, clock_timestamp() AS refreshed_at
    FROM test_view_sleep s CROSS JOIN LATERAL pg_sleep(s.seconds)
    WITH NO DATA;
CREATE UNIQUE INDEX test_slow_mv_id ON test_slow_mv (id);
TRUNCATE view_refresh_state;
"""
TEARDOWN = """
DROP MATERIALIZED VIEW IF EXISTS test_slow_mv;
DROP MATERIALIZED VIEW IF EXISTS test_no_index_mv;
DROP TABLE IF EXISTS test_view_sleep;
TRUNCATE view_refresh_state;
"""


@pytest.fixture
def pg(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection; the slow view (never populated) and an empty state table."""
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute(SETUP)
        yield conn
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name LIKE 'jobs-refresh:test_%%' AND pid <> pg_backend_pid()"
        )
        conn.execute(TEARDOWN)


def set_sleep(pg: psycopg.Connection[Any], seconds: float) -> None:
    pg.execute("UPDATE test_view_sleep SET seconds = %s", (seconds,))


def refreshing(pg: psycopg.Connection[Any]) -> list[tuple[int, str]]:
    """(pid, application_name) of the backends running a REFRESH of test_slow_mv now."""
    rows = pg.execute(
        "SELECT pid, application_name FROM pg_stat_activity "
        "WHERE datname = current_database() AND state = 'active' "
        "AND query ILIKE 'REFRESH MATERIALIZED VIEW%%test_slow_mv%%' AND pid <> pg_backend_pid()"
    ).fetchall()
    return [(int(pid), str(name)) for pid, name in rows]


class OverlapSampler(threading.Thread):
    """Samples pg_stat_activity every 20 ms: the most REFRESHes of the view seen at once."""

    def __init__(self, database_url: str) -> None:
        """Sample ``database_url`` once started."""
        super().__init__(daemon=True)
        self.url = libpq_url(database_url)
        self.most = 0
        self.samples = 0
        self.halt = threading.Event()

    def run(self) -> None:
        """Sample until halted."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.halt.is_set():
                try:
                    self.most = max(self.most, len(refreshing(conn)))
                except psycopg.Error:
                    return  # the database is going away (end of session)
                self.samples += 1
                time.sleep(0.02)

    def __enter__(self) -> Self:
        """Start sampling."""
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop sampling."""
        self.halt.set()
        self.join(5)


def state(view: str = "test_slow_mv") -> views.ViewState:
    found = view_state(view)
    assert found is not None
    return found


def test_a_never_populated_view_gets_a_plain_refresh_then_concurrent_ones(
    pg: psycopg.Connection[Any],
) -> None:
    """Given a view created WITH NO DATA, the first refresh is plain (CONCURRENTLY is
    impossible then) and populates it; the next one is CONCURRENTLY; both are recorded.
    """
    engine = resources.engine()
    first = refresh_view(engine, SLOW)
    assert (first.status, first.concurrently) == ("refreshed", False)
    assert pg.execute("SELECT count(*) FROM test_slow_mv").fetchone() == (1,)
    second = refresh_view(engine, SLOW)
    assert (second.status, second.concurrently) == ("refreshed", True)
    recorded = state()
    assert (recorded.refreshes, recorded.skips, recorded.failures) == (2, 0, 0)
    assert recorded.last_concurrently is True


def test_the_demo_view_counts_events_per_day(pg: psycopg.Connection[Any]) -> None:
    """Given events of two users over one day (a signup, views, purchases with amounts, one
    malformed amount), mv_daily_stats has unique users, totals, purchases, revenue, signups
    and the conversion rate for that day after a refresh.
    """
    from jobs import partitions  # noqa: PLC0415

    partitions.ensure_all()
    day = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    rows = [
        (1, "signup", {}), (1, "view", {}), (1, "purchase", {"amount": 10.5}),
        (2, "view", {}), (2, "purchase", {"amount": "oops"}), (3, "view", {}),
    ]  # fmt: skip
    pg.execute("TRUNCATE events")
    try:
        with pg.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO events (id, user_id, event_type, payload, created_at) "
                "VALUES (gen_random_uuid(), %s, %s, %s, %s)",
                [(user, kind, json.dumps(payload), day) for user, kind, payload in rows],
            )
        result = refresh_view(resources.engine(), ViewSpec(view="mv_daily_stats"))
        assert result.status == "refreshed"
        stats = pg.execute(
            "SELECT unique_users, total_events, purchases, revenue, signups, conversion_rate "
            "FROM mv_daily_stats WHERE day = %s",
            (day.date(),),
        ).fetchone()
        assert stats is not None
        assert [float(v) for v in stats] == [3, 6, 2, 10.5, 1, 0.6667]
    finally:
        pg.execute("TRUNCATE events")
        refresh_view(resources.engine(), ViewSpec(view="mv_daily_stats"))


def test_a_populated_view_without_a_unique_index_is_refused_for_concurrently(
    pg: psycopg.Connection[Any],
) -> None:
    """Given a populated view without a unique index, a CONCURRENTLY entry is a permanent
    error saying what to do (and the failure is recorded); a plain entry refreshes it.
    """
    pg.execute("CREATE MATERIALIZED VIEW test_no_index_mv AS SELECT 1 AS id")
    spec = ViewSpec(view="test_no_index_mv")
    with pytest.raises(PermanentError, match="needs a UNIQUE index"):
        refresh_view(resources.engine(), spec)
    assert "needs a UNIQUE index" in (state("test_no_index_mv").last_error or "")
    plain = refresh_view(resources.engine(), spec.model_copy(update={"concurrently": False}))
    assert (plain.status, plain.concurrently) == ("refreshed", False)


def test_unknown_and_unregistered_views_are_permanent_errors(pg: psycopg.Connection[Any]) -> None:
    """A registered name that does not exist, a table that is not a materialized view, and a
    name outside JOBS_VIEWS (refused before any SQL) are permanent errors naming the view.
    """
    with pytest.raises(PermanentError, match="'test_missing_mv' does not exist"):
        refresh_view(resources.engine(), ViewSpec(view="test_missing_mv"))
    with pytest.raises(PermanentError, match="'test_view_sleep' is not a materialized view"):
        refresh_view(resources.engine(), ViewSpec(view="test_view_sleep"))
    with pytest.raises(PermanentError, match="'test_slow_mv' is not in JOBS_VIEWS"):
        views.refresh(view="test_slow_mv")  # this process's registry: the defaults only


def test_a_lock_timeout_is_a_transient_error_and_is_recorded(pg: psycopg.Connection[Any]) -> None:
    """Given another session holding an exclusive lock on the view longer than the entry's
    lock_timeout, the refresh raises Retry (not a permanent error) and records the failure;
    staleness is unchanged (still never refreshed).
    """
    refresh_view(resources.engine(), SLOW)
    before = state().last_success_at
    # A plain REFRESH left uncommitted holds the view's ACCESS EXCLUSIVE lock (LOCK TABLE
    # does not take materialized views).
    pg.execute("BEGIN; REFRESH MATERIALIZED VIEW test_slow_mv")
    try:
        with pytest.raises(Retry, match="LockNotAvailable"):
            refresh_view(resources.engine(), SLOW.model_copy(update={"lock_timeout": 0.2}))
    finally:
        pg.execute("ROLLBACK")
    recorded = state()
    assert recorded.failures == 1
    assert recorded.last_success_at == before
    assert "LockNotAvailable" in (recorded.last_error or "")


def test_staleness_is_the_time_since_the_last_success(pg: psycopg.Connection[Any]) -> None:
    """Before any refresh staleness is None; after one at T it is (now - T) by the clock."""
    assert staleness("test_slow_mv") is None
    moment = datetime(2026, 12, 31, 23, 0, tzinfo=UTC)
    refresh_view(resources.engine(), SLOW, clock=lambda: moment)
    later = moment + timedelta(minutes=7)
    assert staleness("test_slow_mv", clock=lambda: later) == 420.0
    recorded = state()
    assert recorded.last_started_at == moment
    assert recorded.last_duration_ms is not None
    assert recorded.last_duration_ms > 0


def test_readers_are_not_blocked_during_a_concurrent_refresh_but_are_by_a_plain_one(
    pg: psycopg.Connection[Any], database_url: str
) -> None:
    """Given a populated view whose refresh takes 2 s, while a CONCURRENTLY refresh runs a
    SELECT of the view completes at once; while a plain refresh runs, the same SELECT cannot
    get its lock (the contrast that shows the first result means something).
    """
    engine = resources.engine()
    refresh_view(engine, SLOW)
    set_sleep(pg, 2)
    with psycopg.connect(libpq_url(database_url), autocommit=True) as reader:
        reader.execute("SET lock_timeout = '500ms'")
        for spec, blocked in [(SLOW, False), (PLAIN, True)]:
            runner = threading.Thread(target=refresh_view, args=(engine, spec))
            runner.start()
            wait_for(lambda: refreshing(pg), 10, "refresh running")
            started = time.perf_counter()
            if blocked:
                with pytest.raises(psycopg.errors.LockNotAvailable):
                    reader.execute("SELECT count(*) FROM test_slow_mv").fetchone()
            else:
                assert reader.execute("SELECT count(*) FROM test_slow_mv").fetchone() == (1,)
                assert time.perf_counter() - started < 0.5
                assert refreshing(pg)  # the refresh was still running when the read returned
            runner.join(10)


def test_three_triggers_of_a_slow_refresh_run_one_at_a_time(
    pg: psycopg.Connection[Any], clean: Any, workers: Any, database_url: str
) -> None:
    """Given a refresh that takes 3 s and a worker with three processes, when views.refresh is
    triggered three times at once, then at most one REFRESH ever runs (sampled in
    pg_stat_activity), the triggers that found one running were skipped (not queued), and
    every trigger is accounted for as refreshed or skipped.
    """
    refresh_view(resources.engine(), SLOW)  # populate
    pg.execute("TRUNCATE view_refresh_state")
    set_sleep(pg, 3)
    workers(queues="maintenance", concurrency=3, extra_env={"JOBS_VIEWS": WORKER_VIEWS})
    with OverlapSampler(database_url) as sampler:
        for n in range(3):
            jobs.enqueue(views.refresh, view="test_slow_mv", key=f"refresh-test-{n}")
        wait_for(
            lambda: (s := view_state("test_slow_mv")) and s.refreshes + s.skips == 3,
            45,
            "three triggers handled",
        )
    recorded = state()
    assert sampler.samples > 50
    assert sampler.most == 1
    assert recorded.skips >= 1
    assert recorded.refreshes >= 1
    assert recorded.failures == 0


def _sigkill_mid_refresh(
    pg: psycopg.Connection[Any], workers: Any, check_interval: float
) -> tuple[float | None, int]:
    """Start a 20 s CONCURRENTLY refresh in a worker, SIGKILL the worker process running it.

    Returns (seconds until its backend ended, or None if it still ran 6 s later; its pid).
    """
    refresh_view(resources.engine(), SLOW)  # populate, so the next one is CONCURRENTLY
    set_sleep(pg, 20)
    workers(
        queues="maintenance",
        concurrency=1,
        extra_env={
            "JOBS_VIEWS": WORKER_VIEWS,
            "JOBS_MAINTENANCE_CONNECTION_CHECK_INTERVAL": str(check_interval),
        },
    )
    jobs.enqueue(views.refresh, view="test_slow_mv", key="refresh-killed")
    ((backend, application),) = wait_for(lambda: refreshing(pg), 30, "refresh running")
    query = pg.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (backend,)).fetchone()
    assert query is not None
    assert "CONCURRENTLY" in query[0]
    worker_pid = int(application.rsplit(":", 1)[1])  # jobs-refresh:<view>:<pid>
    time.sleep(0.5)  # well inside the 20 s REFRESH
    os.kill(worker_pid, signal.SIGKILL)
    killed = time.monotonic()
    set_sleep(pg, 0)  # later refreshes are quick
    try:
        wait_for(lambda: backend not in [pid for pid, _ in refreshing(pg)], 6, "backend gone")
    except AssertionError:
        return None, backend
    return time.monotonic() - killed, backend


def test_a_worker_sigkilled_mid_concurrent_refresh_releases_the_lock_within_seconds(
    pg: psycopg.Connection[Any], clean: Any, workers: Any, database_url: str
) -> None:
    """Given a worker process SIGKILLed 0.5 s into a 20 s REFRESH ... CONCURRENTLY, then the
    server cancels the orphaned REFRESH within client_connection_check_interval (2 s) + slack,
    the next refresh gets the lock at once (long before the orphan would have finished), and
    two refreshes never overlap (the job redelivered after the crash included).
    """
    with OverlapSampler(database_url) as sampler:
        gone_after, _ = _sigkill_mid_refresh(pg, workers, check_interval=2)
        assert gone_after is not None, "the orphaned REFRESH kept running"
        assert gone_after < 2 + 3
        lock_free = time.monotonic()
        ours: list[str] = []

        def refreshed() -> bool:
            ours.append(refresh_view(resources.engine(), SLOW).status)
            return ours[-1] == "refreshed"

        # (a skip here only means the redelivered job held the lock for its own quick refresh)
        wait_for(refreshed, 10, "a refresh getting the lock")
        assert time.monotonic() - lock_free < 5
        # populate + ours + the redelivered job (refreshed or skipped); the killed run recorded
        # its start only
        wait_for(lambda: (s := state()).refreshes + s.skips == 2 + len(ours), 20,
                 "the redelivered job handled")  # fmt: skip
    assert sampler.most == 1
    print(f"FIGURE orphaned REFRESH cancelled {gone_after:.2f} s after SIGKILL")


def test_without_the_connection_check_an_orphaned_refresh_keeps_its_lock(
    pg: psycopg.Connection[Any], clean: Any, workers: Any, database_url: str
) -> None:
    """Control: with the check interval set to an hour, the REFRESH of a SIGKILLed worker is
    still running (and holding the lock: a refresh is skipped) 6 s later. This is the
    behaviour client_connection_check_interval exists to prevent.
    """
    with OverlapSampler(database_url) as sampler:
        gone_after, backend = _sigkill_mid_refresh(pg, workers, check_interval=3600)
        try:
            assert gone_after is None
            assert refresh_view(resources.engine(), SLOW).status == "skipped"
        finally:
            pg.execute("SELECT pg_terminate_backend(%s)", (backend,))
    assert sampler.most == 1
