"""The registries of issue 5: what each entry may contain, and the demo domain's defaults.

``Settings`` (:mod:`workers.settings`) holds one registry per task family: ``JOBS_PARTITIONS``
(:class:`PartitionSpec`), ``JOBS_VIEWS`` (:class:`ViewSpec`), ``JOBS_BUFFERS``
(:class:`BufferSpec`), ``JOBS_WARMERS`` (:class:`WarmerSpec`) and ``JOBS_BEAT_SCHEDULE``
(:class:`BeatEntrySpec`). Each model validates one entry; :func:`check_names` and
:func:`check_unique` validate a registry as a whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# -- checks of a whole registry (used by Settings' validators) --------------------------------


def check_names(names: Iterable[str], pattern: str, what: str) -> None:
    """Raise ``ValueError`` listing the ``names`` that do not match ``pattern``.

    ``what`` names the registry's entries in the message (``"buffer"``, ``"warmer"``).
    """
    bad = sorted(name for name in names if not re.match(pattern, name))
    if bad:
        raise ValueError(f"{what} names must match {pattern}: {bad}")


def check_unique(names: Sequence[str], what: str) -> None:
    """Raise ``ValueError`` listing the ``names`` given more than once.

    ``what`` names the registry's entries in the message (``"table"``, ``"view"``).
    """
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{what} listed more than once: {duplicates}")


# -- partitions and views (issue 5) ----------------------------------------------------------
#: A lowercase SQL identifier (quoted with psycopg.sql.Identifier anyway; this keeps names sane).
IDENTIFIER_PATTERN = r"^[a-z_][a-z0-9_]*$"
#: Retention: ``<n> day(s)|week(s)|month(s)|year(s)``, e.g. ``"24 months"``, ``"90 days"``.
RETENTION_PATTERN = r"^\s*[0-9]+\s*(day|week|month|year)s?\s*$"


class PartitionSpec(BaseModel):
    """One range-partitioned table kept by ``jobs.partitions`` (an entry of JOBS_PARTITIONS)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The partitioned parent (``events``); partitions are ``<table>_pYYYYMM[DD]``, at most 50
    #: characters so partition names fit PostgreSQL's 63.
    table: str = Field(pattern=IDENTIFIER_PATTERN, max_length=50)
    #: The range partition key column (timestamptz, timestamp or date).
    column: str = Field(pattern=IDENTIFIER_PATTERN, max_length=63)
    #: One partition per UTC day, ISO week (Monday) or calendar month.
    interval: Literal["day", "week", "month"] = "month"
    #: Partitions created ahead of the current one.
    premake: int = Field(default=3, ge=0, le=366)
    #: Partitions whose upper bound is older than this are detached and dropped (None: never).
    retention: str | None = Field(default=None, pattern=RETENTION_PATTERN)
    #: Keep a DEFAULT partition catching rows outside every range (alert when it holds rows).
    default_partition: bool = False

    @property
    def retention_parts(self) -> tuple[int, str] | None:
        """``(count, unit)`` of the retention, unit in day/week/month/year; None: keep all."""
        if self.retention is None:
            return None
        text = self.retention.strip().rstrip("s")
        digits = "".join(ch for ch in text if ch.isdigit())
        return int(digits), text[len(digits) :].strip()


class ViewSpec(BaseModel):
    """One materialized view refreshed by ``jobs.views`` (an entry of JOBS_VIEWS)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The materialized view's name.
    view: str = Field(pattern=IDENTIFIER_PATTERN, max_length=63)
    #: Seconds between scheduled refreshes.
    interval: float = Field(default=300.0, gt=0)
    #: Refresh CONCURRENTLY (readers never blocked; needs a unique index; 2-5x slower).
    concurrently: bool = True
    #: ``SET LOCAL statement_timeout`` of the refresh (seconds; below the ``views.refresh``
    #: task's 3600 s time limit, so the database, not the worker's hard limit, ends it).
    statement_timeout: float = Field(default=600.0, gt=0, le=3000)
    #: ``SET LOCAL lock_timeout`` of the refresh (seconds).
    lock_timeout: float = Field(default=10.0, gt=0)


#: The demo domain's partitioned table (migration 0004).
DEFAULT_PARTITIONS = (
    PartitionSpec(
        table="events",
        column="created_at",
        interval="month",
        premake=3,
        retention="24 months",
        default_partition=True,
    ),
)
#: The demo domain's materialized view (migration 0004), every 5 minutes.
DEFAULT_VIEWS = (
    ViewSpec(
        view="mv_daily_stats",
        interval=300.0,
        concurrently=True,
        statement_timeout=600.0,
        lock_timeout=10.0,
    ),
)


# -- write buffers (issue 5) -----------------------------------------------------------------
#: Column types a write buffer may declare (SQL type names, used verbatim in the flush's
#: ``json_to_record`` column list, hence this allow-list). A ``?`` suffix (``"text?"``) makes
#: the column optional: it may be absent or null.
BUFFER_COLUMN_TYPES = frozenset(
    {
        "text",
        "uuid",
        "smallint",
        "integer",
        "bigint",
        "boolean",
        "real",
        "double precision",
        "numeric",
        "json",
        "jsonb",
        "timestamptz",
        "date",
    }
)
#: A buffer name: it appears in Redis keys, wire kwargs and metrics labels.
BUFFER_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class BufferSpec(BaseModel):
    """One write buffer (an entry of JOBS_BUFFERS): rows queued in Redis, flushed in batches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The target table (``events``; partitioned tables welcome).
    table: str = Field(pattern=IDENTIFIER_PATTERN, max_length=63)
    #: Column name -> type (:data:`BUFFER_COLUMN_TYPES`, ``?`` suffix: optional). A row with
    #: another column, without a required one, or with a value of the wrong JSON type is
    #: refused at append.
    columns: dict[str, str] = Field(min_length=1)
    #: ``ON CONFLICT (<these>) DO NOTHING``: a unique key that makes re-flushing a row after a
    #: crash a no-op (empty: ``ON CONFLICT DO NOTHING`` on any unique constraint).
    conflict_columns: tuple[str, ...] = ()
    #: Values used for absent columns (``{"payload": {}}``).
    defaults: dict[str, Any] = Field(default_factory=dict)
    #: Columns filled at append when absent: ``uuid4`` (a fresh UUID) or ``utcnow`` (the append
    #: time), so a row keeps the same key however often it is flushed.
    generated: dict[str, Literal["uuid4", "utcnow"]] = Field(default_factory=dict)
    #: Rows written per transaction (one COPY + one INSERT ... SELECT).
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    #: Buffer length at which an append enqueues one flush job.
    flush_threshold: int = Field(default=5000, ge=1)
    #: Seconds between scheduled (beat) flushes.
    flush_interval: float = Field(default=5.0, gt=0)
    #: A batch smaller than ``batch_size`` is written only once its oldest row is this old
    #: (seconds; 0: whenever a flush runs). Full batches are always written.
    max_age: float = Field(default=0.0, ge=0)
    #: Seconds a flush may hold a claimed batch; after that a crashed flush's rows are pushed
    #: back to the buffer by the next flush (a live slow one only causes an idempotent rewrite).
    #: Each statement of a flush is bounded by half of it (``statement_timeout``).
    claim_timeout: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> BufferSpec:
        for name, kind in self.columns.items():
            if not re.match(IDENTIFIER_PATTERN, name) or len(name) > 63:  # noqa: PLR2004
                raise ValueError(f"column {name!r}: not a lowercase SQL identifier")
            if kind.removesuffix("?") not in BUFFER_COLUMN_TYPES:
                raise ValueError(
                    f"column {name!r}: unknown type {kind!r}; known: {sorted(BUFFER_COLUMN_TYPES)}"
                )
        for field, names in (
            ("conflict_columns", self.conflict_columns),
            ("defaults", self.defaults),
            ("generated", self.generated),
        ):
            unknown = sorted(set(names) - set(self.columns))
            if unknown:
                raise ValueError(f"{field}: {unknown} are not declared columns")
        for name, how in self.generated.items():
            kind = self.columns[name].removesuffix("?")
            wanted = ("uuid", "text") if how == "uuid4" else ("timestamptz",)
            if kind not in wanted:
                raise ValueError(f"generated {name!r}: {how} needs a {' or '.join(wanted)} column")
        return self


#: The demo domain's buffer: ``events`` (migration 0004), deduplicated on its primary key.
DEFAULT_BUFFERS: dict[str, BufferSpec] = {
    "events": BufferSpec(
        table="events",
        columns={
            "id": "uuid",
            "user_id": "bigint",
            "event_type": "text",
            "payload": "jsonb",
            "created_at": "timestamptz",
        },
        conflict_columns=("id", "created_at"),
        defaults={"payload": {}},
        generated={"id": "uuid4", "created_at": "utcnow"},
    )
}


# -- cache warming (issue 5) -----------------------------------------------------------------
#: A warmer name: it appears in Redis keys, wire kwargs and beat entry names.
WARMER_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


def template_fields(template: str) -> tuple[str, ...]:
    """The named fields of a key template (``"stats:daily:{day}"`` -> ``("day",)``).

    Raises ``ValueError`` for positional or attribute/index fields and conversions.
    """
    import string  # noqa: PLC0415 - only templates need it

    fields: list[str] = []
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"key template {template!r}: use plain named fields like {{day}}")
        if name not in fields:
            fields.append(name)
    return tuple(fields)


class WarmerSpec(BaseModel):
    """One cache warmer (an entry of JOBS_WARMERS): which keys, how to load them, how fresh.

    ``key_source`` and ``loader`` are each a dotted ``"module:function"`` or SQL text. The
    key source lists a run's keys as parameter dicts (SQL: one row per key, columns named as
    the template's fields). The loader gets one chunk: a function is called with
    ``keys=[params, ...]`` and returns ``{cache_key: value}`` or ``(params, value)`` pairs; SQL
    runs with each template field bound to the chunk's list of values (``%(day)s``) and
    returns those fields plus a ``value`` column. SQL runs with psycopg parameters: write a
    literal ``%`` as ``%%``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Lists the keys of a run (dotted function or SQL).
    key_source: str = Field(min_length=1)
    #: Loads one chunk of keys (dotted function or SQL).
    loader: str = Field(min_length=1)
    #: The cache key of one item, e.g. ``"stats:daily:{day}"``.
    key_template: str = Field(min_length=1, max_length=400)
    #: Seconds a warmed value is fresh (the longest it is served as fresh).
    ttl: float = Field(default=300.0, gt=0)
    #: Up to this fraction of the TTL is randomly taken off each key's TTL, so keys warmed
    #: together do not expire together (the TTL itself is never exceeded).
    ttl_jitter: float = Field(default=0.1, ge=0, lt=1)
    #: Seconds a value is kept after its TTL, served as stale by ``get_or_load`` meanwhile.
    stale_while_revalidate: float = Field(default=60.0, ge=0)
    #: Keys per ``cache.load`` job.
    chunk_size: int = Field(default=500, ge=1, le=100_000)
    #: ``cache.load`` jobs of this warmer running at once across the cluster.
    max_concurrency: int = Field(default=2, ge=1)
    #: Seconds between scheduled runs (default: 80 % of the TTL, so values never go stale).
    interval: float | None = Field(default=None, gt=0)
    #: Cluster-wide start rate of this warmer's chunk jobs, e.g. ``"20/s"`` (None: unlimited).
    rate: str | None = None
    #: Longest a run may take; a run older than this no longer blocks the next one
    #: (default: twice the interval).
    run_timeout: float | None = Field(default=None, gt=0)

    @field_validator("key_template")
    @classmethod
    def _valid_template(cls, value: str) -> str:
        template_fields(value)
        return value

    @property
    def effective_interval(self) -> float:
        """Seconds between scheduled runs."""
        return self.interval if self.interval is not None else self.ttl * 0.8

    @property
    def effective_run_timeout(self) -> float:
        """Seconds after which a run that never finished stops blocking the next one."""
        return self.run_timeout if self.run_timeout is not None else self.effective_interval * 2


#: The demo warmer: the last 90 days of ``mv_daily_stats`` (migration 0004), one key per day.
DEFAULT_WARMERS: dict[str, WarmerSpec] = {
    "daily_stats": WarmerSpec(
        key_source=(
            "SELECT day::text AS day FROM mv_daily_stats "
            "WHERE day >= (now() AT TIME ZONE 'UTC')::date - 90 ORDER BY day"
        ),
        loader=(
            "SELECT day::text AS day, jsonb_build_object("
            "'day', day, 'unique_users', unique_users, 'total_events', total_events, "
            "'purchases', purchases, 'revenue', revenue, 'signups', signups, "
            "'conversion_rate', conversion_rate) AS value "
            "FROM mv_daily_stats WHERE day = ANY(%(day)s::date[])"
        ),
        key_template="stats:daily:{day}",
        ttl=300.0,
        ttl_jitter=0.1,
        stale_while_revalidate=60.0,
        chunk_size=500,
        max_concurrency=2,
    )
}


# -- beat (issue 5) ---------------------------------------------------------------------------
#: Task families whose registries feed the beat schedule (``jobs.<family>.schedule_entries``).
BeatFamily = Literal["partitions", "views", "buffers", "cache"]
#: Every family, in schedule order.
BEAT_FAMILIES: tuple[BeatFamily, ...] = ("partitions", "views", "buffers", "cache")


class BeatEntrySpec(BaseModel):
    """An extra beat entry (JOBS_BEAT_SCHEDULE): a job fired every N seconds or on a crontab."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Wire name of the task (a ``@job``).
    task: str = Field(min_length=1)
    #: Seconds between runs (give ``every`` or ``cron``).
    every: float | None = Field(default=None, gt=0)
    #: Five-field crontab in UTC, ``"minute hour day-of-month month day-of-week"``.
    cron: str | None = None
    #: Keyword arguments of the job (JSON-native).
    kwargs: dict[str, Any] = Field(default_factory=dict)
    #: Enqueue options (``queue``, ``priority``, ``on_full``, ``wait_max``).
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_schedule(self) -> BeatEntrySpec:
        if (self.every is None) == (self.cron is None):
            raise ValueError("give exactly one of every (seconds) or cron")
        if self.cron is not None and len(self.cron.split()) != 5:  # noqa: PLR2004
            raise ValueError(f"cron {self.cron!r}: five fields expected (m h dom mon dow)")
        return self
