"""Materialized-view refresh: single-flight, bounded, recorded (registry: JOBS_VIEWS).

Guarantees of :func:`refresh_view`:

- **Single-flight per view.** The refresh runs inside a transaction holding
  ``pg_try_advisory_xact_lock(<key of the view>)``. A second trigger while one runs does not
  wait: it is *skipped* (logged as ``view_refresh_skipped``, counted in ``skips``) and returns
  a ``skipped`` result; the running refresh already produces what it asked for. Two refreshes
  of one view therefore never overlap, and triggers never pile up behind a slow one.
- **Bounded.** ``SET LOCAL statement_timeout`` / ``lock_timeout`` come from the view's entry.
  ``SET LOCAL client_connection_check_interval`` (PostgreSQL 14+,
  ``JOBS_MAINTENANCE_CONNECTION_CHECK_INTERVAL``) makes the server notice a worker that died
  mid-refresh (SIGKILL, OOM, lost host) and cancel the REFRESH within that interval, which
  releases the lock: the next trigger can refresh instead of being skipped until the orphan
  finishes. Everything is transaction-scoped (PgBouncer transaction pooling is fine).
- **Concurrent when possible.** ``REFRESH ... CONCURRENTLY`` (readers never blocked) when the
  entry asks for it, the view is populated and it has a unique index on plain columns without
  a WHERE clause. A view never populated gets a plain refresh (CONCURRENTLY is impossible
  then); a populated view without such an index is a clear permanent error. ``concurrently:
  false`` always refreshes plainly (faster: 2-5x; readers wait meanwhile).
- **Classified errors.** Transient ones (lock or statement timeout, lost connection,
  serialization failure) raise :class:`workers.errors.Retry`; an undefined view or missing
  privilege raises :class:`workers.errors.PermanentError`.
- **Recorded.** ``view_refresh_state`` keeps, per view, the last start, last success, its
  duration, whether it was concurrent, the last error and counters. Staleness is
  ``now - last_success_at`` (:func:`staleness`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
import structlog
from psycopg import sql
from sqlalchemy import Engine, func, select
from sqlalchemy.dialects.postgresql import insert

from jobs.maintenance import PG14, Clock, advisory_key, classified, pg_connect, utcnow
from workers import resources
from workers.db import view_refresh_state
from workers.errors import PermanentError
from workers.registries import ViewSpec
from workers.settings import Settings, get_settings
from workers.task import job

log = structlog.get_logger("jobs.views")

#: Default ``client_connection_check_interval`` (seconds) when the caller gives none.
DEFAULT_CHECK_INTERVAL = 2.0
#: Longest error text kept in ``view_refresh_state.last_error``.
ERROR_CHARS = 2000


@dataclass(frozen=True, slots=True)
class RefreshResult:
    """The outcome of one :func:`refresh_view` call."""

    view: str
    status: Literal["refreshed", "skipped"]
    concurrently: bool = False
    duration_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class ViewState:
    """One ``view_refresh_state`` row."""

    view: str
    last_started_at: datetime | None
    last_success_at: datetime | None
    last_duration_ms: float | None
    last_concurrently: bool | None
    last_error: str | None
    last_error_at: datetime | None
    refreshes: int
    skips: int
    failures: int


def spec_for(view: str, settings: Settings | None = None) -> ViewSpec:
    """The JOBS_VIEWS entry of ``view``; :class:`PermanentError` naming it if absent."""
    settings = settings or get_settings()
    spec = settings.view_spec(view)
    if spec is None:
        known = [s.view for s in settings.views]
        raise PermanentError(f"view {view!r} is not in JOBS_VIEWS (registered: {known})")
    return spec


def application_name(view: str) -> str:
    """The refresh connection's ``application_name``: ``jobs-refresh:<view>:<worker pid>``.

    Shows in ``pg_stat_activity`` which worker process runs (or ran) a refresh.
    """
    return f"jobs-refresh:{view}:{os.getpid()}"


def refresh_view(
    engine: Engine,
    spec: ViewSpec,
    *,
    clock: Clock = utcnow,
    check_interval: float = DEFAULT_CHECK_INTERVAL,
) -> RefreshResult:
    """Refresh ``spec.view`` once, unless a refresh of it is already running (then skip).

    See the module docstring for the guarantees. Raises :class:`PermanentError` when the view
    does not exist, is not a materialized view, or needs a unique index for CONCURRENTLY;
    :class:`workers.errors.Retry` on transient errors. Failures are recorded before raising.
    """
    name = spec.view
    try:
        with (
            classified(f"refresh {name}"),
            pg_connect(engine, application_name=application_name(name)) as conn,
            conn.transaction(),
        ):
            if conn.info.server_version >= PG14:
                _set_local(conn, "client_connection_check_interval", check_interval)
            locked = conn.execute(
                "SELECT pg_try_advisory_xact_lock(%s)", (advisory_key("views", name),)
            ).fetchone()
            if not (locked and locked[0]):
                _record(engine, name, skips=view_refresh_state.c.skips + 1)
                log.info("view_refresh_skipped", view=name, reason="already_running")
                return RefreshResult(name, "skipped")
            concurrently = _choose_mode(conn, spec)
            _set_local(conn, "statement_timeout", spec.statement_timeout)
            _set_local(conn, "lock_timeout", spec.lock_timeout)
            _record(engine, name, last_started_at=clock())
            started = time.perf_counter()
            conn.execute(
                sql.SQL("REFRESH MATERIALIZED VIEW {}{}").format(
                    sql.SQL("CONCURRENTLY ") if concurrently else sql.SQL(""),
                    sql.Identifier(name),
                )
            )
        duration_ms = (time.perf_counter() - started) * 1000
    except Exception as exc:
        _record_failure(engine, name, clock(), exc)
        raise
    _record(
        engine,
        name,
        last_success_at=clock(),
        last_duration_ms=duration_ms,
        last_concurrently=concurrently,
        refreshes=view_refresh_state.c.refreshes + 1,
    )
    log.info(
        "view_refreshed", view=name, concurrently=concurrently, duration_ms=round(duration_ms, 1)
    )
    return RefreshResult(name, "refreshed", concurrently, duration_ms)


def _set_local(conn: psycopg.Connection[Any], setting: str, seconds: float) -> None:
    conn.execute("SELECT set_config(%s, %s, true)", (setting, f"{max(1, round(seconds * 1000))}ms"))


def _choose_mode(conn: psycopg.Connection[Any], spec: ViewSpec) -> bool:
    """True for CONCURRENTLY; raises PermanentError when the view cannot be refreshed."""
    row = conn.execute(
        """
        SELECT c.relkind, c.relispopulated,
               EXISTS (SELECT 1 FROM pg_index i
                       WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid
                         AND i.indpred IS NULL AND i.indexprs IS NULL)
        FROM pg_class c WHERE c.oid = to_regclass(quote_ident(%s))
        """,
        (spec.view,),
    ).fetchone()
    if row is None:
        raise PermanentError(f"materialized view {spec.view!r} does not exist")
    kind, populated, has_unique_index = row
    if kind != "m":
        raise PermanentError(f"{spec.view!r} is not a materialized view")
    if not populated:
        log.info("view_first_population", view=spec.view)
        return False
    if not spec.concurrently:
        return False
    if not has_unique_index:
        raise PermanentError(
            f"cannot refresh {spec.view!r} CONCURRENTLY: it needs a UNIQUE index on plain "
            f"columns without WHERE (CREATE UNIQUE INDEX ... ON {spec.view} (...)), or set "
            '"concurrently": false for it in JOBS_VIEWS'
        )
    return True


def _record(engine: Engine, view: str, **values: Any) -> None:
    """Upsert ``values`` into the view's state row (expressions may use the old row)."""
    initial = {
        key: (1 if key in {"refreshes", "skips", "failures"} else value)
        for key, value in values.items()
    }
    statement = insert(view_refresh_state).values(view=view, **initial)
    statement = statement.on_conflict_do_update(index_elements=["view"], set_=values)
    with engine.begin() as conn:
        conn.execute(statement)


def _record_failure(engine: Engine, view: str, at: datetime, exc: BaseException) -> None:
    """Best effort: the database may be the thing that failed."""
    cause = exc.__cause__ or exc
    text = f"{type(cause).__name__}: {cause}".strip()[:ERROR_CHARS]
    try:
        _record(
            engine,
            view,
            last_error=text,
            last_error_at=at,
            failures=view_refresh_state.c.failures + 1,
        )
    except Exception as record_exc:
        log.warning("view_refresh_state_not_recorded", view=view, error=type(record_exc).__name__)
    log.warning("view_refresh_failed", view=view, error=text[:300])


def view_state(view: str, *, engine: Engine | None = None) -> ViewState | None:
    """The recorded refresh state of ``view`` (None before its first refresh or skip)."""
    engine = engine if engine is not None else resources.engine()
    with engine.connect() as conn:
        row = conn.execute(
            select(view_refresh_state).where(view_refresh_state.c.view == view)
        ).first()
    return None if row is None else ViewState(**row._asdict())


def staleness(view: str, *, engine: Engine | None = None, clock: Clock = utcnow) -> float | None:
    """Seconds since ``view``'s last successful refresh; None if it never succeeded."""
    engine = engine if engine is not None else resources.engine()
    with engine.connect() as conn:
        last = conn.execute(
            select(func.max(view_refresh_state.c.last_success_at)).where(
                view_refresh_state.c.view == view
            )
        ).scalar()
    return None if last is None else (clock() - last).total_seconds()


@job(
    name="views.refresh",
    queue="maintenance",
    time_limit=3600,
    max_attempts=3,
    retry_base=5.0,
    retry_cap=60.0,
)
def refresh(*, view: str) -> None:
    """Refresh one registered materialized view (skipped if a refresh of it is running).

    A view not in JOBS_VIEWS is refused (permanent error naming it): the name never reaches
    SQL unless an operator registered it.
    """
    settings = get_settings()
    refresh_view(
        resources.engine(),
        spec_for(view, settings),
        check_interval=settings.maintenance_connection_check_interval,
    )


def schedule_entries(settings: Settings) -> dict[str, dict[str, Any]]:
    """Beat entries: one ``views.refresh`` per JOBS_VIEWS entry, each at its own interval."""
    return {
        f"views.refresh:{spec.view}": {
            "task": "views.refresh",
            "schedule": float(spec.interval),
            "kwargs": {"view": spec.view},
            "options": {"queue": "maintenance"},
        }
        for spec in settings.views
    }
