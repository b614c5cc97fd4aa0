"""Range partitions made ahead of time and dropped after retention (registry: JOBS_PARTITIONS).

``ensure_partitions`` creates the current partition and the next ``premake`` ones (plus any a
skipped run left out), and the DEFAULT partition when the registry asks for one. It is
idempotent (a re-run issues no DDL) and serialized per table by a transaction-level advisory
lock, so any number of workers may run it at once: each partition is created exactly once.

How a partition is made: ``CREATE TABLE <table>_pYYYYMM (LIKE <table> INCLUDING DEFAULTS
INCLUDING CONSTRAINTS)`` then ``ALTER TABLE <table> ATTACH PARTITION ... FOR VALUES FROM ...
TO ...``, all in one transaction. ATTACH only takes SHARE UPDATE EXCLUSIVE on the parent, so
neither writers nor readers (nor a running ``REFRESH`` of a view over the table) are blocked,
whereas ``CREATE TABLE ... PARTITION OF`` would need ACCESS EXCLUSIVE on the parent.

The DEFAULT partition: PostgreSQL refuses to attach a range while the DEFAULT partition holds
rows of that range. Those rows are *moved* in the same transaction: the DEFAULT partition is
locked (ACCESS EXCLUSIVE, which ATTACH takes anyway), its rows in the range are deleted into
the new table, then the table is attached. Nothing is lost and nothing is visible twice: the
move commits or rolls back as a whole. Rows in DEFAULT mean inserts outside every range: the
``default_partition_rows`` metric should alert on anything but 0.

``drop_expired_partitions`` detaches, then drops, the partitions whose upper bound is at or
before ``now - retention``. Where the server supports it (PostgreSQL 14+) and no DEFAULT
partition exists, ``DETACH PARTITION ... CONCURRENTLY`` is used (it cannot run inside a
transaction block, and PostgreSQL forbids it when a DEFAULT partition exists); otherwise a
plain DETACH, which briefly takes ACCESS EXCLUSIVE on the parent. An interrupted concurrent
detach is finished (``FINALIZE``) by the next run; a table detached but not dropped by a
crashed run (named like our partitions, past retention) is dropped by the next run.

Every DDL statement runs under ``lock_timeout`` (``JOBS_PARTITIONS_LOCK_TIMEOUT``): a busy table
makes the job fail fast and retry, instead of queueing every writer behind a waiting DDL lock.
Identifiers are always quoted with ``psycopg.sql.Identifier``; only registered tables are
touched (a task naming another table is refused as a permanent error).

A ``clock`` argument (``Clock``, default UTC now) lets tests move time across month and year
boundaries and over skipped runs.

Modules: the pure range and name arithmetic is :mod:`jobs.partition_ranges`; connections,
advisory keys and error classification (shared with ``jobs.views``) are
:mod:`jobs.maintenance`. Their names are re-exported here.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
import structlog
from psycopg import sql
from sqlalchemy import Engine

from jobs.maintenance import PG14, Clock, advisory_key, classified, pg_connect, utcnow
from jobs.partition_ranges import (
    MAX_CATCH_UP,
    Interval,
    Range,
    add_intervals,
    default_partition_name,
    interval_start,
    name_range,
    parse_bound,
    partition_name,
    planned_ranges,
    retention_cutoff,
    shift_months,
)
from workers import resources
from workers.errors import PermanentError
from workers.registries import PartitionSpec
from workers.settings import Settings, get_settings
from workers.task import job

__all__ = [
    "ADVISORY_WAIT",
    "DEFAULT_LOCK_TIMEOUT",
    "MAX_CATCH_UP",
    "PG14",
    "SCHEDULE_SECONDS",
    "Clock",
    "DropResult",
    "EnsureResult",
    "Interval",
    "Partition",
    "Range",
    "TableInfo",
    "add_intervals",
    "advisory_key",
    "classified",
    "default_partition_name",
    "default_partition_rows",
    "drop_expired",
    "drop_expired_partitions",
    "ensure",
    "ensure_all",
    "ensure_partitions",
    "future_partitions",
    "interval_start",
    "name_range",
    "parse_bound",
    "partition_name",
    "pg_connect",
    "planned_ranges",
    "retention_cutoff",
    "schedule_entries",
    "shift_months",
    "spec_for",
    "utcnow",
]

log = structlog.get_logger("jobs.partitions")

#: Seconds of ``SET LOCAL lock_timeout`` for DDL when the caller gives none.
DEFAULT_LOCK_TIMEOUT = 5.0
#: Longest wait (s) for another run on the same table (then: lock timeout, retried later).
ADVISORY_WAIT = 120.0
_BOUND_FORMATS = {
    "timestamp with time zone": "%Y-%m-%d %H:%M:%S+00",
    "timestamp without time zone": "%Y-%m-%d %H:%M:%S",
    "date": "%Y-%m-%d",
}


# -- catalogue reads ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Partition:
    """An attached partition as the catalogue describes it."""

    name: str
    start: datetime | None
    end: datetime | None
    is_default: bool = False
    detach_pending: bool = False


@dataclass(frozen=True, slots=True)
class TableInfo:
    """What we need to know about a registered parent table."""

    bound_format: str
    columns: tuple[str, ...]
    partitions: tuple[Partition, ...]

    @property
    def default(self) -> Partition | None:
        """The DEFAULT partition, if one is attached."""
        return next((p for p in self.partitions if p.is_default), None)


def _table_info(conn: psycopg.Connection[Any], spec: PartitionSpec) -> TableInfo:
    """Read the parent's partition key, columns and partitions (PermanentError if unusable)."""
    row = conn.execute(
        """
        SELECT t.oid IS NOT NULL, p.partstrat, p.partnatts, a.attname,
               format_type(a.atttypid, a.atttypmod)
        FROM (SELECT to_regclass(quote_ident(%s)) AS oid) AS t
        LEFT JOIN pg_partitioned_table p ON p.partrelid = t.oid
        LEFT JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
        """,
        (spec.table,),
    ).fetchone()
    assert row is not None  # the FROM clause always yields one row
    exists, strategy, key_count, key_column, key_type = row
    if not exists:
        raise PermanentError(f"table {spec.table!r} does not exist (run `jobctl migrate`)")
    if strategy != "r" or key_count != 1 or key_column != spec.column:
        raise PermanentError(
            f"table {spec.table!r} is not partitioned BY RANGE ({spec.column}) "
            "(JOBS_PARTITIONS names its range partition key column)"
        )
    bound_format = _BOUND_FORMATS.get(key_type)
    if bound_format is None:
        raise PermanentError(
            f"{spec.table}.{spec.column} is {key_type}: only timestamptz, timestamp and date "
            "partition keys are supported"
        )
    columns = tuple(
        name
        for (name,) in conn.execute(
            """
            SELECT attname FROM pg_attribute
            WHERE attrelid = to_regclass(quote_ident(%s)) AND attnum > 0
              AND NOT attisdropped AND attgenerated = ''
            ORDER BY attnum
            """,
            (spec.table,),
        )
    )
    pending = "i.inhdetachpending" if conn.info.server_version >= PG14 else "false"
    rows = conn.execute(
        sql.SQL(
            """
            SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), {pending}
            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = to_regclass(quote_ident(%s))
            ORDER BY c.relname
            """
        ).format(pending=sql.SQL(pending)),
        (spec.table,),
    ).fetchall()
    partitions = []
    for name, bound, detach_pending in rows:
        parsed = parse_bound(bound)
        if parsed is None:
            partitions.append(
                Partition(name, None, None, is_default=True, detach_pending=bool(detach_pending))
            )
        else:
            partitions.append(
                Partition(name, parsed[0], parsed[1], detach_pending=bool(detach_pending))
            )
    return TableInfo(bound_format, columns, tuple(partitions))


def _count_default_rows(conn: psycopg.Connection[Any], info: TableInfo) -> int:
    default = info.default
    if default is None:
        return 0
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(default.name))
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


# -- ensure ------------------------------------------------------------------------------------


@dataclass(slots=True)
class EnsureResult:
    """What one ``ensure_partitions`` run did to one table."""

    table: str
    created: list[str] = field(default_factory=list)
    #: Rows moved out of the DEFAULT partition into the partitions created.
    moved_rows: int = 0
    #: Rows left in the DEFAULT partition after the run (should be 0; alert otherwise).
    default_rows: int = 0


def ensure_partitions(
    engine: Engine,
    spec: PartitionSpec,
    *,
    clock: Clock = utcnow,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> EnsureResult:
    """Make sure ``spec.table`` has its current partition and ``spec.premake`` more.

    Idempotent: partitions (and ranges covered by partitions under other names) that exist
    are left alone, so a re-run issues no DDL. Runs for one table are serialized by a
    transaction-level advisory lock; everything (creations, rows moved out of DEFAULT) commits
    as one transaction or not at all.

    Raises :class:`PermanentError` when the table is missing or not range-partitioned on
    ``spec.column``, :class:`Retry` on transient errors (lock timeout, lost connection).
    """
    now = clock()
    result = EnsureResult(spec.table)
    with (
        classified(f"ensure partitions of {spec.table}"),
        pg_connect(engine) as conn,
        conn.transaction(),
    ):
        # Wait for another run on this table longer than for a DDL lock: it is doing our job.
        _set_lock_timeout(conn, ADVISORY_WAIT)
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key("partitions", spec.table),))
        _set_lock_timeout(conn, lock_timeout)
        info = _table_info(conn, spec)
        ranged = [p for p in info.partitions if not p.is_default]
        ends = [p.end for p in ranged if p.end is not None]
        planned = planned_ranges(spec, now, last_end=max(ends) if ends else None)
        default = info.default
        if spec.default_partition and default is None:
            _create_default(conn, spec)
            default = Partition(default_partition_name(spec.table), None, None, is_default=True)
        locked_default = False
        for wanted in planned:
            if any(wanted.overlaps(p.start, p.end) for p in ranged):
                continue
            if default is not None and not locked_default:
                # ATTACH takes this lock anyway; taking it first makes the move race-free.
                conn.execute(
                    sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                        sql.Identifier(default.name)
                    )
                )
                locked_default = True
            result.moved_rows += _create_range(conn, spec, info, wanted, default)
            result.created.append(wanted.name)
        info = _table_info(conn, spec) if result.created else info
        result.default_rows = _count_default_rows(conn, info)
    if result.created:
        log.info(
            "partitions_created",
            table=spec.table,
            partitions=result.created,
            moved_rows=result.moved_rows,
        )
    if result.default_rows:
        log.warning(
            "partition_default_has_rows",
            table=spec.table,
            partition=default_partition_name(spec.table),
            rows=result.default_rows,
        )
    return result


def _set_lock_timeout(conn: psycopg.Connection[Any], seconds: float) -> None:
    conn.execute(
        "SELECT set_config('lock_timeout', %s, true)", (f"{max(1, round(seconds * 1000))}ms",)
    )


def _create_default(conn: psycopg.Connection[Any], spec: PartitionSpec) -> None:
    name = sql.Identifier(default_partition_name(spec.table))
    parent = sql.Identifier(spec.table)
    conn.execute(
        sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(
            name, parent
        )
    )
    conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} DEFAULT").format(parent, name))
    log.info(
        "partition_default_created", table=spec.table, partition=default_partition_name(spec.table)
    )


def _create_range(
    conn: psycopg.Connection[Any],
    spec: PartitionSpec,
    info: TableInfo,
    wanted: Range,
    default: Partition | None,
) -> int:
    """Create, fill from DEFAULT, and attach one partition; returns the rows moved."""
    parent = sql.Identifier(spec.table)
    name = sql.Identifier(wanted.name)
    column = sql.Identifier(spec.column)
    lower = sql.Literal(wanted.start.strftime(info.bound_format))
    upper = sql.Literal(wanted.end.strftime(info.bound_format))
    conn.execute(
        sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(
            name, parent
        )
    )
    moved = 0
    if default is not None:
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in info.columns)
        cursor = conn.execute(
            sql.SQL(
                "WITH moved AS (DELETE FROM {default} WHERE {column} >= {lower} AND {column} < "
                "{upper} RETURNING {columns}) INSERT INTO {name} ({columns}) "
                "SELECT {columns} FROM moved"
            ).format(
                default=sql.Identifier(default.name),
                column=column,
                lower=lower,
                upper=upper,
                columns=columns,
                name=name,
            )
        )
        moved = max(cursor.rowcount, 0)
    conn.execute(
        sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
            parent, name, lower, upper
        )
    )
    if moved:
        log.warning(
            "partition_rows_moved_from_default", table=spec.table, partition=wanted.name, rows=moved
        )
    return moved


def ensure_all(
    engine: Engine | None = None, settings: Settings | None = None, clock: Clock = utcnow
) -> list[EnsureResult]:
    """``ensure_partitions`` for every JOBS_PARTITIONS entry (``jobctl migrate``, the demo).

    Stops at the first table that fails (the error says which).
    """
    engine = engine or resources.engine()
    settings = settings or get_settings()
    return [
        ensure_partitions(engine, spec, clock=clock, lock_timeout=settings.partitions_lock_timeout)
        for spec in settings.partitions
    ]


# -- retention ---------------------------------------------------------------------------------


@dataclass(slots=True)
class DropResult:
    """What one ``drop_expired_partitions`` run did to one table."""

    table: str
    dropped: list[str] = field(default_factory=list)
    #: Whether the detaches were ``CONCURRENTLY`` (False: plain, e.g. a DEFAULT partition exists).
    concurrently: bool = False


def drop_expired_partitions(
    engine: Engine,
    spec: PartitionSpec,
    *,
    clock: Clock = utcnow,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> DropResult:
    """Detach then drop the partitions of ``spec.table`` whose upper bound <= now - retention.

    Only ranged partitions are candidates (never DEFAULT, never a range reaching past the
    cutoff). Serialized with ``ensure_partitions`` by the same per-table advisory lock (held
    for the session here: a concurrent detach cannot run inside a transaction). Each
    partition is detached and dropped on its own, so a failure leaves the earlier ones done;
    the next run finishes an interrupted concurrent detach and drops detached leftovers.

    Raises :class:`PermanentError` for an unusable table, :class:`Retry` on transient errors.
    """
    result = DropResult(spec.table)
    cutoff = retention_cutoff(clock(), spec.retention_parts)
    if cutoff is None:
        return result
    key = advisory_key("partitions", spec.table)
    with classified(f"drop expired partitions of {spec.table}"), pg_connect(engine) as conn:
        _set_session_lock_timeout(conn, ADVISORY_WAIT)
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            _set_session_lock_timeout(conn, lock_timeout)
            info = _table_info(conn, spec)
            result.concurrently = conn.info.server_version >= PG14 and info.default is None
            parent = sql.Identifier(spec.table)
            for part in info.partitions:
                if part.is_default or part.end is None or part.end > cutoff:
                    if part.detach_pending:
                        log.warning(
                            "partition_detach_pending", table=spec.table, partition=part.name
                        )
                    continue
                name = sql.Identifier(part.name)
                if part.detach_pending:
                    conn.execute(
                        sql.SQL("ALTER TABLE {} DETACH PARTITION {} FINALIZE").format(parent, name)
                    )
                elif result.concurrently:
                    conn.execute(
                        sql.SQL("ALTER TABLE {} DETACH PARTITION {} CONCURRENTLY").format(
                            parent, name
                        )
                    )
                else:
                    conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent, name))
                conn.execute(sql.SQL("DROP TABLE {}").format(name))
                result.dropped.append(part.name)
                log.info("partition_dropped", table=spec.table, partition=part.name)
            for leftover in _detached_leftovers(conn, spec):
                if leftover.end <= cutoff:
                    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(leftover.name)))
                    result.dropped.append(leftover.name)
                    log.info(
                        "partition_leftover_dropped", table=spec.table, partition=leftover.name
                    )
        finally:
            if not conn.broken:  # a broken connection's session (and lock) is gone anyway
                with suppress(psycopg.Error):
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
    return result


def _set_session_lock_timeout(conn: psycopg.Connection[Any], seconds: float) -> None:
    conn.execute(
        "SELECT set_config('lock_timeout', %s, false)", (f"{max(1, round(seconds * 1000))}ms",)
    )


def _detached_leftovers(conn: psycopg.Connection[Any], spec: PartitionSpec) -> list[Range]:
    """Plain tables named like ``spec.table``'s partitions (in its schema) but attached to none."""
    rows = conn.execute(
        """
        SELECT c.relname FROM pg_class c
        WHERE c.relkind = 'r' AND NOT c.relispartition
          AND c.relnamespace = (SELECT relnamespace FROM pg_class
                                WHERE oid = to_regclass(quote_ident(%s)))
          AND left(c.relname, length(%s) + 2) = %s || '_p'
        """,
        (spec.table, spec.table, spec.table),
    ).fetchall()
    found = (name_range(spec, name) for (name,) in rows)
    return [r for r in found if r is not None]


# -- metrics -----------------------------------------------------------------------------------


def spec_for(table: str, settings: Settings | None = None) -> PartitionSpec:
    """The JOBS_PARTITIONS entry of ``table``; :class:`PermanentError` naming it if absent."""
    settings = settings or get_settings()
    spec = settings.partition_spec(table)
    if spec is None:
        known = [s.table for s in settings.partitions]
        raise PermanentError(f"table {table!r} is not in JOBS_PARTITIONS (registered: {known})")
    return spec


def default_partition_rows(table: str, *, engine: Engine | None = None) -> int:
    """Rows in ``table``'s DEFAULT partition (0 without one): alert on anything above 0.

    Rows there were inserted outside every partition's range (a missed ``partitions.ensure``
    or bad timestamps); the next ensure moves those whose range it creates.
    """
    spec = spec_for(table)
    with (
        classified(f"count default rows of {table}"),
        pg_connect(_engine_or_default(engine)) as conn,
    ):
        return _count_default_rows(conn, _table_info(conn, spec))


def future_partitions(table: str, *, engine: Engine | None = None, clock: Clock = utcnow) -> int:
    """How many of ``table``'s partitions start after now (alert when below ``premake``)."""
    spec = spec_for(table)
    now = clock()
    with (
        classified(f"count future partitions of {table}"),
        pg_connect(_engine_or_default(engine)) as conn,
    ):
        info = _table_info(conn, spec)
    return sum(1 for p in info.partitions if p.start is not None and p.start > now)


def _engine_or_default(engine: Engine | None) -> Engine:
    return engine if engine is not None else resources.engine()


# -- tasks -------------------------------------------------------------------------------------


def _specs(table: str | None) -> tuple[PartitionSpec, ...]:
    settings = get_settings()
    return (spec_for(table, settings),) if table else settings.partitions


@job(name="partitions.ensure", queue="maintenance", max_attempts=8, retry_base=5.0, retry_cap=300.0)
def ensure(*, table: str | None = None) -> None:
    """Create the current and next ``premake`` partitions of ``table`` (default: every table).

    A table not in JOBS_PARTITIONS is refused (permanent error naming it).
    """
    settings = get_settings()
    for spec in _specs(table):
        ensure_partitions(resources.engine(), spec, lock_timeout=settings.partitions_lock_timeout)


@job(
    name="partitions.drop_expired",
    queue="maintenance",
    max_attempts=8,
    retry_base=5.0,
    retry_cap=300.0,
)
def drop_expired(*, table: str | None = None) -> None:
    """Detach and drop the partitions past retention of ``table`` (default: every table)."""
    settings = get_settings()
    for spec in _specs(table):
        drop_expired_partitions(
            resources.engine(), spec, lock_timeout=settings.partitions_lock_timeout
        )


#: Seconds between scheduled runs of both partition jobs (daily).
SCHEDULE_SECONDS = 86400.0


def schedule_entries(settings: Settings) -> dict[str, dict[str, Any]]:
    """Beat entries: ``partitions.ensure`` and ``partitions.drop_expired``, daily.

    ``partitions.ensure`` should also run once when the system starts (``jobctl migrate`` and
    the demo call :func:`ensure_all`; a beat leader may send it on taking over). No entries
    when JOBS_PARTITIONS is empty.
    """
    if not settings.partitions:
        return {}
    options = {"queue": "maintenance"}
    entries: dict[str, dict[str, Any]] = {
        "partitions.ensure": {
            "task": "partitions.ensure",
            "schedule": SCHEDULE_SECONDS,
            "kwargs": {},
            "options": dict(options),
        }
    }
    if any(spec.retention for spec in settings.partitions):
        entries["partitions.drop_expired"] = {
            "task": "partitions.drop_expired",
            "schedule": SCHEDULE_SECONDS,
            "kwargs": {},
            "options": dict(options),
        }
    return entries
