"""``jobctl health``: worker liveness (stuck consumers) and readiness for producers.

Liveness reads the worker-health hash and the consumers zset (:mod:`workers.health`): a worker
is *stuck* when it is still heart-beaten but Redis has answered none of its fetches for
``JOBS_HEALTH_STUCK_AFTER`` seconds although it has free prefetch slots (the consumer loop
stopped; the known Celery failure after a broker reconnect). Exit codes make it a probe:
0 healthy, 1 unhealthy (named on stderr), 2 invalid settings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Annotated, Any

import redis
import typer
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from workers import health, resources
from workers.redaction import redact_text
from workers.settings import Settings, get_settings


def _describe(exc: BaseException) -> str:
    """``Type: message`` on one line, short, secrets redacted (SQLAlchemy: the driver's error)."""
    cause = getattr(exc, "orig", None) or exc
    detail = " ".join(str(cause).split())[:200]
    return redact_text(f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__)


def check_broker(settings: Settings) -> None:
    """PING the broker (Redis), or open an AMQP connection; raises on failure."""
    url = settings.effective_broker_url
    if settings.broker_is_redis:
        resources.make_redis(url, settings).ping()
        return
    from kombu.connection import Connection  # noqa: PLC0415 - only for a non-Redis broker

    conn: Any = Connection(url, connect_timeout=settings.redis_connect_timeout)  # type: ignore[no-untyped-call]
    with conn:
        conn.ensure_connection(max_retries=1)


def check_redis(settings: Settings) -> None:
    """PING Redis (our own state: dedup, delayed store, limits); raises on failure."""
    resources.make_redis(settings.redis_url, settings).ping()


def check_database(settings: Settings) -> None:
    """``SELECT 1`` on PostgreSQL (connect timeout ``JOBS_DB_CONNECT_TIMEOUT``); raises."""
    engine = create_engine(
        settings.database_url,
        poolclass=NullPool,
        connect_args={"connect_timeout": settings.db_connect_timeout},
    )
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def readiness(settings: Settings) -> list[dict[str, Any]]:
    """One result per dependency a producer needs: broker, Redis (if separate), database.

    Each names its target (password redacted) and how long it took, or why it failed.
    """
    checks: list[tuple[str, str, Callable[[Settings], None]]] = [
        ("broker", settings.effective_broker_url, check_broker)
    ]
    if not settings.broker_is_redis:
        checks.append(("redis", settings.redis_url, check_redis))
    checks.append(("database", settings.database_url, check_database))
    results = []
    for name, url, check in checks:
        target = redact_text(url)
        started = time.perf_counter()
        try:
            check(settings)
        except Exception as exc:
            results.append({"check": name, "ok": False, "detail": f"{target}: {_describe(exc)}"})
        else:
            took = (time.perf_counter() - started) * 1000
            results.append({"check": name, "ok": True, "detail": f"{target} ({took:.1f} ms)"})
    return results


def liveness(settings: Settings, host: str | None, now: float) -> list[health.ConsumerHealth]:
    """Every live consumer (or every consumer of ``host``) with its verdict."""
    client = resources.make_redis(settings.redis_url, settings)
    found = health.assess(
        health.read(client),
        health.heartbeats(client),
        now,
        stuck_after=settings.health_stuck_after,
        dead_after=settings.consumer_dead_after,
    )
    return [
        item
        for item in found
        if item.verdict is not health.Verdict.GONE and (host is None or item.hostname == host)
    ]


def _line(item: health.ConsumerHealth) -> str:
    queues = ",".join(item.record.queues) if item.record else "?"
    return (
        f"{item.verdict.value.upper():7} {item.hostname} pid={item.pid} queues={queues} "
        f"consumer={item.consumer}: {item.reason}"
    )


def health_command(
    *,
    ready: Annotated[
        bool,
        typer.Option("--ready", help="Readiness for producers: broker and database reachable."),
    ] = False,
    host: Annotated[
        str | None,
        typer.Option("--host", help="Only this host's workers (a per-host liveness probe)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of lines.")] = False,
) -> None:
    """Exit non-zero when a worker is stuck (or, with --ready, a dependency is unreachable).

    Liveness (default): every live worker's consumer must have had a fetch answered by Redis
    within JOBS_HEALTH_STUCK_AFTER seconds (default 60), unless all its prefetch slots are
    running jobs (busy). Stuck workers are named on stderr; it also fails when no worker is
    alive (on --host: none on that host). Readiness (--ready): one line per dependency.

    Usage: jobctl health [--ready] [--host HOST] [--json]

    Example: jobctl health --host "$(hostname)" || kill -TERM "$WORKER_PID"
    """
    settings = get_settings()
    if ready:
        _ready(settings, as_json=as_json)
    else:
        _live(settings, host, as_json=as_json)


def _ready(settings: Settings, *, as_json: bool) -> None:
    results = readiness(settings)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    else:
        for result in results:
            state = "ok  " if result["ok"] else "FAIL"
            typer.echo(f"{state} {result['check']:9} {result['detail']}", err=not result["ok"])
    if not all(result["ok"] for result in results):
        raise typer.Exit(1)


def _live(settings: Settings, host: str | None, *, as_json: bool) -> None:
    now = time.time()
    try:
        consumers = liveness(settings, host, now)
    except redis.RedisError as exc:
        typer.echo(f"FAIL    cannot read worker health from Redis: {_describe(exc)}", err=True)
        raise typer.Exit(1) from None
    failing = [item for item in consumers if item.verdict in health.FAILING]
    if as_json:
        typer.echo(json.dumps([item.as_dict(now) for item in consumers], indent=2))
    else:
        for item in consumers:
            typer.echo(_line(item), err=item.verdict in health.FAILING)
    if not consumers:
        where = f" on host {host}" if host else ""
        typer.echo(f"FAIL    no live worker{where}", err=True)
        raise typer.Exit(1)
    if failing:
        names = ", ".join(f"{item.hostname}:{item.pid} ({item.consumer})" for item in failing)
        typer.echo(f"FAIL    {len(failing)} stuck worker(s): {names}", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``jobctl health`` to ``app``."""
    app.command("health")(health_command)
