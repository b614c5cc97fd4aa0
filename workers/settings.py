"""Typed settings: the only reader of ``os.environ`` (every knob is ``JOBS_<NAME>``)."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.errors import ConfigurationError

#: Failpoints a crash test may name in ``JOBS_FAILPOINT``.
FAILPOINTS = frozenset(
    {
        "after_fetch",  # the message is popped, before the worker records it
        "after_side_effect",  # the task body returned, before its key is marked done and acked
        "after_dead_letter",  # the dead-letter row is committed, before the ack
        "buffer_after_claim",  # a write-buffer batch is claimed, before it is written
        "buffer_after_commit",  # a write-buffer batch is committed, before its claim is dropped
    }
)


class TaskKnobs(BaseModel):
    """Per-task overrides, e.g. ``JOBS_TASKS='{"webhooks.deliver": {"max_attempts": 10}}'``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int | None = Field(default=None, ge=1)
    retry_base: float | None = Field(default=None, gt=0)
    retry_cap: float | None = Field(default=None, gt=0)
    time_limit: float | None = Field(default=None, gt=0)


class QueueKnobs(BaseModel):
    """Per-queue flow control, e.g. ``JOBS_QUEUES='{"webhooks": {"high_watermark": 5000}}'``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    high_watermark: int | None = Field(default=None, ge=1)
    low_watermark: int | None = Field(default=None, ge=0)
    max_age: float | None = Field(default=None, gt=0)


#: The knobs of a task without overrides (shared: building a model per job costs ~500 µs).
NO_OVERRIDES = TaskKnobs()


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


class Settings(BaseSettings):
    """Everything the system can be told, with a default and a doc line each."""

    model_config = SettingsConfigDict(env_prefix="JOBS_", extra="ignore", frozen=True)

    #: Redis for our own state (dedup, claims, delayed store, ledgers).
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Celery broker; defaults to ``redis_url``. ``amqp://`` (RabbitMQ) URLs work too.
    broker_url: str | None = None
    #: PostgreSQL (SQLAlchemy URL, psycopg 3 driver).
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    #: ``production`` logs JSON; ``dev`` logs for a terminal.
    env: Literal["production", "dev"] = "dev"
    #: Log level for our loggers.
    log_level: str = "INFO"

    #: Seconds during which a second enqueue of the same idempotency key is a no-op.
    dedup_window: float = Field(default=3600.0, gt=0)
    #: Seconds a completed idempotency key is remembered (re-runs are skipped meanwhile).
    done_retention: float = Field(default=86400.0, gt=0)
    #: A running job's claim lives for its time limit plus this margin (seconds), so it can
    #: never expire while the job legitimately runs; a crashed run's claim expires after it.
    claim_lease_margin: float = Field(default=10.0, gt=0)

    #: Default attempts per job before it is dead-lettered.
    max_attempts: int = Field(default=5, ge=1)
    #: Retry backoff base and cap in seconds (exponential, full jitter).
    retry_base: float = Field(default=1.0, gt=0)
    retry_cap: float = Field(default=30.0, gt=0)
    #: Times a job may kill its worker process before it is dead-lettered.
    worker_lost_max: int = Field(default=3, ge=1)
    #: Default hard time limit per task in seconds (soft limit is 90 % of it).
    time_limit: float = Field(default=300.0, gt=0)
    #: Per-task overrides (JSON object keyed by task name).
    tasks: dict[str, TaskKnobs] = Field(default_factory=dict)
    #: Per-queue flow-control overrides (JSON object keyed by queue name).
    queues: dict[str, QueueKnobs] = Field(default_factory=dict)
    #: Default high watermark (waiting jobs) above which enqueue raises QueueFull.
    high_watermark: int = Field(default=100_000, ge=1)
    #: Enqueue is accepted again below this fraction of the high watermark (hysteresis).
    low_watermark_ratio: float = Field(default=0.8, gt=0, le=1)
    #: Longest an ``on_full="wait"`` enqueue waits for room before raising QueueFull (s).
    enqueue_wait_max: float = Field(default=10.0, gt=0)

    #: Circuit breaker: failures within the window that open it.
    breaker_failures: int = Field(default=5, ge=1)
    #: Circuit breaker: failure ratio (over at least breaker_min_calls calls) that opens it.
    breaker_failure_ratio: float = Field(default=0.5, gt=0, le=1)
    breaker_min_calls: int = Field(default=10, ge=1)
    #: Circuit breaker: the window (s) over which calls are counted.
    breaker_window: float = Field(default=60.0, gt=0)
    #: Circuit breaker: seconds it stays open before letting probes through (half-open).
    breaker_open_seconds: float = Field(default=30.0, gt=0)
    #: Circuit breaker: probes let through while half-open.
    breaker_probes: int = Field(default=3, ge=1)

    #: Adaptive rate limits: factor applied on a 429 (multiplicative decrease).
    throttle_decrease: float = Field(default=0.5, gt=0, lt=1)
    #: Adaptive rate limits: fraction of the declared rate regained per quiet second.
    throttle_recovery: float = Field(default=0.05, gt=0, le=1)

    #: Seconds without a heartbeat after which a consumer's in-flight messages are recovered.
    consumer_dead_after: float = Field(default=30.0, gt=0)
    #: Seconds between housekeeping passes (heartbeat, promotion of due jobs, recovery).
    housekeeping_interval: float = Field(default=0.25, gt=0)
    #: Seconds before a job whose dead-letter write failed (database down) is tried again.
    dead_letter_retry_delay: float = Field(default=5.0, gt=0)

    #: Socket timeouts (s) towards Redis: a frozen Redis fails fast instead of hanging.
    redis_socket_timeout: float = Field(default=1.0, gt=0)
    redis_connect_timeout: float = Field(default=1.0, gt=0)
    #: Extra kombu transport options merged over ours (JSON), e.g. ``{"brpop_timeout": 2}``.
    broker_transport_options: dict[str, Any] = Field(default_factory=dict)
    #: Accept a Redis whose ``maxmemory-policy`` may evict queue keys (tests, caches only).
    allow_volatile_broker: bool = False
    #: SQLAlchemy pool per process (PgBouncer-compatible: no server-side prepared statements).
    db_pool_size: int = Field(default=2, ge=1)
    db_connect_timeout: int = Field(default=3, ge=1)

    #: Extra task modules a worker imports (tests and plugins); the catalogue is fixed.
    extra_task_modules: tuple[str, ...] = ()
    #: Crash-test failpoint: the worker exits (``os._exit``) at this named point.
    failpoint: str | None = None
    #: How many times the failpoint fires across all processes (0 = every time).
    failpoint_limit: int = Field(default=0, ge=0)
    # -- webhooks (jobs.webhooks) ---------------------------------------------------------
    #: Webhook destinations allowed despite the SSRF guard (development and tests only):
    #: host names (``localhost``), addresses (``127.0.0.1``) or networks (``127.0.0.0/8``).
    webhook_allow_hosts: tuple[str, ...] = ()
    #: Total seconds one delivery attempt may take (connect + send + response).
    webhook_timeout: float = Field(default=10.0, gt=0)
    #: Seconds to establish the TCP/TLS connection (bounded by webhook_timeout).
    webhook_connect_timeout: float = Field(default=3.0, gt=0)
    #: Bytes of a receiver's response body read (kept for the delivery record); the rest is
    #: discarded unread.
    webhook_max_response_bytes: int = Field(default=64 * 1024, ge=0)
    #: Keep-alive connections per worker process (the pool is shared by its threads).
    webhook_pool_size: int = Field(default=64, ge=1)
    #: User-Agent header of every delivery.
    webhook_user_agent: str = "jobs-platform-webhooks/0.1 (+https://www.standardwebhooks.com/)"
    #: Destination ports refused although >= 1024 (internal services behind public names).
    webhook_denied_ports: tuple[int, ...] = (
        2375,
        2376,
        2379,
        3306,
        5432,
        5672,
        5984,
        6379,
        8500,
        9200,
        9300,
        11211,
        15672,
        27017,
    )
    #: Seconds between attempts (attempt 1 is immediate): the Standard Webhooks schedule
    #: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h. Its length + 1 is the attempt
    #: budget of a delivery.
    webhook_retry_schedule: tuple[float, ...] = (
        5.0,
        300.0,
        1800.0,
        7200.0,
        18000.0,
        36000.0,
        50400.0,
        72000.0,
        86400.0,
    )
    #: Each delay is multiplied by ``uniform(1 - jitter, 1 + jitter)``.
    webhook_retry_jitter: float = Field(default=0.2, ge=0, lt=1)
    #: Longest Retry-After (s) honoured; a longer one is capped to this.
    webhook_retry_after_cap: float = Field(default=3600.0, gt=0)
    #: Cluster-wide limit per destination host (``100/s``; empty = none). Adapts to 429s.
    webhook_host_rate: str | None = "100/s"
    #: Deliveries to one host allowed back to back.
    webhook_host_burst: int = Field(default=20, ge=1)

    # -- partitions and views (issue 5) ----------------------------------------------------
    #: Range-partitioned tables kept by ``partitions.ensure`` / ``partitions.drop_expired``
    #: (JSON list of {table, column, interval, premake, retention, default_partition}).
    partitions: tuple[PartitionSpec, ...] = DEFAULT_PARTITIONS
    #: Materialized views refreshed by ``views.refresh`` (JSON list of {view, interval,
    #: concurrently, statement_timeout, lock_timeout}).
    views: tuple[ViewSpec, ...] = DEFAULT_VIEWS
    #: ``lock_timeout`` (s) of partition DDL: a busy table fails fast and is retried instead of
    #: queueing every writer behind the DDL's lock request.
    partitions_lock_timeout: float = Field(default=5.0, gt=0)
    #: ``client_connection_check_interval`` (s, PostgreSQL 14+) of maintenance connections: a
    #: REFRESH whose worker died is cancelled (and its lock released) within this interval.
    maintenance_connection_check_interval: float = Field(default=2.0, gt=0)

    # -- write buffers (issue 5) ---------------------------------------------------------
    #: Write buffers (JSON object: name -> {table, columns, conflict_columns, defaults,
    #: generated, batch_size, flush_threshold, flush_interval, max_age, claim_timeout}).
    #: Buffer keys live in Redis until flushed: Redis must run with ``noeviction``.
    buffers: dict[str, BufferSpec] = Field(default_factory=lambda: dict(DEFAULT_BUFFERS))
    #: Seconds one flush job keeps claiming batches before it stops (the rest waits for the
    #: next flush).
    buffer_flush_budget: float = Field(default=20.0, gt=0)
    #: Seconds a worker's final flush may take on warm shutdown.
    buffer_shutdown_flush_timeout: float = Field(default=10.0, gt=0)

    @field_validator("buffers")
    @classmethod
    def _buffer_names(cls, value: dict[str, BufferSpec]) -> dict[str, BufferSpec]:
        bad = sorted(name for name in value if not re.match(BUFFER_NAME_PATTERN, name))
        if bad:
            raise ValueError(f"buffer names must match {BUFFER_NAME_PATTERN}: {bad}")
        return value

    # -- cache warming (issue 5) ---------------------------------------------------------
    #: Cache warmers (JSON object: name -> {key_source, loader, key_template, ttl, ttl_jitter,
    #: stale_while_revalidate, chunk_size, max_concurrency, interval, rate, run_timeout}).
    warmers: dict[str, WarmerSpec] = Field(default_factory=lambda: dict(DEFAULT_WARMERS))
    #: Seconds a per-key load lock lives: a loader that died frees its key after this.
    cache_lock_lease: float = Field(default=30.0, gt=0)
    #: Seconds a caller of ``get_or_load`` waits for another caller's load of the same key
    #: before loading it itself.
    cache_lock_wait: float = Field(default=5.0, gt=0)
    #: Seconds (jittered) a ``cache.load`` job waits when its warmer has no free slot.
    cache_slot_wait: float = Field(default=0.5, gt=0)

    @field_validator("warmers")
    @classmethod
    def _warmer_names(cls, value: dict[str, WarmerSpec]) -> dict[str, WarmerSpec]:
        bad = sorted(name for name in value if not re.match(WARMER_NAME_PATTERN, name))
        if bad:
            raise ValueError(f"warmer names must match {WARMER_NAME_PATTERN}: {bad}")
        return value

    # -- beat (issue 5) ------------------------------------------------------------------
    #: Seconds a beat leader's lease lasts: a standby takes over at most this long (plus
    #: ``beat_standby_poll``) after the leader died. The leader renews it every third of it.
    beat_lease: float = Field(default=12.0, ge=1)
    #: Seconds between a standby beat's attempts to take the lease.
    beat_standby_poll: float = Field(default=1.0, gt=0)
    #: Families whose registries feed the schedule (JSON list; ``[]``: only beat_schedule).
    beat_families: tuple[BeatFamily, ...] = BEAT_FAMILIES
    #: Extra periodic jobs (JSON object: name -> {task, every | cron, kwargs, options}).
    beat_schedule: dict[str, BeatEntrySpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _standby_polls_within_lease(self) -> Settings:
        if self.beat_standby_poll >= self.beat_lease:
            raise ValueError("beat_standby_poll must be shorter than beat_lease")
        return self

    #: Flower basic auth ``user:password``; Flower refuses to start without it.
    flower_basic_auth: str | None = None

    # -- partitions and views (issue 5): registry checks and look-ups ------------------------
    @field_validator("partitions")
    @classmethod
    def _unique_partition_tables(
        cls, value: tuple[PartitionSpec, ...]
    ) -> tuple[PartitionSpec, ...]:
        names = [spec.table for spec in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"table listed more than once: {duplicates}")
        return value

    @field_validator("views")
    @classmethod
    def _unique_views(cls, value: tuple[ViewSpec, ...]) -> tuple[ViewSpec, ...]:
        names = [spec.view for spec in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"view listed more than once: {duplicates}")
        return value

    def partition_spec(self, table: str) -> PartitionSpec | None:
        """The JOBS_PARTITIONS entry of ``table`` (None when it is not registered)."""
        return next((spec for spec in self.partitions if spec.table == table), None)

    def view_spec(self, view: str) -> ViewSpec | None:
        """The JOBS_VIEWS entry of ``view`` (None when it is not registered)."""
        return next((spec for spec in self.views if spec.view == view), None)

    @field_validator("failpoint")
    @classmethod
    def _known_failpoint(cls, value: str | None) -> str | None:
        if value and value not in FAILPOINTS:
            raise ValueError(f"unknown failpoint {value!r}; known: {sorted(FAILPOINTS)}")
        return value or None

    @field_validator("webhook_host_rate")
    @classmethod
    def _rate_or_none(cls, value: str | None) -> str | None:
        if not value:
            return None
        from workers.ratelimits import parse_rate  # noqa: PLC0415 - ratelimits imports settings

        try:
            return parse_rate(value, field="webhook_host_rate").spec
        except ValueError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _cap_not_below_base(self) -> Settings:
        if self.retry_cap < self.retry_base:
            raise ValueError("retry_cap must be >= retry_base")
        return self

    @model_validator(mode="after")
    def _one_redis(self) -> Settings:
        # Queues, the delayed store, claims and dedup markers must live on one Redis: admission
        # writes queue lists through redis_url while workers consume from the broker URL.
        if self.broker_url and self.broker_is_redis and self.broker_url != self.redis_url:
            raise ValueError(
                "broker_url: a Redis broker must be JOBS_REDIS_URL itself (leave "
                "JOBS_BROKER_URL unset); only a non-Redis broker (amqp://) may differ"
            )
        return self

    @property
    def effective_broker_url(self) -> str:
        """The broker URL Celery uses."""
        return self.broker_url or self.redis_url

    @property
    def broker_is_redis(self) -> bool:
        """True when the broker speaks the Redis protocol (our reliable transport applies)."""
        return self.effective_broker_url.startswith(("redis://", "rediss://", "unix://"))

    def queue_knobs(self, queue: str) -> tuple[int, int, float | None]:
        """(high watermark, low watermark, max age) of ``queue`` with defaults applied."""
        knobs = self.queues.get(queue)
        high = (knobs.high_watermark if knobs else None) or self.high_watermark
        low = knobs.low_watermark if knobs and knobs.low_watermark is not None else None
        if low is None:
            low = int(high * self.low_watermark_ratio)
        return high, min(low, high), knobs.max_age if knobs else None

    def knobs_for(self, task_name: str) -> TaskKnobs:
        """The per-task overrides for ``task_name`` (empty when none are set)."""
        return self.tasks.get(task_name) or NO_OVERRIDES


def load_settings() -> Settings:
    """Build settings from the environment, turning a validation error into a clear message."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"JOBS_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigurationError(f"invalid settings: {problems}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built once."""
    return load_settings()
