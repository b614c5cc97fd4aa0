"""``jobctl``: the operator CLI. Each command group lives in its own module."""

from __future__ import annotations

import typer

from ops.cli import dlq, run

app = typer.Typer(
    name="jobctl",
    help="Operate the jobs system: workers, dead letters, demo.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(dlq.app, name="dlq")
run.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
