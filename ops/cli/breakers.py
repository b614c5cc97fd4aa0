"""``jobctl breakers``: circuit-breaker states per destination; reset one."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Annotated

import redis
import typer
from rich.console import Console
from rich.table import Table

from workers.breakers import Breakers, BreakerState, State
from workers.settings import get_settings

app = typer.Typer(help="Circuit breakers: list states, reset.", no_args_is_help=True)

console = Console()

_STYLES = {State.CLOSED: "green", State.OPEN: "red", State.HALF_OPEN: "yellow"}


def _store() -> Breakers:
    return Breakers.from_settings(get_settings())


def _unreachable(exc: redis.RedisError) -> typer.Exit:
    typer.echo(f"jobctl: Redis did not answer ({type(exc).__name__}: {exc})", err=True)
    return typer.Exit(1)


def _when(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    delta = math.floor((moment - now).total_seconds())
    relative = f"in {delta}s" if delta >= 0 else f"{-delta}s ago"
    return f"{moment.strftime('%H:%M:%S')} ({relative})"


def render(states: list[BreakerState], *, now: datetime | None = None) -> Table:
    """The ``list`` table: one row per destination."""
    now = now or datetime.now(UTC)
    table = Table(title="Circuit breakers", caption="failed/calls: within the window")
    table.add_column("Destination", no_wrap=True)
    table.add_column("State", no_wrap=True)
    table.add_column("Failed/calls", justify="right", no_wrap=True)
    table.add_column("Opened (UTC)")
    table.add_column("Half-open (UTC)")
    table.add_column("Probes", justify="right")
    for entry in states:
        style = _STYLES[entry.state]
        table.add_row(
            entry.name,
            f"[{style}]{entry.state.value}[/{style}]",
            f"{entry.failures} / {entry.calls}",
            _when(entry.opened_at, now),
            _when(entry.half_open_at, now),
            str(entry.probes_in_flight),
        )
    return table


@app.command("list")
def list_breakers(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List every destination's breaker: state, failures/calls in the window, open times.

    A destination with no recent calls has no breaker (it is closed) and is not listed.

    Usage: jobctl breakers list [--json]

    Example: jobctl breakers list --json | jq '.[] | select(.state != "closed")'
    """
    try:
        states = _store().states()
    except redis.RedisError as exc:
        raise _unreachable(exc) from None
    if as_json:
        typer.echo(json.dumps([entry.as_dict() for entry in states], indent=2))
        return
    if not states:
        console.print("No breakers: every destination is closed.")
        return
    console.print(render(states))


@app.command("reset")
def reset(
    name: Annotated[
        str, typer.Argument(help="Destination name, as `jobctl breakers list` shows it.")
    ],
) -> None:
    """Close a destination's breaker now and forget its counts.

    New jobs for it run at once. Jobs already parked come back at their parked time.
    Exit code 1 when the destination had no breaker.

    Usage: jobctl breakers reset NAME

    Example: jobctl breakers reset hooks.example.com
    """
    try:
        existed = _store().reset(name)
    except redis.RedisError as exc:
        raise _unreachable(exc) from None
    if not existed:
        typer.echo(f"no breaker named {name!r} (nothing to reset)", err=True)
        raise typer.Exit(1)
    typer.echo(f"breaker {name!r} reset: closed")
