"""``jobctl``: the operator CLI. Each command group lives in its own module."""

from __future__ import annotations

import typer

from ops.cli import bench, breakers, dlq, limits, run, webhooks
from ops.cli.exporter import register as register_exporter
from ops.cli.health import register as register_health
from ops.cli.queues import app as queues_app
from ops.cli.status import register as register_status
from workers.errors import ConfigurationError

app = typer.Typer(
    name="jobctl",
    help="Operate the jobs system: workers, dead letters, demo.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(dlq.app, name="dlq")
app.add_typer(limits.app, name="limits")
app.add_typer(breakers.app, name="breakers")
app.add_typer(webhooks.app, name="webhooks")
run.register(app)
register_health(app)
register_status(app)
app.add_typer(queues_app, name="queues")
register_exporter(app)
bench.register(app)


def main() -> None:
    """Console-script entry point: invalid settings end with one clear line, exit code 2."""
    try:
        app()
    except ConfigurationError as exc:
        typer.echo(f"jobctl: {exc}", err=True)
        raise SystemExit(2) from None
