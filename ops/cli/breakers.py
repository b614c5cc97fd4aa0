"""``jobctl breakers``: circuit-breaker states per destination; reset one."""

from __future__ import annotations

import typer

app = typer.Typer(help="Circuit breakers: list states, reset.", no_args_is_help=True)
