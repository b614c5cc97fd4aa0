"""``jobctl webhooks``: endpoints (add, list, disable, enable, rotate-secret), deliveries."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from jobs import webhooks
from jobs.webhooks import store
from ops.cli.dlq import database_call, parse_moment
from workers import resources
from workers.errors import InvalidJob, JobsError, SsrfBlocked
from workers.redaction import redact_text

app = typer.Typer(help="Webhooks: endpoints and deliveries.", no_args_is_help=True)
endpoints_app = typer.Typer(help="Subscriber endpoints.", no_args_is_help=True)
app.add_typer(endpoints_app, name="endpoints")

console = Console()
errors = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
EndpointArg = Annotated[int, typer.Argument(metavar="ENDPOINT_ID", help="Endpoint id.")]


def _refuse(exc: JobsError) -> typer.Exit:
    field = getattr(exc, "field", None)
    where = f" ({field})" if field else ""
    errors.print(f"[red]error{where}:[/red] {redact_text(str(exc))}")
    return typer.Exit(2 if isinstance(exc, InvalidJob | SsrfBlocked) else 1)


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


@endpoints_app.command("add")
def add_command(
    url: Annotated[str, typer.Argument(metavar="URL", help="https:// URL receiving POSTs.")],
    *,
    event: Annotated[
        list[str] | None,
        typer.Option("--event", "-e", help="Event type to subscribe to (repeat); default all."),
    ] = None,
    description: Annotated[str, typer.Option("--description", help="Free text.")] = "",
    rate: Annotated[
        str | None, typer.Option("--rate", help="This endpoint's own limit, e.g. 10/s.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register an endpoint and print its signing secret (shown this once).

    The URL must be public http(s): private, loopback, link-local and metadata addresses,
    credentials in the URL and internal ports are refused (ssrf_blocked).

    Usage: jobctl webhooks endpoints add URL [--event TYPE]... [--rate 10/s]
    Example: jobctl webhooks endpoints add https://hooks.example.com/in -e order.paid --rate 20/s
    """
    try:
        endpoint, secret = database_call(
            lambda: webhooks.add_endpoint(
                url, event_types=event, description=description, rate_limit=rate
            )
        )
    except JobsError as exc:
        raise _refuse(exc) from None
    if as_json:
        typer.echo(json.dumps({**endpoint.public(datetime.now(UTC)), "secret": secret}))
        return
    console.print(f"endpoint [bold]{endpoint.id}[/bold] added for {endpoint.url}")
    console.print(f"signing secret (shown once, store it now): {secret}")


@endpoints_app.command("list")
def list_command(
    *,
    active: Annotated[
        bool | None, typer.Option("--active/--disabled", help="Only active / disabled ones.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List endpoints (secrets are never shown: only how many currently sign).

    Usage: jobctl webhooks endpoints list [--active|--disabled] [--json]
    Example: jobctl webhooks endpoints list --disabled
    """
    rows = database_call(lambda: store.list_endpoints(resources.engine(), active=active))
    now = datetime.now(UTC)
    if as_json:
        typer.echo(json.dumps([endpoint.public(now) for endpoint in rows]))
        return
    table = Table("id", "url", "events", "rate", "active", "secrets", "description")
    for endpoint in rows:
        state = "yes" if endpoint.active else f"no ({endpoint.disabled_reason or '-'})"
        table.add_row(
            str(endpoint.id),
            redact_text(endpoint.url),
            ",".join(endpoint.event_types),
            endpoint.rate_limit or "-",
            state,
            str(len(endpoint.valid_secrets(now))),
            endpoint.description,
        )
    console.print(table)


@endpoints_app.command("disable")
def disable_command(
    endpoint_id: EndpointArg,
    *,
    reason: Annotated[str, typer.Option("--reason", help="Why (shown in listings).")] = (
        "disabled by an operator"
    ),
) -> None:
    """Stop deliveries to an endpoint; its queued deliveries are dead-lettered.

    Usage: jobctl webhooks endpoints disable ENDPOINT_ID [--reason TEXT]
    Example: jobctl webhooks endpoints disable 7 --reason "customer asked"
    """
    if not database_call(lambda: webhooks.disable_endpoint(endpoint_id, reason=reason)):
        errors.print(f"[red]error:[/red] no endpoint {endpoint_id}")
        raise typer.Exit(1)
    console.print(f"endpoint {endpoint_id} disabled")


@endpoints_app.command("enable")
def enable_command(endpoint_id: EndpointArg) -> None:
    """Deliver to an endpoint again; replay what failed meanwhile with ``jobctl dlq replay``.

    Usage: jobctl webhooks endpoints enable ENDPOINT_ID
    Example: jobctl webhooks endpoints enable 7 && jobctl dlq replay --task webhooks.deliver
    """
    if not database_call(lambda: webhooks.enable_endpoint(endpoint_id)):
        errors.print(f"[red]error:[/red] no endpoint {endpoint_id}")
        raise typer.Exit(1)
    console.print(f"endpoint {endpoint_id} enabled")


@endpoints_app.command("rotate-secret")
def rotate_command(
    endpoint_id: EndpointArg,
    *,
    grace: Annotated[
        str, typer.Option("--grace", help="How long the old secret keeps signing (24h, 30m, 0s).")
    ] = "24h",
    as_json: JsonOpt = False,
) -> None:
    """Add a new signing secret; the old one keeps signing for the grace period.

    During the grace period every request carries two signatures, so the receiver can switch
    secrets without a gap.

    Usage: jobctl webhooks endpoints rotate-secret ENDPOINT_ID [--grace 24h]
    Example: jobctl webhooks endpoints rotate-secret 7 --grace 2h
    """
    try:
        period = datetime.now(UTC) - parse_moment(grace)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--grace") from None
    secret = database_call(
        lambda: webhooks.rotate_secret(endpoint_id, grace=max(period, timedelta(0)))
    )
    if secret is None:
        errors.print(f"[red]error:[/red] no endpoint {endpoint_id}")
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps({"id": endpoint_id, "secret": secret}))
        return
    console.print(f"new signing secret for endpoint {endpoint_id} (shown once): {secret}")


@app.command("deliveries")
def deliveries_command(
    *,
    endpoint: Annotated[int | None, typer.Option("--endpoint", help="Endpoint id.")] = None,
    status: Annotated[
        str | None,
        typer.Option("--status", help="pending, retrying, delivered or failed."),
    ] = None,
    event: Annotated[str | None, typer.Option("--event", help="Event id (webhook-id).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Rows shown.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Deliveries, newest first: status, attempts, last HTTP status and error, timings.

    Usage: jobctl webhooks deliveries [--endpoint ID] [--status S] [--event ID] [--limit N]
    Example: jobctl webhooks deliveries --endpoint 7 --status failed
    """
    try:
        wanted = store.Status(status) if status is not None else None
    except ValueError:
        choices = ", ".join(s.value for s in store.Status)
        raise typer.BadParameter(f"must be one of {choices}", param_hint="--status") from None
    rows = database_call(
        lambda: store.list_deliveries(
            resources.engine(), endpoint_id=endpoint, status=wanted, event_id=event, limit=limit
        )
    )
    if as_json:
        typer.echo(json.dumps([{k: _jsonable(v) for k, v in row.items()} for row in rows]))
        return
    table = Table("id", "event", "endpoint", "status", "attempts", "http", "last error", "last")
    for row in rows:
        last = row["last_attempt_at"]
        table.add_row(
            str(row["id"]),
            row["event_id"],
            str(row["endpoint_id"]),
            row["status"],
            str(row["attempts"]),
            str(row["last_status_code"] or "-"),
            (row["last_error"] or "-")[:60],
            last.strftime("%Y-%m-%d %H:%M:%S") if last else "-",
        )
    console.print(table)


@app.command("publish")
def publish_command(
    event_type: Annotated[str, typer.Argument(metavar="EVENT_TYPE", help="e.g. order.paid")],
    *,
    data: Annotated[str, typer.Option("--data", help="Payload: a JSON object.")] = "{}",
    event_id: Annotated[
        str | None, typer.Option("--event-id", help="Idempotent: the same id never sends twice.")
    ] = None,
) -> None:
    """Publish an event to every subscribed endpoint (operators' test button).

    Usage: jobctl webhooks publish EVENT_TYPE [--data JSON] [--event-id ID]
    Example: jobctl webhooks publish order.paid --data '{"order_id": 42}' --event-id order-42
    """
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--data") from None
    try:
        published = database_call(lambda: webhooks.publish(event_type, payload, event_id=event_id))
    except JobsError as exc:
        raise _refuse(exc) from None
    console.print(f"event {published.event_id}: {len(published.jobs)} deliveries enqueued")
