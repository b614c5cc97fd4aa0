"""``jobctl worker|beat|flower|migrate|demo``: thin wrappers with our defaults.

``worker``, ``beat`` and ``flower`` replace the ``jobctl`` process with ``celery`` itself
(``os.execvp``), so signals from a terminal, systemd or Docker (SIGTERM: warm shutdown,
SIGQUIT: cold) reach Celery directly. Options after ``--`` go to Celery unchanged.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console

from workers.queues import QUEUE_NAMES

if TYPE_CHECKING:
    from sqlalchemy import Engine

console = Console()
errors = Console(stderr=True)

#: The Celery app every wrapper starts.
CELERY_APP = "workers.app"
#: Queues a default worker consumes (all of them).
DEFAULT_QUEUES = ",".join(QUEUE_NAMES)
#: Flower binds to loopback unless told otherwise: put a TLS proxy in front to expose it.
DEFAULT_FLOWER_ADDRESS = "127.0.0.1"
DEFAULT_FLOWER_PORT = 5555
#: Beat's scheduler: fires only while it holds the leader lease (scheduler/leader.py).
BEAT_SCHEDULER = "scheduler.leader:LeaderScheduler"
#: Commands that pass unknown options through to Celery.
PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}

FLOWER_AUTH_HELP = (
    "Flower never runs without authentication. Set JOBS_FLOWER_BASIC_AUTH to "
    "user:password (several: user1:pw1,user2:pw2), e.g.\n"
    '  export JOBS_FLOWER_BASIC_AUTH="admin:$(openssl rand -hex 16)"\n'
    "and run `jobctl flower` again."
)


def celery_command(*args: str) -> list[str]:
    """``python -m celery -A workers.app <args>`` with this interpreter."""
    return [sys.executable, "-m", "celery", "-A", CELERY_APP, *args]


def exec_celery(argv: list[str], env: dict[str, str] | None = None) -> NoReturn:
    """Replace this process with ``argv`` (signals then reach Celery directly)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if env is None:
        os.execvp(argv[0], argv)  # noqa: S606 - our interpreter and our arguments
    os.execvpe(argv[0], argv, env)  # noqa: S606


def worker_argv(
    *,
    queues: str,
    concurrency: int | None,
    pool: str,
    loglevel: str,
    hostname: str | None,
    extra: list[str],
) -> list[str]:
    """The ``celery worker`` command line for these options."""
    argv = celery_command("worker", "-Q", queues, "-P", pool, "--loglevel", loglevel)
    if concurrency is not None:
        argv += ["-c", str(concurrency)]
    if hostname:
        argv += ["-n", hostname]
    return argv + extra


def worker(
    ctx: typer.Context,
    *,
    queues: str = typer.Option(
        DEFAULT_QUEUES, "--queues", "-Q", help="Comma-separated queues to consume."
    ),
    concurrency: int | None = typer.Option(
        None, "--concurrency", "-c", min=1, help="Pool size (default: number of CPUs)."
    ),
    pool: str = typer.Option(
        "prefork",
        "--pool",
        "-P",
        help="prefork (CPU-bound work, default) or threads (I/O-bound queues such as "
        "webhooks: many concurrent requests per process, e.g. -P threads -c 32).",
    ),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l", help="Celery's log level."),
    hostname: str | None = typer.Option(None, "--hostname", "-n", help="Worker node name."),
) -> None:
    """Start a worker (``celery worker`` with our app and defaults).

    The worker acknowledges a job only after its outcome is stored (done, retried or
    dead-lettered); SIGTERM is a warm shutdown that finishes the running jobs.

    Usage: jobctl worker [-Q QUEUES] [-c N] [-P prefork|threads] [-l LEVEL] [-- CELERY OPTIONS]

    Example: jobctl worker -Q webhooks -P threads -c 32
    """
    exec_celery(
        worker_argv(
            queues=queues,
            concurrency=concurrency,
            pool=pool,
            loglevel=loglevel,
            hostname=hostname,
            extra=list(ctx.args),
        )
    )


def beat_argv(*, loglevel: str, extra: list[str]) -> list[str]:
    """The ``celery beat`` command line: our app with the leader-elected scheduler."""
    return celery_command("beat", "--scheduler", BEAT_SCHEDULER, "--loglevel", loglevel, *extra)


def beat(
    ctx: typer.Context,
    loglevel: str = typer.Option("INFO", "--loglevel", "-l", help="Celery's log level."),
) -> None:
    """Start the scheduler (``celery beat`` with our app and leader-elected scheduler).

    Start it on several hosts if you like: exactly one is active. It holds a lease in Redis
    (JOBS_BEAT_LEASE seconds, renewed every third of it); the others stand by and take over
    within the lease after it dies, at once after a graceful stop. Last runs live in Redis,
    so a new leader neither repeats a tick nor fires a burst of missed ones.

    Usage: jobctl beat [-l LEVEL] [-- CELERY OPTIONS]

    Example: JOBS_BEAT_LEASE=12 jobctl beat -l INFO
    """
    exec_celery(beat_argv(loglevel=loglevel, extra=list(ctx.args)))


def flower_argv(*, address: str, port: int, extra: list[str]) -> list[str]:
    """The ``celery flower`` command line (credentials travel in the environment)."""
    return celery_command("flower", f"--address={address}", f"--port={port}", *extra)


def flower(
    ctx: typer.Context,
    address: str = typer.Option(
        DEFAULT_FLOWER_ADDRESS, "--address", help="Interface to bind (loopback by default)."
    ),
    port: int = typer.Option(DEFAULT_FLOWER_PORT, "--port", help="Port to listen on."),
) -> None:
    """Start Flower with basic auth; refuses to start without ``JOBS_FLOWER_BASIC_AUTH``.

    The credentials are handed to Flower as ``FLOWER_BASIC_AUTH`` in its environment (the same
    as ``--basic-auth``, but not visible to other users in the process list).

    Usage: JOBS_FLOWER_BASIC_AUTH=user:password jobctl flower [--address A] [--port P]

    Example: JOBS_FLOWER_BASIC_AUTH="admin:$(openssl rand -hex 16)" jobctl flower --port 5555
    """
    from workers.settings import get_settings  # noqa: PLC0415 - settings are read on use

    auth = get_settings().flower_basic_auth
    if not auth or not all(
        user and password for user, _, password in (pair.partition(":") for pair in auth.split(","))
    ):
        errors.print(FLOWER_AUTH_HELP, markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=2)
    env = {**os.environ, "FLOWER_BASIC_AUTH": auth}
    exec_celery(flower_argv(address=address, port=port, extra=list(ctx.args)), env)


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (``None`` before the first migration)."""
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

    with engine.connect() as conn:
        revision: str | None = MigrationContext.configure(conn).get_current_revision()
        return revision


def migrate() -> None:
    """Migrate the database (``JOBS_DATABASE_URL``) to the newest schema (Alembic ``head``).

    Safe to run on every deploy: an up-to-date database is left unchanged.

    Usage: jobctl migrate

    Example: JOBS_DATABASE_URL=postgresql+psycopg://jobs@db/jobs jobctl migrate
    """
    from sqlalchemy import create_engine, make_url  # noqa: PLC0415
    from sqlalchemy.exc import SQLAlchemyError  # noqa: PLC0415

    from jobs.partitions import ensure_all  # noqa: PLC0415
    from workers.migrate import upgrade  # noqa: PLC0415
    from workers.settings import get_settings  # noqa: PLC0415

    url = get_settings().database_url
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        engine = create_engine(url)
        before = current_revision(engine)
        upgrade(url)
        after = current_revision(engine)
        # Partitioned tables need their current and next partitions before the first insert.
        created = [name for result in ensure_all(engine) for name in result.created]
        engine.dispose()
    except SQLAlchemyError as exc:
        errors.print(f"migration of {shown} failed: {exc}", markup=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    if before == after:
        console.print(f"{shown}: already at head (revision {after}); nothing to do.")
    else:
        console.print(f"{shown}: migrated from revision {before or 'none'} to {after} (head).")
    if created:
        console.print(f"partitions created: {', '.join(created)}")


def demo(
    *,
    data_dir: Path = typer.Option(
        Path(".jobs-data"),
        "--data-dir",
        envvar="JOBS_DEMO_DATA_DIR",
        help="Embedded servers' data and the worker log.",
    ),
    redis_url: str = typer.Option(
        "redis://127.0.0.1:6379/0", "--redis-url", help="A Redis to reuse if it answers."
    ),
    database_url: str = typer.Option(
        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        "--database-url",
        help="A PostgreSQL server to reuse if it answers (any database on it).",
    ),
    database: str = typer.Option("jobs_demo", "--database", help="The demo's own database."),
    redis_db: int = typer.Option(
        5, "--redis-db", min=0, help="The demo's own Redis DB number (flushed)."
    ),
    orders: int = typer.Option(40, "--orders", min=10, max=10_000, help="Orders to charge."),
) -> None:
    """Run the end-to-end demo: payments, buffers, views, cache warming, signed webhooks.

    Reuses Redis and PostgreSQL on the standard ports, else starts embedded ones (and stops
    them afterwards). Uses its own database and Redis DB number; exits 0 when every job has
    the expected outcome.

    Usage: jobctl demo [--data-dir DIR] [--redis-url URL] [--database-url URL]

    Example: jobctl demo --data-dir /tmp/jobs-demo
    """
    from ops.demo import DemoError, run_demo  # noqa: PLC0415 - sets the environment first

    try:
        run_demo(
            data_dir=data_dir,
            redis_url=redis_url,
            database_url=database_url,
            database=database,
            redis_db=redis_db,
            orders=orders,
            console=console,
        )
    except DemoError as exc:
        errors.print(f"demo failed: {exc}", markup=False, highlight=False)
        raise typer.Exit(code=1) from None


def register(app: typer.Typer) -> None:
    """Add the run commands to the top-level app."""
    app.command(context_settings=PASSTHROUGH)(worker)
    app.command(context_settings=PASSTHROUGH)(beat)
    app.command(context_settings=PASSTHROUGH)(flower)
    app.command()(migrate)
    app.command()(demo)
