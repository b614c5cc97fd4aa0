"""``jobctl status``: one screen of what an on-call operator needs, as tables or JSON.

Sections: queues (waiting, oldest wait, drain rate, paused), workers (liveness from
:mod:`workers.health`), dead letters (by task, top fingerprints), breakers, rate limits, the
beat leader, write buffers and views. Every section is read on its own and guarded: a source
that fails shows "unavailable: <reason>" (``errors`` in JSON) and the rest still render. Once
Redis or PostgreSQL refused a connection or timed out, the remaining sections on it are marked
unavailable without being tried, so a dead backend costs one timeout per refresh.

Reads are bounded: LLEN/LINDEX per queue list, one HGETALL of the health hash, one HLEN per
consumer, the breaker registry, two grouped SQL queries for dead letters. Rate limits list live
limiter state with SCAN (as ``jobctl limits list`` does).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, cast

import psycopg
import redis
import sqlalchemy.exc
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from sqlalchemy import Engine, create_engine

from jobs.buffers import buffer_stats
from jobs.views import staleness
from ops.cli.breakers import render as render_breakers
from scheduler import leader
from workers import deadletters, health, keys, pausing, ratelimits, resources
from workers.backpressure import DRAIN_RATE, list_keys
from workers.breakers import Breakers
from workers.envelopes import ENVELOPED_FIELD, waiting_jobs
from workers.job import HEADER
from workers.queues import QUEUE_NAMES
from workers.redaction import redact_text
from workers.resources import as_text
from workers.settings import Settings, get_settings

if TYPE_CHECKING:
    from rich.console import RenderableType

console = Console()

#: Sections in display order, each with the backend it reads.
SECTIONS: dict[str, str] = {
    "queues": "redis",
    "workers": "redis",
    "dead_letters": "database",
    "breakers": "redis",
    "limits": "redis",
    "beat": "redis",
    "buffers": "redis",
    "views": "database",
}
#: Dead-letter error fingerprints shown (the largest groups).
TOP_FINGERPRINTS = 5
#: Seconds a status SQL statement may run.
STATEMENT_TIMEOUT = 5.0

#: Errors that mean "this backend is down" (skip its other sections this refresh).
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
DB_DOWN = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, psycopg.OperationalError)


# -- reading --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One queue's figures."""

    queue: str
    depth: int
    oldest_age: float | None
    drain_rate: float | None
    paused: bool
    paused_for: float | None
    #: Live consumers of the queue that are not stuck (ok or busy): 0 means nothing drains it.
    consumers: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (seconds)."""
        return {
            "queue": self.queue,
            "depth": self.depth,
            "oldest_age": _round(self.oldest_age),
            "drain_rate": self.drain_rate,
            "paused": self.paused,
            "paused_for": _round(self.paused_for),
            "consumers": self.consumers,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def ready_at(raw: Any) -> float | None:
    """When a queued message became ready (stamped by admission); None when unknown."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)["headers"][HEADER]["ready_at"]
    except (ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def draining(client: redis.Redis, settings: Settings, now: float) -> dict[str, int]:
    """Queue -> how many live consumers fetch it and are not stuck (from the health hash)."""
    counts: dict[str, int] = {}
    for item in health.assess(
        health.read(client),
        health.heartbeats(client),
        now,
        stuck_after=settings.health_stuck_after,
        dead_after=settings.consumer_dead_after,
    ):
        if item.record is not None and item.verdict in {health.Verdict.OK, health.Verdict.BUSY}:
            for queue in item.record.queues:
                counts[queue] = counts.get(queue, 0) + 1
    return counts


def read_queues(
    client: redis.Redis, now: float, settings: Settings | None = None
) -> list[QueueRow]:
    """Every queue: depth over its priority lists, oldest wait, drain rate, pause, consumers."""
    with client.pipeline(transaction=False) as pipe:
        for queue in QUEUE_NAMES:
            for key in list_keys(queue):
                pipe.llen(key)
                pipe.lindex(key, -1)  # LPUSHed, RPOPped: the oldest is at the tail
            pipe.hmget(keys.queue_stats(queue), [DRAIN_RATE, ENVELOPED_FIELD])
        replies = pipe.execute()
    paused = pausing.paused(client)
    consumers = draining(client, settings or get_settings(), now)
    step = 2 * len(list_keys(QUEUE_NAMES[0])) + 1
    rows = []
    for index, queue in enumerate(QUEUE_NAMES):
        part = replies[index * step : (index + 1) * step]
        rate, enveloped = part[-1]
        # Jobs, not messages: a waiting envelope of n jobs counts n (workers/envelopes.py).
        depth = waiting_jobs(sum(int(n) for n in part[0:-1:2]), enveloped)
        ready = [at for at in map(ready_at, part[1:-1:2]) if at is not None]
        since = paused.get(queue)
        rows.append(
            QueueRow(
                queue=queue,
                depth=depth,
                oldest_age=max(now - min(ready), 0.0) if ready and depth else None,
                drain_rate=None if rate is None else float(as_text(rate)),
                paused=queue in paused,
                paused_for=None if since is None else max(now - since, 0.0),
                consumers=consumers.get(queue, 0),
            )
        )
    return rows


def read_workers(client: redis.Redis, settings: Settings, now: float) -> list[dict[str, Any]]:
    """Every consumer with a health record or a live heartbeat, with its in-flight count."""
    assessed = health.assess(
        health.read(client),
        health.heartbeats(client),
        now,
        stuck_after=settings.health_stuck_after,
        dead_after=settings.consumer_dead_after,
    )
    with client.pipeline(transaction=False) as pipe:
        for item in assessed:
            pipe.hlen(keys.inflight(item.consumer))
        held = pipe.execute() if assessed else []
    rows = []
    for item, count in zip(assessed, held, strict=True):
        row = item.as_dict(now)
        row["inflight"] = int(count)  # Redis' count: what would be recovered if it died
        rows.append(row)
    return rows


def read_dead_letters(engine: Engine) -> dict[str, Any]:
    """Current dead rows (status ``dead``): total, by task, largest error fingerprints."""
    grouped = deadletters.stats(engine, deadletters.Selector(status="dead"))
    by_task = [{"task": task, "count": n} for task, n in grouped["task"]]
    return {
        "total": sum(entry["count"] for entry in by_task),
        "by_task": by_task,
        "top_fingerprints": [
            {"fingerprint": fingerprint, "count": n}
            for fingerprint, n in grouped["fingerprint"][:TOP_FINGERPRINTS]
        ],
    }


def read_limits(client: redis.Redis, settings: Settings) -> list[dict[str, Any]]:
    """Every declared, overridden or active rate limit."""
    from workers.app import app as celery_app  # noqa: PLC0415 - imports the task catalogue

    declared = ratelimits.declared_limits(celery_app)
    limits = ratelimits.list_limits(client, declared, recovery=settings.throttle_recovery)
    return [info.as_dict() for info in limits]


def read_beat(client: redis.Redis, now: float) -> dict[str, Any]:
    """The beat leader (identity, fence, lease left) and its last tick."""
    info = leader.leader_info(client)
    tick = leader.last_tick(client)
    return {
        "leader": info.identity if info else None,
        "fence": info.fence if info else None,
        "lease_expires_in": _round(info.expires_in) if info else None,
        "last_tick": tick,
        "last_tick_age": None if tick is None else _round(max(now - tick, 0.0)),
    }


def read_buffers(settings: Settings, now: float) -> list[dict[str, Any]]:
    """Rows waiting and the oldest row's age per registered write buffer."""
    rows = []
    for name in sorted(settings.buffers):
        stats = buffer_stats(name, now=now)
        rows.append({"buffer": name, "rows": stats.length, "oldest_age": _round(stats.oldest_age)})
    return rows


def read_views(engine: Engine, settings: Settings) -> list[dict[str, Any]]:
    """Seconds since each registered view's last successful refresh, and its interval."""
    return [
        {
            "view": spec.view,
            "staleness": _round(staleness(spec.view, engine=engine)),
            "interval": spec.interval,
        }
        for spec in settings.views
    ]


@cache
def status_engine(url: str, connect_timeout: int) -> Engine:
    """A small engine of our own: short connect and statement timeouts (cached per URL)."""
    return create_engine(
        url,
        pool_size=1,
        max_overflow=1,
        pool_pre_ping=True,
        connect_args={
            "connect_timeout": connect_timeout,
            "options": f"-c statement_timeout={int(STATEMENT_TIMEOUT * 1000)}",
        },
    )


def _describe(exc: BaseException) -> str:
    """``Type: message`` on one line, short, secrets redacted (SQLAlchemy: the driver's error)."""
    cause = getattr(exc, "orig", None) or exc
    detail = " ".join(str(cause).split())[:200]
    return redact_text(f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__)


def collect(settings: Settings | None = None, *, now: float | None = None) -> dict[str, Any]:
    """The status document: every section (``None`` when unavailable) and ``errors``."""
    settings = settings or get_settings()
    now = time.time() if now is None else now
    client = resources.redis_client()
    engine = status_engine(settings.database_url, settings.db_connect_timeout)
    readers: dict[str, Callable[[], Any]] = {
        "queues": lambda: [row.as_dict() for row in read_queues(client, now, settings)],
        "workers": lambda: read_workers(client, settings, now),
        "dead_letters": lambda: read_dead_letters(engine),
        "breakers": lambda: [
            state.as_dict() for state in Breakers.from_settings(settings).states(now=now)
        ],
        "limits": lambda: read_limits(client, settings),
        "beat": lambda: read_beat(client, now),
        "buffers": lambda: read_buffers(settings, now),
        "views": lambda: read_views(engine, settings),
    }
    document: dict[str, Any] = {"generated_at": now}
    errors: dict[str, str] = {}
    down: dict[str, str] = {}
    for section, backend in SECTIONS.items():
        if backend in down:
            document[section], errors[section] = None, down[backend]
            continue
        try:
            document[section] = readers[section]()
        except Exception as exc:
            document[section], errors[section] = None, _describe(exc)
            if isinstance(exc, REDIS_DOWN if backend == "redis" else DB_DOWN):
                down[backend] = f"{backend} unreachable ({errors[section]})"
    document["errors"] = errors
    return document


# -- rendering ------------------------------------------------------------------------------------


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _unavailable(title: str, reason: str) -> Table:
    table = Table(title=title)
    table.add_column("unavailable", style="red")
    table.add_row(reason)
    return table


def _empty(table: Table, text: str) -> Table:
    if not table.row_count:
        table.add_row(f"[dim]{text}[/dim]", *[""] * (len(table.columns) - 1))
    return table


def queues_table(rows: list[dict[str, Any]]) -> Table:
    """Queues: waiting, oldest wait, drain rate, consumers, paused (since how long)."""
    table = Table(
        title="Queues",
        caption="consumers: live, not stuck; jobctl queues pause|resume NAME",
    )
    for name, justify in (
        ("Queue", "left"),
        ("Waiting", "right"),
        ("Oldest", "right"),
        ("Drain/s", "right"),
        ("Consumers", "right"),
        ("Paused", "left"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for row in rows:
        state = "-"
        if row["paused"]:
            since = row["paused_for"]
            state = "[red]paused[/red]" + (f" {_age(since)}" if since is not None else "")
        rate = row["drain_rate"]
        count = row["consumers"]
        table.add_row(
            row["queue"],
            str(row["depth"]),
            _age(row["oldest_age"]),
            "-" if rate is None else f"{rate:.1f}",
            str(count) if count or not row["depth"] else f"[red]{count}[/red]",
            state,
        )
    return table


_VERDICT_STYLES = {
    "ok": "green",
    "busy": "cyan",
    "stuck": "bold red",
    "unknown": "yellow",
    "gone": "dim",
}


def workers_table(rows: list[dict[str, Any]]) -> Table:
    """Workers: one row per consumer, its liveness verdict and why."""
    table = Table(title="Workers", caption="jobctl health names stuck workers")
    for name in ("Host", "PID", "Queues", "State", "Last poll", "Last delivery", "In flight"):
        table.add_column(name, no_wrap=name != "Queues")
    table.add_column("Consumer / reason", overflow="fold")
    for row in rows:
        style = _VERDICT_STYLES.get(row["state"], "")
        table.add_row(
            row["hostname"],
            str(row["pid"] or "-"),
            ",".join(row["queues"]) or "-",
            f"[{style}]{row['state']}[/{style}]",
            _age(row["last_poll_age"]),
            _age(row["last_delivery_age"]),
            str(row["inflight"]),
            f"{row['consumer']}\n[dim]{row['reason']}[/dim]",
        )
    return _empty(table, "no workers")


def dead_letters_table(data: dict[str, Any]) -> Table:
    """Dead letters: count per task and the largest error fingerprints."""
    table = Table(title=f"Dead letters ({data['total']} dead)", caption="jobctl dlq list / replay")
    table.add_column("Task / fingerprint", overflow="fold")
    table.add_column("Count", justify="right")
    for entry in data["by_task"]:
        table.add_row(entry["task"], str(entry["count"]))
    for entry in data["top_fingerprints"]:
        table.add_row(f"[dim]fingerprint[/dim] {entry['fingerprint']}", str(entry["count"]))
    return _empty(table, "none")


def breakers_table(rows: list[dict[str, Any]]) -> Table:
    """Breakers, as ``jobctl breakers list`` shows them."""
    from workers.breakers import BreakerState, State  # noqa: PLC0415

    states = [
        BreakerState(
            name=row["name"],
            state=State(row["state"]),
            failures=row["failures"],
            calls=row["calls"],
            opened_at=_parse_time(row["opened_at"]),
            half_open_at=_parse_time(row["half_open_at"]),
            probes_in_flight=row["probes_in_flight"],
        )
        for row in rows
    ]
    table = render_breakers(states)
    table.title = "Breakers"
    return _empty(table, "all closed")


def _parse_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def limits_table(rows: list[dict[str, Any]]) -> Table:
    """Rate limits: configured and effective rate, blocks, parked jobs."""
    table = Table(title="Rate limits", caption="jobctl limits set|reset NAME")
    table.add_column("Name", overflow="fold")
    for name in ("Declared", "Override", "Effective/s", "Blocked until", "Parked"):
        table.add_column(name, justify="right", no_wrap=True)
    for row in rows:
        effective = row["effective_per_second"]
        table.add_row(
            row["name"],
            row["declared"] or "-",
            row["override"] or "-",
            "unlimited" if effective is None else f"{effective:.3g}",
            (row["blocked_until"] or "-")[11:19] or "-",
            str(row["parked"]),
        )
    return _empty(table, "none")


def beat_table(data: dict[str, Any]) -> Table:
    """Beat: the leader, its fence and lease, the last tick."""
    table = Table(title="Beat")
    for name in ("Leader", "Fence", "Lease left", "Last tick"):
        table.add_column(name, no_wrap=True)
    if data["leader"] is None:
        table.add_row("[red]no leader[/red]", "-", "-", _age(data["last_tick_age"]) + " ago")
    else:
        table.add_row(
            data["leader"],
            str(data["fence"]),
            _age(data["lease_expires_in"]),
            _age(data["last_tick_age"]) + " ago",
        )
    return table


def buffers_table(rows: list[dict[str, Any]]) -> Table:
    """Write buffers: rows waiting, oldest row's age."""
    table = Table(title="Write buffers")
    table.add_column("Buffer", no_wrap=True)
    table.add_column("Rows", justify="right")
    table.add_column("Oldest", justify="right")
    for row in rows:
        table.add_row(row["buffer"], str(row["rows"]), _age(row["oldest_age"]))
    return _empty(table, "none registered")


def views_table(rows: list[dict[str, Any]]) -> Table:
    """Views: seconds since the last successful refresh against the interval."""
    table = Table(title="Views")
    table.add_column("View", no_wrap=True)
    table.add_column("Refreshed", justify="right")
    table.add_column("Interval", justify="right")
    for row in rows:
        stale = row["staleness"]
        text = "never" if stale is None else _age(stale) + " ago"
        if stale is None or stale > 2 * row["interval"]:
            text = f"[red]{text}[/red]"
        table.add_row(row["view"], text, _age(row["interval"]))
    return _empty(table, "none registered")


#: Section -> (title, renderer).
RENDERERS: dict[str, tuple[str, Callable[[Any], Table]]] = {
    "queues": ("Queues", queues_table),
    "workers": ("Workers", workers_table),
    "dead_letters": ("Dead letters", dead_letters_table),
    "breakers": ("Breakers", breakers_table),
    "limits": ("Rate limits", limits_table),
    "beat": ("Beat", beat_table),
    "buffers": ("Write buffers", buffers_table),
    "views": ("Views", views_table),
}


def render(document: dict[str, Any]) -> Group:
    """Every section of a status document as tables (unavailable ones say why)."""
    moment = datetime.fromtimestamp(document["generated_at"], UTC)
    parts: list[RenderableType] = [f"[bold]jobs status[/bold] at {moment:%Y-%m-%d %H:%M:%S} UTC"]
    for section, (title, renderer) in RENDERERS.items():
        data = document.get(section)
        if data is None:
            reason = cast("dict[str, str]", document.get("errors", {})).get(section, "no data")
            parts.append(_unavailable(title, reason))
        else:
            parts.append(renderer(data))
    return Group(*parts)


# -- the command ----------------------------------------------------------------------------------


def status(
    *,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON document (one per refresh with --watch).")
    ] = False,
    watch: Annotated[
        float | None,
        typer.Option(
            "--watch",
            metavar="SECONDS",
            help="Refresh every SECONDS until Ctrl-C.",
            min=0.1,
            show_default=False,
        ),
    ] = None,
) -> None:
    """Queues, workers, dead letters, breakers, limits, beat, buffers and views at a glance.

    Every section is read on its own: one that fails shows "unavailable" with the reason and
    the rest still show. With --watch the screen refreshes in place on a terminal; piped, each
    refresh is printed after the previous one (with --json: one document per line).

    Usage: jobctl status [--json] [--watch SECONDS]

    Example: jobctl status --watch 2
    """
    if watch is None:
        document = collect()
        if as_json:
            typer.echo(json.dumps(document, indent=2))
        else:
            console.print(render(document))
        return
    try:
        if as_json:
            while True:
                typer.echo(json.dumps(collect()))
                sys.stdout.flush()
                time.sleep(watch)
        elif console.is_terminal:
            with Live(render(collect()), console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(watch)
                    live.update(render(collect()), refresh=True)
        else:
            while True:
                console.print(render(collect()))
                console.file.flush()
                time.sleep(watch)
    except KeyboardInterrupt:
        return


def register(app: typer.Typer) -> None:
    """Add ``jobctl status`` to ``app``."""
    app.command("status")(status)
