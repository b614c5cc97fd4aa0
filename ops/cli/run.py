"""``jobctl worker|beat|flower|migrate|demo``: thin wrappers with our defaults.

``worker``, ``beat`` and ``flower`` replace the ``jobctl`` process with ``celery`` itself
(``os.execvp``), so signals from a terminal, systemd or Docker (SIGTERM: warm shutdown,
SIGQUIT: cold) reach Celery directly. Options after ``--`` go to Celery unchanged.
"""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console

from ops.profiles import PROFILES, pool_options, profile_options
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

#: Flower's configuration file: it reads the credentials from our settings inside Flower.
FLOWER_CONFIG = Path(__file__).resolve().parents[1] / "flowerconfig.py"
LOOPBACK_ADDRESSES = frozenset({"127.0.0.1", "::1", "localhost"})
#: Flower options refused after ``--`` (argv is visible to every user in ``ps``), and why.
FLOWER_REFUSED_OPTIONS = {
    "basic_auth": "set JOBS_FLOWER_BASIC_AUTH instead (a command line is visible in `ps`)",
    "cookie_secret": "set JOBS_FLOWER_COOKIE_SECRET instead (a command line is visible in `ps`)",
    "oauth2_secret": "set FLOWER_OAUTH2_SECRET instead (a command line is visible in `ps`)",
    "broker_api": "set FLOWER_BROKER_API instead (its URL carries a password)",
    "conf": "jobctl flower always uses ops/flowerconfig.py (it enforces authentication)",
    "address": "use `jobctl flower --address` (before --)",
    "port": "use `jobctl flower --port` (before --)",
}
FLOWER_COOKIE_NOTE = (
    "JOBS_FLOWER_COOKIE_SECRET is not set: Flower signs its cookies with a random secret made "
    "for this start, so sessions do not survive a restart (set it, e.g. to "
    "$(openssl rand -hex 32), to keep them)."
)
FLOWER_EXPOSED_NOTE = (
    "Flower listens on {address}: /metrics and /healthcheck answer there without "
    "authentication, and basic auth travels in clear over plain HTTP. Put a TLS proxy in front "
    "and do not forward /metrics or /healthcheck to untrusted clients."
)

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
    profile: str = "standard",
) -> list[str]:
    """The ``celery worker`` command line for these options."""
    argv = celery_command("worker", "-Q", queues, "-P", pool, "--loglevel", loglevel)
    argv += profile_options(profile)
    if concurrency is not None:
        argv += ["-c", str(concurrency)]
    if hostname:
        argv += ["-n", hostname]
    argv += pool_options(pool, argv + extra)
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
        "webhooks: many concurrent requests per process, e.g. -P threads -c 32; prefetch "
        "multiplier 2 unless set).",
    ),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l", help="Celery's log level."),
    hostname: str | None = typer.Option(None, "--hostname", "-n", help="Worker node name."),
    profile: str = typer.Option(
        "standard",
        "--profile",
        help="standard (task events for Flower) or throughput (bulk queues fed by "
        "enqueue_many: no task events, heartbeats, mingle or gossip; prefetch 4). "
        "Trade-offs: ops/profiles.py and docs/throughput.md.",
    ),
) -> None:
    """Start a worker (``celery worker`` with our app and defaults).

    The worker acknowledges a job only after its outcome is stored (done, retried or
    dead-lettered); SIGTERM is a warm shutdown that finishes the running jobs.

    Usage: jobctl worker [-Q QUEUES] [-c N] [-P prefork|threads] [--profile NAME] [-l LEVEL]
                         [-- CELERY OPTIONS]

    Example: jobctl worker -Q webhooks -P threads -c 32
    Example: jobctl worker -Q default --profile throughput
    """
    if profile not in PROFILES:
        errors.print(f"unknown worker profile {profile!r}; known: {', '.join(sorted(PROFILES))}")
        raise typer.Exit(2)
    exec_celery(
        worker_argv(
            queues=queues,
            concurrency=concurrency,
            pool=pool,
            loglevel=loglevel,
            hostname=hostname,
            extra=list(ctx.args),
            profile=profile,
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


@dataclass(frozen=True, slots=True)
class FlowerSecrets:
    """What Flower authenticates and signs with (never on a command line, never logged)."""

    #: ``user:password`` pairs.
    basic_auth: list[str]
    #: JOBS_FLOWER_COOKIE_SECRET, or a random one for this start.
    cookie_secret: str = field(repr=False)


def flower_basic_auth(value: str | None) -> list[str] | None:
    """``user:password`` pairs of ``value`` (comma-separated), or ``None`` if any is incomplete."""
    pairs = [pair.strip() for pair in (value or "").split(",") if pair.strip()]
    if not pairs or not all(
        user and password for user, _, password in (p.partition(":") for p in pairs)
    ):
        return None
    return pairs


def flower_secrets() -> FlowerSecrets:
    """Flower's credentials and cookie secret from our settings; exits 2 without basic auth.

    Called by ``ops/flowerconfig.py`` inside the Flower process, so the secrets reach Flower
    without passing through its command line (visible to every user in ``ps``).
    """
    from workers.settings import get_settings  # noqa: PLC0415 - settings are read on use

    settings = get_settings()
    pairs = flower_basic_auth(settings.flower_basic_auth)
    if pairs is None:
        errors.print(FLOWER_AUTH_HELP, markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(2)
    return FlowerSecrets(pairs, settings.flower_cookie_secret or secrets.token_urlsafe(64))


def refused_flower_options(extra: list[str]) -> list[str]:
    """Why each of ``extra``'s Flower options is refused (one line each; empty: none is)."""
    refused = []
    for arg in extra:
        name = arg.lstrip("-").partition("=")[0].replace("-", "_")
        if arg.startswith("--") and name in FLOWER_REFUSED_OPTIONS:
            refused.append(f"{arg.partition('=')[0]}: {FLOWER_REFUSED_OPTIONS[name]}")
    return refused


def flower_argv(*, address: str, port: int, extra: list[str]) -> list[str]:
    """The ``celery flower`` command line: no secret on it (``ops/flowerconfig.py`` reads them)."""
    return celery_command(
        "flower", f"--conf={FLOWER_CONFIG}", f"--address={address}", f"--port={port}", *extra
    )


def flower(
    ctx: typer.Context,
    address: str = typer.Option(
        DEFAULT_FLOWER_ADDRESS, "--address", help="Interface to bind (loopback by default)."
    ),
    port: int = typer.Option(DEFAULT_FLOWER_PORT, "--port", help="Port to listen on."),
) -> None:
    """Start Flower with basic auth; refuses to start without ``JOBS_FLOWER_BASIC_AUTH``.

    Flower reads its credentials (``JOBS_FLOWER_BASIC_AUTH``) and cookie secret
    (``JOBS_FLOWER_COOKIE_SECRET``; unset: a random one per start, so sessions do not survive a
    restart) through ``ops/flowerconfig.py``, never from its command line. It binds to
    127.0.0.1 unless ``--address`` says otherwise. Flower answers ``/metrics`` and
    ``/healthcheck`` without authentication: expose it only behind a TLS proxy that does not
    forward them to untrusted clients. Task arguments it shows are redacted at publish time.

    Usage: JOBS_FLOWER_BASIC_AUTH=user:password jobctl flower [--address A] [--port P] [-- OPTS]

    Example: JOBS_FLOWER_BASIC_AUTH="admin:$(openssl rand -hex 16)" jobctl flower --port 5555
    """
    from workers.settings import get_settings  # noqa: PLC0415 - settings are read on use

    settings = get_settings()
    if flower_basic_auth(settings.flower_basic_auth) is None:
        errors.print(FLOWER_AUTH_HELP, markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=2)
    refused = refused_flower_options(list(ctx.args))
    if refused:
        errors.print("\n".join(refused), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=2)
    if not settings.flower_cookie_secret:
        errors.print(FLOWER_COOKIE_NOTE, markup=False, highlight=False, soft_wrap=True)
    if address not in LOOPBACK_ADDRESSES:
        errors.print(
            FLOWER_EXPOSED_NOTE.format(address=address),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    exec_celery(flower_argv(address=address, port=port, extra=list(ctx.args)))


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
