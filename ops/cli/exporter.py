"""``jobctl exporter``: the Prometheus exporter (:mod:`ops.exporter`) in the foreground."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import typer
from rich.console import Console

from ops.exporter import DEFAULT_ADDRESS, DEFAULT_PORT, JobsCollector, serve

console = Console()


def exporter(
    address: str = typer.Option(
        DEFAULT_ADDRESS, "--address", help="Interface to bind (loopback by default)."
    ),
    port: int = typer.Option(DEFAULT_PORT, "--port", help="Port to listen on."),
) -> None:
    """Serve Prometheus metrics of queues, dead letters, breakers, buffers, views, beat.

    Every scrape of ``/metrics`` reads Redis and PostgreSQL afresh, with bounded cost; a source
    that fails shows as ``jobs_exporter_source_up{source="..."} 0`` instead of failing the
    scrape. Binds to loopback unless told otherwise. Stops on SIGTERM or Ctrl-C.

    Usage: jobctl exporter [--address A] [--port P]

    Example: jobctl exporter --address 0.0.0.0 --port 9808
    """
    from workers import logs  # noqa: PLC0415 - settings are read on use
    from workers.settings import get_settings  # noqa: PLC0415

    settings = get_settings()
    logs.configure(settings)
    collector = JobsCollector(settings)
    server = serve(address, port, collector)
    console.print(f"jobs exporter on http://{address}:{port}/metrics", highlight=False)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    server.shutdown()
    server.server_close()
    collector.close()


def register(app: typer.Typer) -> None:
    """Add ``exporter`` to the top-level app."""
    app.command()(exporter)
