"""``jobctl limits``: cluster-wide rate limits (list, set at run time, reset)."""

from __future__ import annotations

import json
from typing import Annotated

import redis
import typer
from rich.console import Console
from rich.table import Table

from workers import ratelimits, resources
from workers.errors import InvalidJob
from workers.redaction import redact_text
from workers.settings import get_settings

app = typer.Typer(help="Rate limits: list, change at run time, reset.", no_args_is_help=True)

console = Console()
errors = Console(stderr=True)

NameArg = Annotated[
    str,
    typer.Argument(
        metavar="NAME",
        help="Limit name: a task (webhooks.deliver) or a task and key (webhooks.deliver:host).",
        show_default=False,
    ),
]


def _client() -> redis.Redis:
    client = resources.redis_client()
    try:
        client.ping()
    except redis.RedisError as exc:
        errors.print(
            f"[red]error:[/red] Redis unreachable at {redact_text(get_settings().redis_url)}: {exc}"
        )
        raise typer.Exit(1) from None
    return client


def _per_second(value: float | None) -> str:
    if value is None:
        return "unlimited"
    return f"{value:.3g}/s" if value >= 1 else f"{value * 60:.3g}/m"


@app.command("list")
def list_command(
    *,
    as_json: Annotated[
        bool, typer.Option("--json", help="Machine-readable JSON on stdout.")
    ] = False,
) -> None:
    """List every limit: declared rate, run-time override, effective rate, block.

    The effective rate is the override (else the declaration) times the adaptive factor a
    downstream's 429 lowered; "blocked until" is set by a Retry-After.

    Usage: jobctl limits list [--json]

    Example: jobctl limits list --json
    """
    from workers.app import app as celery_app  # noqa: PLC0415 - imports the task catalogue

    client = _client()
    limits = ratelimits.list_limits(
        client,
        ratelimits.declared_limits(celery_app),
        recovery=get_settings().throttle_recovery,
    )
    if as_json:
        typer.echo(json.dumps([info.as_dict() for info in limits], indent=2))
        return
    if not limits:
        console.print("No rate limits declared, overridden or active.")
        return
    table = Table(title="Rate limits (`limits set NAME RATE` to change one at run time)")
    table.add_column("name", overflow="fold")
    for column in ("declared", "override", "factor", "effective", "blocked until", "parked"):
        table.add_column(column, justify="right", no_wrap=True)
    for info in limits:
        table.add_row(
            info.name,
            str(info.declared) if info.declared else "-",
            str(info.override) if info.override else "-",
            f"{info.factor:.2f}",
            _per_second(info.effective_per_second),
            info.blocked_until.strftime("%H:%M:%S.%f")[:-3] if info.blocked_until else "-",
            str(info.parked),
        )
    console.print(table)


@app.command("set")
def set_command(
    name: NameArg,
    rate: Annotated[
        str,
        typer.Argument(metavar="RATE", help="Jobs per unit: 20/s, 100/m, 5/h.", show_default=False),
    ],
    *,
    burst: Annotated[
        int, typer.Option("--burst", help="Jobs allowed back to back (default 1).")
    ] = 1,
) -> None:
    """Set a run-time override: running workers apply it on their next job, no restart.

    A task-wide override (NAME = the task) is also the default of that task's per-key limits.

    Usage: jobctl limits set NAME RATE [--burst N]

    Example: jobctl limits set webhooks.deliver:api.example.com 5/s --burst 10
    """
    try:
        parsed = ratelimits.parse_rate(rate, burst=burst, field="RATE")
    except InvalidJob as exc:
        hint = "--burst" if exc.field == "burst" else "RATE"
        message = str(exc).removeprefix(f"{exc.field}: ")
        raise typer.BadParameter(message, param_hint=hint) from None
    if not name.strip() or name != name.strip():
        raise typer.BadParameter(
            "must be a non-empty name without surrounding spaces", param_hint="NAME"
        )
    ratelimits.set_override(_client(), name, parsed)
    console.print(f"{name}: limited to {parsed} (effective on the next job in every worker)")


@app.command("reset")
def reset_command(name: NameArg) -> None:
    """Drop a run-time override and the limit's adaptive state (back-off, block, backlog).

    The task's declared rate, if any, applies again on the next job.

    Usage: jobctl limits reset NAME

    Example: jobctl limits reset webhooks.deliver:api.example.com
    """
    if ratelimits.reset(_client(), name):
        console.print(f"{name}: override and state removed")
    else:
        console.print(f"{name}: nothing to reset")
