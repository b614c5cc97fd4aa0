"""Prometheus exporter for what Flower does not show (``jobctl exporter``).

Flower's own ``/metrics`` covers task events (received, succeeded, runtime). This exporter reads
the state our runtime keeps in Redis and PostgreSQL, on every scrape (a custom collector: no
background thread, no cache, nothing to go stale):

========================  =====================================================================
source                    metrics (all names start with ``jobs_``)
========================  =====================================================================
``queues``                ``queue_depth``, ``queue_oldest_age_seconds``, ``queue_drain_rate``,
                          ``queue_paused`` per queue
``delayed``               ``delayed_jobs``, ``delayed_due_jobs``
``consumers``             ``inflight_jobs``, ``workers_alive``
``workers``               ``worker_last_consume_timestamp_seconds``,
                          ``worker_last_delivery_timestamp_seconds``, ``worker_saturated``
                          per worker consumer
``counters``              ``dead_lettered_total``, ``rate_limited_total``,
                          ``backpressure_rejected_total``, ``breaker_parked_total``,
                          ``duplicates_skipped_total``
``breakers``              ``breaker_state``, ``breaker_open_seconds`` per destination
``beat``                  ``beat_last_tick_timestamp_seconds``, ``beat_leader_info``
``buffers``               ``buffer_rows``, ``buffer_oldest_age_seconds`` per buffer
``dead_letters``          ``dead_letters`` per (task, fingerprint), top N; ``dead_letter_rows``
``views``                 ``view_staleness_seconds``, ``view_refresh_interval_seconds``
``partitions``            ``future_partitions``, ``default_partition_rows`` per table
========================  =====================================================================

plus ``jobs_exporter_source_up{source}`` and ``jobs_exporter_scrape_seconds``.

**Bounded cost.** No KEYS, no SCAN, no read of a whole queue: the known queue names and their
priority sub-queues (LLEN + LINDEX of the oldest entry each), ZCARD/ZCOUNT on the delayed
store, the consumer registry plus one HLEN per consumer, one HGETALL of the counters hash and of
the worker-health hash, the breaker registry, one entry per registered buffer, view and
partitioned table, and ONE grouped SQL query for dead letters (top N groups). The number of
Redis commands of a scrape does not depend on how many jobs wait.

**A failing source never fails the scrape.** Each source is guarded: its error sets
``jobs_exporter_source_up{source}`` to 0 and its metrics are left out. Once Redis (or
PostgreSQL) refused a connection or timed out, the scrape's remaining sources on it are marked
down without being tried, so a dead backend costs one timeout per scrape, not one per source.
SQL statements run under ``exporter_statement_timeout``.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, cast

import psycopg
import redis
import sqlalchemy.exc
import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import Engine, create_engine, func, select

from jobs import partitions, views
from jobs.buffers import buffer_stats
from scheduler import leader
from workers import counters, health, keys, resources
from workers.backpressure import DRAIN_RATE, RATE_STALE_AFTER, SAMPLED_AT, list_keys
from workers.breakers import Breakers, State
from workers.db import dead_letters
from workers.envelopes import ENVELOPED_FIELD, waiting_jobs
from workers.errors import Retry
from workers.job import HEADER
from workers.queues import QUEUE_NAMES
from workers.resources import as_text
from workers.settings import Settings, get_settings

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

log = structlog.get_logger("jobs.exporter")

#: Where ``jobctl exporter`` listens unless told otherwise (loopback: put a proxy in front).
DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 9808
#: ``jobs_breaker_state`` values.
BREAKER_STATE_VALUES = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}

Kind = Literal["gauge", "counter"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One exported metric: its sample name, type, help text and label names."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()


#: Every metric the exporter exports (sample names, as PromQL sees them).
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "jobs_queue_depth", "gauge", "Jobs waiting in a queue (all priorities).", ("queue",)
    ),
    MetricSpec(
        "jobs_queue_oldest_age_seconds",
        "gauge",
        "Seconds since the oldest waiting job of a queue became ready (0 when none).",
        ("queue",),
    ),
    MetricSpec(
        "jobs_queue_drain_rate",
        "gauge",
        "Jobs fetched per second from a queue (EWMA measured by the workers; 0 when stale).",
        ("queue",),
    ),
    MetricSpec("jobs_queue_paused", "gauge", "1 while a queue is paused.", ("queue",)),
    MetricSpec(
        "jobs_delayed_jobs", "gauge", "Jobs in the delayed store (retries, deferrals, eta)."
    ),
    MetricSpec("jobs_delayed_due_jobs", "gauge", "Delayed jobs already due but not yet promoted."),
    MetricSpec("jobs_inflight_jobs", "gauge", "Messages fetched by consumers and not yet acked."),
    MetricSpec("jobs_workers_alive", "gauge", "Consumers whose heartbeat is recent."),
    MetricSpec(
        "jobs_worker_last_consume_timestamp_seconds",
        "gauge",
        "Unix time of a worker's last successful poll of the broker (its start before one).",
        ("worker",),
    ),
    MetricSpec(
        "jobs_worker_last_delivery_timestamp_seconds",
        "gauge",
        "Unix time a worker last received a message (0 if never).",
        ("worker",),
    ),
    MetricSpec(
        "jobs_worker_saturated",
        "gauge",
        "1 while every prefetch slot of a worker runs a job (it does not poll then, by design).",
        ("worker",),
    ),
    MetricSpec(
        "jobs_dead_letters",
        "gauge",
        "Dead letters (status dead) per task and error fingerprint, largest groups only.",
        ("task", "fingerprint"),
    ),
    MetricSpec("jobs_dead_letter_rows", "gauge", "Dead letters (status dead), all groups."),
    MetricSpec(
        "jobs_dead_lettered_total", "counter", "Jobs dead-lettered (inflow), per task.", ("task",)
    ),
    MetricSpec(
        "jobs_rate_limited_total",
        "counter",
        "Jobs parked because their rate limit had no slot, per limit.",
        ("limit",),
    ),
    MetricSpec(
        "jobs_backpressure_rejected_total",
        "counter",
        "Enqueues refused because the queue was full, per queue.",
        ("queue",),
    ),
    MetricSpec(
        "jobs_breaker_parked_total",
        "counter",
        "Jobs parked because their destination's breaker was open, per destination.",
        ("destination",),
    ),
    MetricSpec(
        "jobs_duplicates_skipped_total",
        "counter",
        "Jobs skipped at execution because their idempotency key was already done.",
    ),
    MetricSpec(
        "jobs_breaker_state",
        "gauge",
        "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
        ("destination",),
    ),
    MetricSpec(
        "jobs_breaker_open_seconds",
        "gauge",
        "Seconds since the breaker last opened (0 when closed).",
        ("destination",),
    ),
    MetricSpec("jobs_buffer_rows", "gauge", "Rows waiting in a write buffer.", ("buffer",)),
    MetricSpec(
        "jobs_buffer_oldest_age_seconds",
        "gauge",
        "Seconds since the oldest waiting row of a write buffer was appended.",
        ("buffer",),
    ),
    MetricSpec(
        "jobs_view_staleness_seconds",
        "gauge",
        "Seconds since a view's last successful refresh (+Inf: never refreshed).",
        ("view",),
    ),
    MetricSpec(
        "jobs_view_refresh_interval_seconds",
        "gauge",
        "A view's configured refresh interval.",
        ("view",),
    ),
    MetricSpec(
        "jobs_future_partitions", "gauge", "Partitions starting after now, per table.", ("table",)
    ),
    MetricSpec(
        "jobs_default_partition_rows",
        "gauge",
        "Rows in a table's DEFAULT partition (should be 0).",
        ("table",),
    ),
    MetricSpec(
        "jobs_beat_last_tick_timestamp_seconds",
        "gauge",
        "Unix time of the active beat's latest tick (0: never ticked).",
    ),
    MetricSpec(
        "jobs_beat_leader_info", "gauge", "1 for the beat holding the leader lease.", ("identity",)
    ),
    MetricSpec(
        "jobs_exporter_source_up",
        "gauge",
        "1 when the source was read in this scrape, 0 when it failed.",
        ("source",),
    ),
    MetricSpec("jobs_exporter_scrape_seconds", "gauge", "Seconds this scrape took."),
)
METRIC_NAMES = frozenset(spec.name for spec in METRICS)


class Samples:
    """The metric families of one scrape, filled by the sources."""

    def __init__(self) -> None:
        """Every family, empty."""
        self.families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            spec.name: _family(spec) for spec in METRICS
        }

    def add(self, name: str, value: float, **labels: str) -> None:
        """One sample of metric ``name`` (its labels in declaration order)."""
        family = self.families[name]
        spec = SPECS[name]
        family.add_metric([labels[label] for label in spec.labels], value)


SPECS = {spec.name: spec for spec in METRICS}


def _family(spec: MetricSpec) -> GaugeMetricFamily | CounterMetricFamily:
    if spec.kind == "counter":
        return CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
    return GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)


#: Errors meaning "Redis is not answering": the scrape's remaining Redis sources are skipped.
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
#: Errors meaning "PostgreSQL is not answering" (``Retry``: what ``jobs.maintenance`` turns an
#: operational error into).
DB_DOWN = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    psycopg.OperationalError,
    Retry,
)


def oldest_ready_at(raw: Any) -> float | None:
    """``ready_at`` of a queued message (stamped by admission); None when absent or unreadable."""
    if raw is None:
        return None
    try:
        message = json.loads(raw)
        value = message["headers"][HEADER]["ready_at"]
    except (ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, int | float) else None


class JobsCollector(Collector):
    """Reads the jobs system's state on every scrape (see the module docstring)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Read Redis with this process's client, PostgreSQL with an engine of its own.

        ``clock`` (unix seconds) is a seam for tests: ages are measured against it.
        """
        self.settings = settings or get_settings()
        self._clock = clock
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        self._down: set[str] = set()  # sources down at the last scrape (log transitions only)
        self.sources: tuple[tuple[str, str, Callable[[Samples, float], None]], ...] = (
            ("queues", "redis", self.read_queues),
            ("delayed", "redis", self.read_delayed),
            ("consumers", "redis", self.read_consumers),
            ("workers", "redis", self.read_workers),
            ("counters", "redis", self.read_counters),
            ("breakers", "redis", self.read_breakers),
            ("beat", "redis", self.read_beat),
            ("buffers", "redis", self.read_buffers),
            ("dead_letters", "postgres", self.read_dead_letters),
            ("views", "postgres", self.read_views),
            ("partitions", "postgres", self.read_partitions),
        )

    # -- the collector protocol -----------------------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        """Every family, without samples (no scrape at registration)."""
        return list(Samples().families.values())

    def collect(self) -> Iterable[Metric]:
        """One scrape: every source, each guarded; then the source and timing metrics."""
        started = time.perf_counter()
        samples = Samples()
        now = self._clock()
        down_backends: set[str] = set()
        up: dict[str, bool] = {}
        for name, backend, read in self.sources:
            if backend in down_backends:
                up[name] = False
                continue
            attempt = Samples()
            try:
                read(attempt, now)
            except Exception as exc:
                up[name] = False
                if isinstance(exc, REDIS_DOWN if backend == "redis" else DB_DOWN):
                    down_backends.add(backend)
                self._log_down(name, exc)
                continue
            up[name] = True
            for metric, family in attempt.families.items():  # a source's samples: all or none
                samples.families[metric].samples.extend(family.samples)
        self._log_recovered({name for name, ok in up.items() if ok})
        for name, ok in up.items():
            samples.add("jobs_exporter_source_up", 1.0 if ok else 0.0, source=name)
        samples.add("jobs_exporter_scrape_seconds", time.perf_counter() - started)
        return list(samples.families.values())

    def _log_down(self, source: str, exc: BaseException) -> None:
        with self._lock:
            if source in self._down:
                return
            self._down.add(source)
        log.warning("exporter_source_down", source=source, error=f"{type(exc).__name__}: {exc}")

    def _log_recovered(self, up: set[str]) -> None:
        with self._lock:
            back = self._down & up
            self._down -= back
        for source in sorted(back):
            log.info("exporter_source_up", source=source)

    # -- Redis sources --------------------------------------------------------------------------

    @property
    def client(self) -> redis.Redis:
        """This process's Redis client (the one every helper called here uses too)."""
        return resources.redis_client()

    def read_queues(self, samples: Samples, now: float) -> None:
        """Depth and oldest age per queue (LLEN + LINDEX -1 per priority list), drain, paused."""
        with self.client.pipeline(transaction=False) as pipe:
            for queue in QUEUE_NAMES:
                for key in list_keys(queue):
                    pipe.llen(key)
                    pipe.lindex(key, -1)
                pipe.hmget(keys.queue_stats(queue), [DRAIN_RATE, SAMPLED_AT, ENVELOPED_FIELD])
            pipe.smembers(keys.paused_queues())
            replies = pipe.execute()
        paused = {as_text(member) for member in replies[-1]}
        step = 2 * len(list_keys(QUEUE_NAMES[0])) + 1
        for index, queue in enumerate(QUEUE_NAMES):
            part = replies[index * step : (index + 1) * step]
            rate, sampled_at, enveloped = part[-1]
            # Jobs, not messages: a waiting envelope of n jobs counts n.
            depth = waiting_jobs(sum(int(n) for n in part[0:-1:2]), enveloped)
            ready = [at for at in map(oldest_ready_at, part[1:-1:2]) if at is not None]
            samples.add("jobs_queue_depth", depth, queue=queue)
            samples.add(
                "jobs_queue_oldest_age_seconds",
                max(now - min(ready), 0.0) if ready and depth else 0.0,
                queue=queue,
            )
            if rate is not None and sampled_at is not None:  # stale: no worker measures it
                fresh = now - float(as_text(sampled_at)) <= RATE_STALE_AFTER
                rate_value = float(as_text(rate)) if fresh else 0.0
                samples.add("jobs_queue_drain_rate", rate_value, queue=queue)
            samples.add("jobs_queue_paused", 1.0 if queue in paused else 0.0, queue=queue)

    def read_delayed(self, samples: Samples, now: float) -> None:
        """Delayed-store size and its due backlog (ZCARD + ZCOUNT)."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zcard(keys.delayed())
            pipe.zcount(keys.delayed(), "-inf", repr(now))
            size, due = pipe.execute()
        samples.add("jobs_delayed_jobs", int(size))
        samples.add("jobs_delayed_due_jobs", int(due))

    def read_consumers(self, samples: Samples, now: float) -> None:
        """In-flight messages (HLEN per registered consumer) and consumers alive."""
        registered = cast(
            "list[tuple[bytes, float]]",
            self.client.zrange(keys.consumers(), 0, -1, withscores=True),
        )
        with self.client.pipeline(transaction=False) as pipe:
            for consumer, _ in registered:
                pipe.hlen(keys.inflight(as_text(consumer)))
            held = pipe.execute() if registered else []
        cutoff = now - self.settings.consumer_dead_after
        samples.add("jobs_inflight_jobs", sum(int(n) for n in held))
        samples.add("jobs_workers_alive", sum(1 for _, beat in registered if beat >= cutoff))

    def read_workers(self, samples: Samples, now: float) -> None:  # noqa: ARG002
        """Last poll, last delivery and saturation per worker consumer (the liveness hash).

        A consumer that has not polled yet reports its start time as its last consume, so one
        that never polls at all ages like one that stopped.
        """
        for consumer, record in sorted(health.read(self.client).items()):
            last = record.last_poll if record.last_poll is not None else record.started_at
            samples.add("jobs_worker_last_consume_timestamp_seconds", last, worker=consumer)
            samples.add(
                "jobs_worker_last_delivery_timestamp_seconds",
                record.last_delivery or 0.0,
                worker=consumer,
            )
            samples.add("jobs_worker_saturated", 1.0 if record.saturated else 0.0, worker=consumer)

    def read_counters(self, samples: Samples, now: float) -> None:  # noqa: ARG002
        """Event counters (one HGETALL) and duplicates skipped (one GET)."""
        found = counters.read(self.client)
        labelled = (
            (counters.DEAD_LETTERED, "jobs_dead_lettered_total", "task"),
            (counters.RATE_LIMITED, "jobs_rate_limited_total", "limit"),
            (counters.BACKPRESSURE_REJECTED, "jobs_backpressure_rejected_total", "queue"),
            (counters.BREAKER_PARKED, "jobs_breaker_parked_total", "destination"),
        )
        for event, metric, label in labelled:
            for value, count in sorted(found.get(event, {}).items()):
                samples.add(metric, count, **{label: value})
        skipped = self.client.get(keys.counter("duplicates_skipped"))
        samples.add("jobs_duplicates_skipped_total", int(as_text(skipped)) if skipped else 0)

    def read_breakers(self, samples: Samples, now: float) -> None:
        """State and time open per destination (the breaker registry, one pipeline)."""
        for state in Breakers.from_settings(self.settings).states():
            samples.add(
                "jobs_breaker_state", BREAKER_STATE_VALUES[state.state], destination=state.name
            )
            opened = state.opened_at.timestamp() if state.opened_at else None
            samples.add(
                "jobs_breaker_open_seconds",
                max(now - opened, 0.0) if opened is not None else 0.0,
                destination=state.name,
            )

    def read_beat(self, samples: Samples, now: float) -> None:  # noqa: ARG002
        """The beat leader's identity and the latest tick."""
        client = self.client
        info = leader.leader_info(client)
        if info is not None:
            samples.add("jobs_beat_leader_info", 1.0, identity=info.identity)
        samples.add("jobs_beat_last_tick_timestamp_seconds", leader.last_tick(client) or 0.0)

    def read_buffers(self, samples: Samples, now: float) -> None:
        """Rows waiting and the oldest row's age per registered write buffer."""
        for name in sorted(self.settings.buffers):
            stats = buffer_stats(name, now=now)
            samples.add("jobs_buffer_rows", stats.length, buffer=name)
            samples.add("jobs_buffer_oldest_age_seconds", stats.oldest_age, buffer=name)

    # -- PostgreSQL sources ---------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The exporter's own small engine (statement timeout, application name)."""
        with self._lock:
            if self._engine is None:
                settings = self.settings
                timeout_ms = int(settings.exporter_statement_timeout * 1000)
                self._engine = create_engine(
                    settings.database_url,
                    pool_size=1,
                    max_overflow=2,
                    pool_pre_ping=True,
                    connect_args={
                        "connect_timeout": settings.db_connect_timeout,
                        "prepare_threshold": None,
                        "application_name": "jobs-exporter",
                        "options": f"-c statement_timeout={timeout_ms}",
                    },
                )
            return self._engine

    def read_dead_letters(self, samples: Samples, now: float) -> None:  # noqa: ARG002
        """ONE grouped query: the top N (task, fingerprint) groups and the total, status dead."""
        c = dead_letters.c
        count = func.count().label("n")
        grouped = (
            select(c.task_name, c.fingerprint, count)
            .where(c.status == "dead")
            .group_by(c.task_name, c.fingerprint)
            .subquery()
        )
        query = (
            select(
                grouped.c.task_name,
                grouped.c.fingerprint,
                grouped.c.n,
                func.sum(grouped.c.n).over().label("total"),
            )
            .order_by(grouped.c.n.desc(), grouped.c.task_name, grouped.c.fingerprint)
            .limit(self.settings.exporter_dead_letter_top)
        )
        with self.engine.connect() as conn:
            rows = list(conn.execute(query))
        for row in rows:
            samples.add(
                "jobs_dead_letters",
                int(row.n),
                task=str(row.task_name),
                fingerprint=str(row.fingerprint or ""),
            )
        samples.add("jobs_dead_letter_rows", int(rows[0].total) if rows else 0)

    def read_views(self, samples: Samples, now: float) -> None:
        """Staleness and refresh interval per registered view."""
        moment = datetime.fromtimestamp(now, UTC)
        for spec in self.settings.views:
            age = views.staleness(spec.view, engine=self.engine, clock=lambda: moment)
            samples.add(
                "jobs_view_staleness_seconds", math.inf if age is None else age, view=spec.view
            )
            samples.add("jobs_view_refresh_interval_seconds", spec.interval, view=spec.view)

    def read_partitions(self, samples: Samples, now: float) -> None:
        """Future partitions and DEFAULT-partition rows per registered table."""
        moment = datetime.fromtimestamp(now, UTC)
        for spec in self.settings.partitions:
            ahead = partitions.future_partitions(
                spec.table, engine=self.engine, clock=lambda: moment
            )
            rows = partitions.default_partition_rows(spec.table, engine=self.engine)
            samples.add("jobs_future_partitions", ahead, table=spec.table)
            samples.add("jobs_default_partition_rows", rows, table=spec.table)

    def close(self) -> None:
        """Release the exporter's database connections."""
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None


def registry(collector: JobsCollector | None = None) -> CollectorRegistry:
    """A registry holding only the jobs collector (no process or GC metrics)."""
    result = CollectorRegistry(auto_describe=False)
    result.register(collector or JobsCollector())
    return result


def serve(
    address: str = DEFAULT_ADDRESS,
    port: int = DEFAULT_PORT,
    collector: JobsCollector | None = None,
) -> WSGIServer:
    """Serve ``/metrics`` on ``address:port`` from a daemon thread; returns the server.

    Stop it with ``server.shutdown(); server.server_close()``.
    """
    from prometheus_client import start_http_server  # noqa: PLC0415 - only when serving

    server, _ = start_http_server(port, addr=address, registry=registry(collector))
    return server
