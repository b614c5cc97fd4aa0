"""``jobctl dlq``: list, show, stats, replay and purge dead letters."""

from __future__ import annotations

import getpass
import json
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from workers import deadletters, replay, resources
from workers.errors import BrokerUnavailable, InvalidJob
from workers.queues import QUEUE_NAMES
from workers.redaction import redact_text

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy import Row

app = typer.Typer(help="Dead letters: inspect, replay, purge.", no_args_is_help=True)

console = Console()
errors = Console(stderr=True)

STATUSES = ("dead", "replayed")
_T = TypeVar("_T")
_RELATIVE = re.compile(r"^\s*(?P<n>\d+)\s*(?P<unit>s|m|h|d|w)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_moment(text: str, *, now: datetime | None = None) -> datetime:
    """An aware UTC datetime from ISO 8601 (naive means UTC) or a relative age (``90m``, ``2d``).

    A relative age means "that long before ``now``". Raises ``ValueError`` for anything else.
    """
    match = _RELATIVE.match(text)
    if match:
        delta = timedelta(**{_UNITS[match["unit"]]: int(match["n"])})
        return (now or datetime.now(UTC)) - delta
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO datetime (2024-05-01T12:00) nor an age (30m, 1h, 2d)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _moment(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_moment(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def _selector(
    ids: list[int] | None,
    *,
    task: str | None,
    error: str | None,
    since: str | None,
    until: str | None,
    status: str | None,
) -> deadletters.Selector:
    if status is not None and status not in STATUSES:
        raise typer.BadParameter(f"must be one of {', '.join(STATUSES)}", param_hint="--status")
    if ids and any(entry_id <= 0 for entry_id in ids):
        raise typer.BadParameter("entry ids are positive integers", param_hint="IDS")
    start, end = _moment(since, "--since"), _moment(until, "--until")
    if start and end and start >= end:
        raise typer.BadParameter("--since must be earlier than --until", param_hint="--since")
    return deadletters.Selector(
        ids=tuple(ids or ()), task=task, error=error, since=start, until=end, status=status
    )


def _require_selection(
    ctx: typer.Context, selector: deadletters.Selector, *, everything: bool
) -> None:
    """Refuse a destructive command without an explicit choice of rows (exit code 2)."""
    chosen = selector != deadletters.Selector()
    if everything and chosen:
        ctx.fail("--all cannot be combined with ids or filters")
    if not everything and not chosen:
        ctx.fail(
            "choose entries: give ids, a filter (--task, --error, --since, --until, --status) "
            "or --all"
        )


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _as_dict(row: Row[Any]) -> dict[str, Any]:
    return {key: _jsonable(value) for key, value in row._mapping.items()}  # noqa: SLF001 - public API of Row


def _echo_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str))


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _age(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _fail(message: str) -> typer.Exit:
    errors.print(f"[red]error:[/red] {message}")
    return typer.Exit(1)


TaskOpt = Annotated[
    str | None, typer.Option("--task", help="Only this task (wire name, e.g. webhooks.deliver).")
]
ErrorOpt = Annotated[
    str | None,
    typer.Option(
        "--error", help="Exception type, reason (e.g. decode_error) or fingerprint prefix."
    ),
]
SinceOpt = Annotated[
    str | None, typer.Option("--since", help="Failed at or after: ISO datetime or age (1h, 2d).")
]
UntilOpt = Annotated[
    str | None, typer.Option("--until", help="Failed before: ISO datetime or age (1h, 2d).")
]
StatusOpt = Annotated[str | None, typer.Option("--status", help="dead or replayed.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
IdsArg = Annotated[
    list[int] | None,
    typer.Argument(metavar="IDS", help="Dead-letter ids.", show_default=False),
]


@app.command("list")
def list_command(
    *,
    task: TaskOpt = None,
    error: ErrorOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    status: StatusOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many rows.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List dead letters, newest failure first.

    Usage: jobctl dlq list [--task T] [--error E] [--since S] [--until U] [--status S] [--json]

    Example: jobctl dlq list --task webhooks.deliver --since 2h --limit 20
    """
    selector = _selector(None, task=task, error=error, since=since, until=until, status=status)
    rows = database_call(
        lambda: deadletters.list_entries(resources.engine(), selector, limit=limit)
    )
    if as_json:
        _echo_json([_as_dict(row) for row in rows])
        return
    if not rows:
        console.print("No dead letters match.")
        return
    table = Table(title=f"Dead letters ({len(rows)} shown; `dlq show ID` for details)")
    table.add_column("id", justify="right", no_wrap=True)
    for column in ("task", "queue", "status", "error"):
        table.add_column(column, overflow="fold")
    for column in ("tries", "age", "replays"):
        table.add_column(column, justify="right", no_wrap=True)
    now = datetime.now(UTC)
    for row in rows:
        table.add_row(
            str(row.id),
            row.task_name,
            row.queue,
            row.status,
            row.exc_type or row.reason,
            str(row.attempts),
            _age(now - row.last_failed_at),
            str(row.replay_count),
        )
    console.print(table)


@app.command("show")
def show_command(
    entry_id: Annotated[int, typer.Argument(metavar="ID", help="Dead-letter id (see `dlq list`).")],
    *,
    as_json: JsonOpt = False,
) -> None:
    """Show one dead letter: arguments, error, traceback and replay history.

    Usage: jobctl dlq show ID [--json]

    Example: jobctl dlq show 42
    """
    row = database_call(lambda: deadletters.get(resources.engine(), entry_id))
    if row is None:
        raise _fail(f"no dead letter with id {entry_id}")
    if as_json:
        _echo_json(_as_dict(row))
        return
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column(overflow="fold")
    for label, value in (
        ("id", row.id),
        ("job id", row.job_id),
        ("task", row.task_name),
        ("queue", row.queue),
        ("priority", row.priority),
        ("key", row.idempotency_key),
        ("status", row.status),
        ("reason", row.reason),
        ("error", f"{row.exc_type}: {row.exc_message}" if row.exc_type else "-"),
        ("fingerprint", row.fingerprint),
        ("attempts", row.attempts),
        ("failures", row.failure_count),
        ("first failed", _when(row.first_failed_at)),
        ("last failed", _when(row.last_failed_at)),
        ("args", json.dumps(row.args)),
        ("kwargs", json.dumps(row.kwargs)),
    ):
        facts.add_row(label, "-" if value is None else str(value))
    console.print(Panel(facts, title=f"Dead letter {row.id}"))
    if row.raw_message:
        console.print(Panel(row.raw_message[:2000], title="raw message (base64)"))
    if row.traceback:
        console.print(Panel(row.traceback.rstrip(), title="traceback"))
    history = Table(title=f"Replays ({row.replay_count})")
    for column in ("at", "queue", "by"):
        history.add_column(column)
    for event in row.replay_history or []:
        history.add_row(str(event.get("at")), str(event.get("queue")), str(event.get("by")))
    console.print(history)


@app.command("stats")
def stats_command(
    *,
    task: TaskOpt = None,
    error: ErrorOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    status: StatusOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Count dead letters by task and by error fingerprint (exception type + top frame).

    Usage: jobctl dlq stats [--task T] [--error E] [--since S] [--until U] [--status S] [--json]

    Example: jobctl dlq stats --status dead --since 1d
    """
    selector = _selector(None, task=task, error=error, since=since, until=until, status=status)
    grouped = database_call(lambda: deadletters.stats(resources.engine(), selector))
    total = sum(n for _, n in grouped["task"])
    if as_json:
        _echo_json(
            {
                "total": total,
                "by_task": [{"task": name, "count": n} for name, n in grouped["task"]],
                "by_fingerprint": [
                    {"fingerprint": name, "count": n} for name, n in grouped["fingerprint"]
                ],
            }
        )
        return
    for title, key in (("By task", "task"), ("By error fingerprint", "fingerprint")):
        table = Table(title=f"{title} ({total} dead letters)")
        table.add_column(key, overflow="fold")
        table.add_column("count", justify="right")
        for name, n in grouped[key]:
            table.add_row(name, str(n))
        console.print(table)


@app.command("replay")
def replay_command(
    ctx: typer.Context,
    ids: IdsArg = None,
    *,
    task: TaskOpt = None,
    error: ErrorOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    status: Annotated[
        str | None,
        typer.Option("--status", help="dead or replayed (filters default to dead; ids take any)."),
    ] = None,
    everything: Annotated[bool, typer.Option("--all", help="Every dead entry.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be replayed; change nothing.")
    ] = False,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Replay at most N entries.")
    ] = None,
    rate: Annotated[
        str | None, typer.Option("--rate", help="At most N jobs per second (N, N/s, N/m).")
    ] = None,
    queue: Annotated[
        str | None, typer.Option("--queue", help="Replay into this queue instead.")
    ] = None,
    by: Annotated[
        str | None, typer.Option("--by", help="Operator name for the replay history.")
    ] = None,
) -> None:
    """Republish dead letters with their original idempotency key and a fresh attempt budget.

    Replaying an entry twice never runs its side effect twice; poison entries are reported.

    Usage: jobctl dlq replay (IDS... | FILTERS | --all) [--dry-run] [--limit N] [--rate N/s]

    Filters: --task, --error, --since, --until, --status; --queue Q replays into queue Q.

    Example: jobctl dlq replay --task webhooks.deliver --since 2h --rate 50/s
    """
    selector = _selector(ids, task=task, error=error, since=since, until=until, status=status)
    _require_selection(ctx, selector, everything=everything)
    per_second = None
    if rate is not None:
        try:
            per_second = replay.parse_rate(rate)
        except InvalidJob as exc:
            raise typer.BadParameter(str(exc), param_hint="--rate") from None
    if queue is not None and queue not in QUEUE_NAMES:
        raise typer.BadParameter(
            f"unknown queue; one of {', '.join(QUEUE_NAMES)}", param_hint="--queue"
        )
    options = replay.ReplayOptions(
        dry_run=dry_run, limit=limit, rate=per_second, queue=queue, by=by or _operator()
    )
    engine = database_call(resources.engine)
    from workers.app import app as celery_app  # noqa: PLC0415 - builds the Celery app only here

    known = replay.registered_tasks(celery_app)
    total = database_call(lambda: replay.planned(engine, selector, options))
    last = replay.ReplaySummary(dry_run=dry_run)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        bar = progress.add_task("dry run" if dry_run else "replaying", total=total)

        def advance(summary: replay.ReplaySummary) -> None:
            nonlocal last
            last = summary
            progress.update(bar, completed=summary.handled)

        try:
            last = replay.replay(
                engine, selector, options, app=celery_app, known_tasks=known, on_progress=advance
            )
        except BrokerUnavailable as exc:
            progress.stop()
            _print_summary(last, queue)
            raise _fail(f"{exc}; the replay stopped (running it again is safe)") from None
        except SQLAlchemyError as exc:
            progress.stop()
            _print_summary(last, queue)
            raise _fail(f"database error: {type(exc).__name__}: {redact_text(str(exc))}") from None
    _print_summary(last, queue)


def _print_summary(summary: replay.ReplaySummary, queue: str | None) -> None:
    where = f"into queue {queue!r}" if queue else "into their original queues"
    if summary.dry_run:
        console.print(
            f"Dry run: would replay {summary.replayed} entries {where}; "
            f"{summary.skipped} not replayable. Nothing was published or changed."
        )
    else:
        console.print(
            f"Replayed {summary.replayed} entries {where}; "
            f"{summary.skipped} skipped (not replayable)."
        )
    for refusal in summary.refusals:
        console.print(f"  skipped #{refusal.entry_id} ({refusal.task}): {refusal.reason}")
    if summary.skipped > len(summary.refusals):
        for reason, n in summary.skipped_by_reason.most_common():
            console.print(f"  {n} x {reason}")


@app.command("purge")
def purge_command(
    ctx: typer.Context,
    ids: IdsArg = None,
    *,
    task: TaskOpt = None,
    error: ErrorOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    status: StatusOpt = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Every entry, whatever its status.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete dead letters (asks for confirmation unless --yes).

    Usage: jobctl dlq purge (IDS... | FILTERS | --all) [--yes]

    Filters: --task, --error, --since, --until, --status.

    Example: jobctl dlq purge --status replayed --until 30d --yes
    """
    selector = _selector(ids, task=task, error=error, since=since, until=until, status=status)
    _require_selection(ctx, selector, everything=everything)
    engine = database_call(resources.engine)
    matching = database_call(lambda: deadletters.count(engine, selector))
    if matching == 0:
        console.print("No dead letters match; nothing deleted.")
        return
    if not yes:
        typer.confirm(f"Delete {matching} dead letters?", abort=True)
    deleted = database_call(lambda: deadletters.purge(engine, selector))
    console.print(f"Deleted {deleted} dead letters.")


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "jobctl"


def database_call(call: Callable[[], _T]) -> _T:
    """Run a store call; a database failure becomes a one-line error and exit code 1."""
    try:
        return call()
    except SQLAlchemyError as exc:
        raise _fail(f"database error: {type(exc).__name__}: {redact_text(str(exc))}") from None
