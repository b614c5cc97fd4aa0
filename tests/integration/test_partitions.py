"""Partition maintenance against the real PostgreSQL: ahead-of-time creation across year
boundaries and skipped runs, idempotence, concurrent runs, DEFAULT rows, retention while
inserts continue, the tasks in a real worker, and the Alembic autogenerate filter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg import sql

import jobs
from jobs import partitions
from jobs.partitions import drop_expired_partitions, ensure_partitions
from ops.services import libpq_url
from tests.support.worker import wait_for
from workers import resources
from workers.errors import PermanentError
from workers.registries import PartitionSpec

NYE = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
#: Test-local partitioned tables (created and dropped by the fixture).
TEST_TABLES = ("pt_week", "pt_day", "pt_ret")


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def clock(moment: datetime) -> partitions.Clock:
    return lambda: moment


def spec(table: str = "events", interval: str = "month", **kwargs: Any) -> PartitionSpec:
    return PartitionSpec.model_validate(
        {"table": table, "column": "created_at", "interval": interval, **kwargs}
    )


def attached(db: psycopg.Connection[Any], table: str) -> list[str]:
    return [
        name
        for (name,) in db.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass ORDER BY c.relname",
            (table,),
        )
    ]


def oids(db: psycopg.Connection[Any], table: str) -> dict[str, int]:
    return dict(
        db.execute(
            "SELECT c.relname, c.oid::int FROM pg_inherits i JOIN pg_class c "
            "ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
            (table,),
        ).fetchall()
    )


def drop_all_partitions(db: psycopg.Connection[Any], table: str) -> None:
    """Drop ``table``'s partitions and any table named like one (detached leftovers)."""
    rows = db.execute(
        "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') AND "
        "(relname LIKE %s OR relname = %s)",
        (f"{table}\\_p%", f"{table}_default"),
    ).fetchall()
    for (name,) in rows:
        db.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))


def insert_event(db: psycopg.Connection[Any], created_at: datetime) -> str:
    """Insert one event; returns the partition it landed in."""
    row = db.execute(
        "INSERT INTO events (id, user_id, event_type, created_at) "
        "VALUES (gen_random_uuid(), 1, 'view', %s) RETURNING tableoid::regclass::text",
        (created_at,),
    ).fetchone()
    assert row is not None
    return str(row[0])


@pytest.fixture
def pg(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection; events (and its partitions) emptied, the test tables fresh.

    Afterwards events is left as ``jobctl migrate`` leaves it (partitions for the real now).
    """
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        drop_all_partitions(conn, "events")
        conn.execute("TRUNCATE events")
        for table in TEST_TABLES:
            drop_all_partitions(conn, table)
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {} (n int NOT NULL DEFAULT 0, created_at timestamptz NOT NULL)"
                    " PARTITION BY RANGE (created_at)"
                ).format(sql.Identifier(table))
            )
        yield conn
        for table in TEST_TABLES:
            drop_all_partitions(conn, table)
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
        drop_all_partitions(conn, "events")
        conn.execute("TRUNCATE events")
    partitions.ensure_all()


def test_on_new_years_eve_inserts_for_the_next_three_months_land_in_their_partitions(
    pg: psycopg.Connection[Any],
) -> None:
    """Given the clock at 2026-12-31 23:59 and no DEFAULT partition, when ensure runs, then
    rows for December and the next three months insert into their own monthly partitions (a
    row past March still fails: nothing catches it).
    """
    result = ensure_partitions(resources.engine(), spec(premake=3), clock=clock(NYE))
    assert result.created == [
        "events_p202612",
        "events_p202701",
        "events_p202702",
        "events_p202703",
    ]
    for moment, partition in [
        (at(2026, 12, 31, 23, 59, 59), "events_p202612"),
        (at(2027, 1, 1), "events_p202701"),
        (at(2027, 2, 28, 23, 59, 59), "events_p202702"),
        (at(2027, 3, 31, 12), "events_p202703"),
    ]:
        assert insert_event(pg, moment) == partition
    with pytest.raises(psycopg.errors.CheckViolation, match="no partition"):
        insert_event(pg, at(2027, 4, 1))


def test_after_skipped_runs_the_missed_months_and_the_next_three_are_created(
    pg: psycopg.Connection[Any],
) -> None:
    """Given partitions made in October 2026, when the next run happens only in February 2027
    (runs skipped over a year boundary), then November 2026 .. May 2027 exist and an insert
    into every one of those months succeeds.
    """
    engine = resources.engine()
    ensure_partitions(engine, spec(premake=1), clock=clock(at(2026, 10, 5)))
    assert attached(pg, "events") == ["events_p202610", "events_p202611"]
    result = ensure_partitions(engine, spec(premake=3), clock=clock(at(2027, 2, 10, 3)))
    assert result.created == [
        "events_p202612",
        "events_p202701",
        "events_p202702",
        "events_p202703",
        "events_p202704",
        "events_p202705",
    ]
    for month in range(11, 18):
        year, month_of_year = 2026 + (month - 1) // 12, (month - 1) % 12 + 1
        partition = insert_event(pg, at(year, month_of_year, 15))
        assert partition == f"events_p{year}{month_of_year:02d}"


def test_weekly_and_daily_tables_cross_the_year_boundary(pg: psycopg.Connection[Any]) -> None:
    """Given weekly and daily registry entries and the clock at 2026-12-31 23:59, then weeks
    start on Mondays (2026-12-28 ...) and days run into 2027; inserts land in each.
    """
    engine = resources.engine()
    weekly = ensure_partitions(engine, spec("pt_week", "week", premake=3), clock=clock(NYE))
    daily = ensure_partitions(engine, spec("pt_day", "day", premake=3), clock=clock(NYE))
    assert weekly.created == ["pt_week_p20261228", "pt_week_p20270104", "pt_week_p20270111",
                              "pt_week_p20270118"]  # fmt: skip
    assert daily.created == ["pt_day_p20261231", "pt_day_p20270101", "pt_day_p20270102",
                             "pt_day_p20270103"]  # fmt: skip
    for table, moment, partition in [
        ("pt_week", at(2027, 1, 24, 23, 59), "pt_week_p20270118"),
        ("pt_week", at(2026, 12, 28), "pt_week_p20261228"),
        ("pt_day", at(2027, 1, 3, 23, 59), "pt_day_p20270103"),
    ]:
        row = pg.execute(
            sql.SQL("INSERT INTO {} (created_at) VALUES (%s) RETURNING tableoid::regclass::text")
            .format(sql.Identifier(table)),
            (moment,),
        ).fetchone()  # fmt: skip
        assert row == (partition,)


@pytest.fixture
def ddl_log(pg: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    """An event trigger recording every DDL command tag into test_ddl_log while it exists."""
    pg.execute(
        """
        CREATE TABLE IF NOT EXISTS test_ddl_log (tag text, object text);
        TRUNCATE test_ddl_log;
        CREATE OR REPLACE FUNCTION test_record_ddl() RETURNS event_trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO test_ddl_log
            SELECT command_tag, object_identity FROM pg_event_trigger_ddl_commands();
        END $$;
        DROP EVENT TRIGGER IF EXISTS test_record_ddl;
        CREATE EVENT TRIGGER test_record_ddl ON ddl_command_end
            EXECUTE FUNCTION test_record_ddl();
        """
    )
    yield pg
    pg.execute("DROP EVENT TRIGGER IF EXISTS test_record_ddl; DROP TABLE IF EXISTS test_ddl_log")


def test_a_rerun_is_a_no_op_without_any_ddl(ddl_log: psycopg.Connection[Any]) -> None:
    """Given ensure has run (DEFAULT partition included), when it runs again at the same time,
    then it creates nothing, the partitions are the same objects (same oids), and the server
    executed no DDL at all (an event trigger saw none).
    """
    engine = resources.engine()
    events = spec(premake=3, default_partition=True)
    first = ensure_partitions(engine, events, clock=clock(NYE))
    assert len(first.created) == 4
    assert ddl_log.execute("SELECT count(*) FROM test_ddl_log").fetchone() != (0,)  # sanity
    before = oids(ddl_log, "events")
    ddl_log.execute("TRUNCATE test_ddl_log")

    again = ensure_partitions(engine, events, clock=clock(NYE))

    assert again.created == []
    assert oids(ddl_log, "events") == before
    assert ddl_log.execute("SELECT tag, object FROM test_ddl_log").fetchall() == []


def test_concurrent_runs_create_each_partition_exactly_once(pg: psycopg.Connection[Any]) -> None:
    """Given six runs started at the same instant (own sessions, threads), then they all
    succeed, each partition is created by exactly one of them, and the table ends with the
    expected partitions.
    """
    engine = resources.engine()
    events = spec(premake=5, default_partition=True)
    barrier = threading.Barrier(6)
    results: list[partitions.EnsureResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            results.append(ensure_partitions(engine, events, clock=clock(NYE)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    created = [name for result in results for name in result.created]
    expected = [f"events_p{stamp}" for stamp in
                ("202612", "202701", "202702", "202703", "202704", "202705")]  # fmt: skip
    assert sorted(created) == expected  # no name twice
    assert attached(pg, "events") == ["events_default", *expected]


def test_rows_in_the_default_partition_are_counted_then_moved_when_their_range_is_made(
    pg: psycopg.Connection[Any],
) -> None:
    """Given a DEFAULT partition holding a June 2027 row (inserted before its partition
    existed), the metric reports 1; when ensure runs in May 2027, the row moves into
    events_p202706 (same id, nothing lost or duplicated) and the metric is 0 again.
    """
    engine = resources.engine()
    events = spec(premake=3, default_partition=True)
    ensure_partitions(engine, events, clock=clock(NYE))
    assert insert_event(pg, at(2027, 6, 10)) == "events_default"
    (event_id,) = pg.execute("SELECT id FROM events").fetchone() or (None,)
    assert partitions.default_partition_rows("events") == 1

    result = ensure_partitions(engine, events, clock=clock(at(2027, 5, 20)))

    assert "events_p202706" in result.created
    assert result.moved_rows == 1
    assert result.default_rows == 0
    assert partitions.default_partition_rows("events") == 0
    rows = pg.execute("SELECT id, tableoid::regclass::text FROM events").fetchall()
    assert rows == [(event_id, "events_p202706")]


def test_future_partitions_counts_the_ones_starting_after_now(pg: psycopg.Connection[Any]) -> None:
    """Given December 2026 .. March 2027 (+ DEFAULT), at NYE three start in the future."""
    ensure_partitions(resources.engine(), spec(premake=3, default_partition=True), clock=clock(NYE))
    assert partitions.future_partitions("events", clock=clock(NYE)) == 3
    assert partitions.future_partitions("events", clock=clock(at(2027, 3, 1, 0, 0, 1))) == 0


class Inserter(threading.Thread):
    """Inserts current rows into a table in a loop (own session), recording every error."""

    def __init__(self, database_url: str, table: str, moment: datetime) -> None:
        """Insert rows at ``moment`` into ``table`` once started."""
        super().__init__(daemon=True)
        self.url, self.table, self.moment = libpq_url(database_url), table, moment
        self.count = 0
        self.errors: list[BaseException] = []
        self.halt = threading.Event()

    def run(self) -> None:
        """Insert until halted."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            query = sql.SQL("INSERT INTO {} (created_at) VALUES (%s)").format(
                sql.Identifier(self.table)
            )
            while not self.halt.is_set():
                try:
                    conn.execute(query, (self.moment,))
                    self.count += 1
                except BaseException as exc:  # the test asserts there are none
                    self.errors.append(exc)


@pytest.mark.parametrize("with_default", [False, True], ids=["concurrently", "plain-detach"])
def test_retention_drops_exactly_the_expired_partitions_while_inserts_continue(
    pg: psycopg.Connection[Any], database_url: str, with_default: bool
) -> None:
    """Given monthly partitions for all of 2026 (one row each), a 3-month retention, the clock
    at 2026-11-23 and a thread inserting November rows non-stop, when drop_expired runs, then
    exactly January .. July (upper bound <= 2026-08-23) are detached and dropped (CONCURRENTLY
    without a DEFAULT partition, plain DETACH with one), August .. December and their rows
    stay, and the inserter saw no error and kept inserting.
    """
    engine = resources.engine()
    table = spec("pt_ret", premake=11, retention="3 months", default_partition=with_default)
    ensure_partitions(engine, table, clock=clock(at(2026, 1, 15)))
    for month in range(1, 13):
        pg.execute(
            "INSERT INTO pt_ret (n, created_at) VALUES (%s, %s)", (month, at(2026, month, 2))
        )
    inserter = Inserter(database_url, "pt_ret", at(2026, 11, 15))
    inserter.start()
    try:
        wait_for(lambda: inserter.count > 50, 10, "inserts running")
        before = inserter.count
        result = drop_expired_partitions(engine, table, clock=clock(at(2026, 11, 23)))
        during = inserter.count
        wait_for(lambda: inserter.count > during + 50, 10, "inserts continuing")
    finally:
        inserter.halt.set()
        inserter.join(10)
    expired = [f"pt_ret_p2026{m:02d}" for m in range(1, 8)]
    assert result.dropped == expired
    assert result.concurrently is not with_default
    kept = [f"pt_ret_p2026{m:02d}" for m in range(8, 13)]
    assert attached(pg, "pt_ret") == (["pt_ret_default"] if with_default else []) + kept
    for name in expired:
        assert pg.execute("SELECT to_regclass(%s)", (name,)).fetchone() == (None,)
    months = pg.execute("SELECT array_agg(n ORDER BY n) FROM pt_ret WHERE n > 0").fetchone()
    assert months == ([8, 9, 10, 11, 12],)
    assert inserter.errors == []
    assert during > before  # inserts went on while partitions were detached and dropped

    again = drop_expired_partitions(engine, table, clock=clock(at(2026, 11, 23)))
    assert again.dropped == []


def test_an_interrupted_concurrent_detach_and_a_detached_leftover_are_finished(
    pg: psycopg.Connection[Any], database_url: str
) -> None:
    """Given one expired partition left "detach pending" (a DETACH CONCURRENTLY cancelled while
    it waited) and another detached but never dropped (a crash between the two steps), when
    drop_expired runs, then the first is finalized and dropped, the second dropped too.
    """
    engine = resources.engine()
    table = spec("pt_ret", premake=3, retention="1 month")
    ensure_partitions(engine, table, clock=clock(at(2026, 1, 10)))
    pg.execute("ALTER TABLE pt_ret DETACH PARTITION pt_ret_p202602")  # the crashed run's leftover
    with psycopg.connect(libpq_url(database_url), autocommit=True) as reader:
        reader.execute("BEGIN; SELECT count(*) FROM pt_ret")  # holds a lock the detach waits for
        detacher = psycopg.connect(libpq_url(database_url), autocommit=True)
        pid = detacher.info.backend_pid
        failure: list[BaseException] = []

        def detach() -> None:
            try:
                detacher.execute("ALTER TABLE pt_ret DETACH PARTITION pt_ret_p202601 CONCURRENTLY")
            except psycopg.Error as exc:
                failure.append(exc)

        thread = threading.Thread(target=detach)
        thread.start()
        wait_for(
            lambda: pg.execute(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone() == (True,),
            10,
            "the concurrent detach waiting",
        )  # fmt: skip
        pg.execute("SELECT pg_cancel_backend(%s)", (pid,))
        thread.join(10)
        detacher.close()
        reader.execute("COMMIT")
    assert failure
    assert failure[0].__class__ is psycopg.errors.QueryCanceled
    pending = pg.execute(
        "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = 'pt_ret_p202601'::regclass"
    ).fetchone()
    assert pending == (True,)

    result = drop_expired_partitions(engine, table, clock=clock(at(2026, 4, 20)))

    assert sorted(result.dropped) == ["pt_ret_p202601", "pt_ret_p202602"]
    assert attached(pg, "pt_ret") == ["pt_ret_p202603", "pt_ret_p202604"]


def test_tables_that_are_missing_or_not_range_partitioned_are_permanent_errors(
    pg: psycopg.Connection[Any],
) -> None:
    """A registry entry naming a missing table, or the wrong column, fails clearly."""
    with pytest.raises(PermanentError, match="'nope' does not exist"):
        ensure_partitions(resources.engine(), spec("nope"))
    with pytest.raises(PermanentError, match=r"not partitioned BY RANGE \(user_id\)"):
        ensure_partitions(
            resources.engine(), spec("events").model_copy(update={"column": "user_id"})
        )


def test_the_tasks_run_in_a_worker_and_refuse_unregistered_tables(
    pg: psycopg.Connection[Any], clean: Any, workers: Any
) -> None:
    """Given a maintenance worker, when partitions.ensure is enqueued, then events gets its
    current partition, the next three and DEFAULT; when it is enqueued for a table outside
    JOBS_PARTITIONS, the job is dead-lettered as a permanent error naming the table.
    """
    db, _ = clean
    workers(queues="maintenance", concurrency=1)
    jobs.enqueue(partitions.ensure)
    wait_for(lambda: len(attached(pg, "events")) == 5, 30, "partitions created by the worker")
    now = datetime.now(UTC)
    assert f"events_p{now:%Y%m}" in attached(pg, "events")
    assert insert_event(pg, now) == f"events_p{now:%Y%m}"

    jobs.enqueue(partitions.ensure, table="pg_authid")
    wait_for(lambda: db.execute("SELECT 1 FROM dead_letters").fetchone(), 30, "dead letter")
    row = db.execute("SELECT task_name, reason, exc_message FROM dead_letters").fetchone()
    assert row[:2] == ("partitions.ensure", "permanent_error")
    assert "'pg_authid' is not in JOBS_PARTITIONS" in row[2]


def autogenerate_diffs(database_url: str, *, filtered: bool = True) -> list[Any]:
    """What ``alembic revision --autogenerate`` would emit, computed through our env.py."""
    from alembic.autogenerate import compare_metadata  # noqa: PLC0415
    from alembic.runtime.environment import EnvironmentContext  # noqa: PLC0415
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415
    from alembic.script import ScriptDirectory  # noqa: PLC0415

    from workers.db import metadata  # noqa: PLC0415
    from workers.migrate import alembic_config  # noqa: PLC0415

    if not filtered:
        with resources.engine().connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), metadata))
    config = alembic_config(database_url)
    script = ScriptDirectory.from_config(config)
    diffs: list[Any] = []

    def compare(_revision: Any, context: Any) -> list[Any]:
        diffs.extend(compare_metadata(context, context.opts["target_metadata"]))
        return []

    with EnvironmentContext(config, script, fn=compare):
        script.run_env()
    return diffs


def removed_tables(diffs: list[Any]) -> set[str]:
    return {d[1].name for d in diffs if isinstance(d, tuple) and d[0] == "remove_table"}


def test_alembic_autogenerate_does_not_see_run_time_partitions_as_tables_to_drop(
    pg: psycopg.Connection[Any], database_url: str
) -> None:
    """Given run-time partitions (monthly, DEFAULT, and one detached but not yet dropped),
    when autogenerate compares the database with our metadata through migrations/env.py, then
    it proposes no drop of any of them, and nothing about view_refresh_state (migration and
    metadata agree); without the filter the same comparison would drop them.
    """
    ensure_partitions(resources.engine(), spec(premake=3, default_partition=True), clock=clock(NYE))
    pg.execute("ALTER TABLE events DETACH PARTITION events_p202612")
    runtime = {"events_p202612", "events_p202701", "events_p202702", "events_p202703",
               "events_default"}  # fmt: skip
    assert runtime <= removed_tables(autogenerate_diffs(database_url, filtered=False))

    diffs = autogenerate_diffs(database_url)

    assert not runtime & removed_tables(diffs)
    assert not [d for d in diffs if "view_refresh_state" in repr(d)]
    added = [d for d in diffs if isinstance(d, tuple) and d[0] == "add_table"]
    assert added == [], "workers.db.metadata has tables no migration creates"
    # Only tables the tests create themselves (test_*, pt_*) are unknown to the metadata.
    assert {t for t in removed_tables(diffs) if not t.startswith(("test_", "pt_"))} == set()


def test_ensure_is_fast_enough_to_run_often(pg: psycopg.Connection[Any]) -> None:
    """A no-op ensure (the daily case) takes well under a second."""
    engine = resources.engine()
    events = spec(premake=3, default_partition=True)
    ensure_partitions(engine, events, clock=clock(NYE))
    started = time.perf_counter()
    ensure_partitions(engine, events, clock=clock(NYE))
    assert time.perf_counter() - started < 1.0
