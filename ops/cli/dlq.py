"""``jobctl dlq``: list, show, stats, replay and purge dead letters."""

from __future__ import annotations

import typer

app = typer.Typer(help="Dead letters: inspect, replay, purge.", no_args_is_help=True)
