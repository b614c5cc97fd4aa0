"""Typed settings: the only reader of ``os.environ`` (every knob is ``JOBS_<NAME>``).

The models of the registries' entries (``JOBS_PARTITIONS``, ``JOBS_VIEWS``, ``JOBS_BUFFERS``,
``JOBS_WARMERS``, ``JOBS_BEAT_SCHEDULE``) and their defaults live in :mod:`workers.registries`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.errors import ConfigurationError
from workers.registries import (
    BEAT_FAMILIES,
    BUFFER_NAME_PATTERN,
    DEFAULT_BUFFERS,
    DEFAULT_PARTITIONS,
    DEFAULT_VIEWS,
    DEFAULT_WARMERS,
    WARMER_NAME_PATTERN,
    BeatEntrySpec,
    BeatFamily,
    BufferSpec,
    PartitionSpec,
    ViewSpec,
    WarmerSpec,
    check_names,
    check_unique,
)

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
    #: Jobs per envelope for ``enqueue_many`` (1 = one message per job).
    envelope_size: int | None = Field(default=None, ge=1, le=10_000)


class QueueKnobs(BaseModel):
    """Per-queue flow control, e.g. ``JOBS_QUEUES='{"webhooks": {"high_watermark": 5000}}'``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    high_watermark: int | None = Field(default=None, ge=1)
    low_watermark: int | None = Field(default=None, ge=0)
    max_age: float | None = Field(default=None, gt=0)


#: The knobs of a task without overrides (shared: building a model per job costs ~500 µs).
NO_OVERRIDES = TaskKnobs()


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
    #: ``enqueue_many`` packs up to this many jobs of one task into one broker message (an
    #: envelope, see ``workers.envelopes``); 1 turns envelopes off. Per task: ``@job(
    #: envelope_size=...)`` or ``JOBS_TASKS``.
    envelope_size: int = Field(default=100, ge=1, le=10_000)
    #: ... and at most this many bytes of job arguments per envelope.
    envelope_bytes: int = Field(default=256 * 1024, ge=1024)
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
        check_names(value, BUFFER_NAME_PATTERN, "buffer")
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
        check_names(value, WARMER_NAME_PATTERN, "warmer")
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

    # -- flower (issue 6) --------------------------------------------------------------------
    #: Secret signing Flower's cookies; unset: a random one per start (sessions do not
    #: survive a restart). Never logged, never on a command line.
    flower_cookie_secret: str | None = None

    # -- exporter (issue 6) --------------------------------------------------------------
    #: Dead letters exported per (task, fingerprint): the largest groups only (bounded series).
    exporter_dead_letter_top: int = Field(default=20, ge=1, le=1000)
    #: Seconds one exporter SQL statement may run (a slow database fails its source, not the
    #: scrape).
    exporter_statement_timeout: float = Field(default=5.0, gt=0)

    # -- health (issue 6) ----------------------------------------------------------------
    #: Seconds without a successful fetch after which a live consumer with free prefetch
    #: slots is stuck (``jobctl health`` fails, the worker logs ``consumer_stuck``). An idle
    #: consumer polls every ``brpop_timeout`` (1 s). The default is above kombu's own BRPOP
    #: check (a half-open connection is dropped and reconnected within ~51 s): what is still
    #: silent after 60 s does not heal by itself.
    health_stuck_after: float = Field(default=60.0, gt=0)

    # -- partitions and views (issue 5): registry checks and look-ups ------------------------
    @field_validator("partitions")
    @classmethod
    def _unique_partition_tables(
        cls, value: tuple[PartitionSpec, ...]
    ) -> tuple[PartitionSpec, ...]:
        check_unique([spec.table for spec in value], "table")
        return value

    @field_validator("views")
    @classmethod
    def _unique_views(cls, value: tuple[ViewSpec, ...]) -> tuple[ViewSpec, ...]:
        check_unique([spec.view for spec in value], "view")
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
