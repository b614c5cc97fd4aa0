"""``jobctl limits``: cluster-wide rate limits (list, set at run time, reset)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Rate limits: list, change at run time, reset.", no_args_is_help=True)
