"""``jobctl queues``: pause and resume consumption of a queue across the cluster; list queues."""

from __future__ import annotations

import json
import time
from typing import Annotated

import redis
import typer
from rich.console import Console

from ops.cli.status import queues_table, read_queues
from workers import pausing, resources
from workers.errors import InvalidJob
from workers.redaction import redact_text
from workers.settings import get_settings

app = typer.Typer(
    help="Queues: pause or resume consumption cluster-wide, list depths.", no_args_is_help=True
)

console = Console()

QueueArg = Annotated[
    str, typer.Argument(metavar="NAME", help="Queue name (jobctl queues list).", show_default=False)
]


def _client() -> redis.Redis:
    client = resources.redis_client()
    try:
        client.ping()
    except redis.RedisError as exc:
        url = redact_text(get_settings().redis_url)
        typer.echo(f"jobctl: Redis unreachable at {url}: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(1) from None
    return client


@app.command("pause")
def pause_command(queue: QueueArg) -> None:
    """Stop every worker from fetching QUEUE (including workers started later) until resumed.

    Running workers stop at their next fetch (within about a second). Jobs already running
    finish. Enqueue still accepts: the queue grows until its high watermark, then producers get
    QueueFull (HTTP 503). Delayed and retried jobs still land in the queue and wait.

    Usage: jobctl queues pause NAME

    Example: jobctl queues pause webhooks
    """
    try:
        newly = pausing.pause(_client(), queue)
    except InvalidJob as exc:
        raise typer.BadParameter(str(exc), param_hint="NAME") from None
    state = "paused" if newly else "already paused"
    typer.echo(f"queue {queue!r} {state}: workers do not fetch it (jobctl queues resume {queue})")


@app.command("resume")
def resume_command(queue: QueueArg) -> None:
    """Let workers fetch QUEUE again; idle workers are woken at once (no restart needed).

    Exit code 1 when the queue was not paused.

    Usage: jobctl queues resume NAME

    Example: jobctl queues resume webhooks
    """
    if not pausing.resume(_client(), queue):
        typer.echo(f"queue {queue!r} was not paused (nothing to resume)", err=True)
        raise typer.Exit(1)
    typer.echo(f"queue {queue!r} resumed: workers fetch it again")


@app.command("list")
def list_command(
    *,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List queues: waiting jobs, oldest wait, drain rate, and whether (since when) paused.

    Usage: jobctl queues list [--json]

    Example: jobctl queues list --json | jq '.[] | select(.paused)'
    """
    client = _client()
    now = time.time()
    rows = read_queues(client, now)
    if as_json:
        typer.echo(json.dumps([row.as_dict() for row in rows], indent=2))
        return
    console.print(queues_table([row.as_dict() for row in rows]))
