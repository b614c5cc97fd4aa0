"""``jobctl bench``: run the benchmark suite (``bench/suite.py``) and regenerate its report.

The suite runs as a **subprocess** of this command, never imported: ``bench/`` is not a
package of the installed distribution (only ``jobs``, ``workers``, ``scheduler``, ``ops`` and
``migrations`` are), and each scenario sets ``JOBS_*`` for itself and its worker processes
before importing ``workers.*`` — settings and clients that must not leak into this process.
The suite is found next to the ``ops`` package (a source checkout or an editable install) or
given with ``--bench-dir``; without a checkout the command says so and exits 2.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from types import FrameType

#: Where the suite lives in a checkout, relative to the repository root.
SUITE = Path("bench") / "suite.py"


def default_bench_dir() -> Path:
    """``bench/`` of the checkout this ``ops`` package was imported from."""
    return Path(__file__).resolve().parents[2] / "bench"


def suite_command(
    suite: Path,
    *,
    quick: bool,
    only: list[str],
    list_only: bool,
    render_only: bool,
    redis_url: str | None,
    database_url: str | None,
    results_dir: Path | None,
    docs_dir: Path | None,
) -> list[str]:
    """The ``python bench/suite.py ...`` command line for these options."""
    command = [sys.executable, str(suite)]
    command += ["--quick"] if quick else []
    command += ["--list"] if list_only else []
    command += ["--render-only"] if render_only else []
    for name in only:
        command += ["--only", name]
    for flag, value in (
        ("--redis-url", redis_url),
        ("--database-url", database_url),
        ("--results-dir", results_dir),
        ("--docs-dir", docs_dir),
    ):
        if value is not None:
            command += [flag, str(value)]
    return command


def bench(
    *,
    quick: Annotated[
        bool, typer.Option("--quick", help="Quick sizes: the whole suite in under 3 minutes.")
    ] = False,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", metavar="NAME", help="Run only this scenario (repeatable)."),
    ] = None,
    list_only: Annotated[bool, typer.Option("--list", help="List the scenarios and exit.")] = False,
    render_only: Annotated[
        bool, typer.Option("--render-only", help="Regenerate the docs from saved results only.")
    ] = False,
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis-url", help="Redis server (a free database 15..8 is claimed and flushed)."
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option("--database-url", help="PostgreSQL server (scratch databases, dropped)."),
    ] = None,
    results_dir: Annotated[
        Path | None, typer.Option("--results-dir", help="Results JSON folder (bench/results).")
    ] = None,
    docs_dir: Annotated[
        Path | None, typer.Option("--docs-dir", help="Where benchmarks.md and img/ go (docs).")
    ] = None,
    bench_dir: Annotated[
        Path | None, typer.Option("--bench-dir", help="The checkout's bench/ folder.")
    ] = None,
) -> None:
    """Benchmark ours against its baselines in the same run; write the JSON, tables and charts.

    Scenarios: drain, scaling, envelopes, enqueue, latency, flash_sale, webhooks, flush,
    dlq_replay.

    Extras (only with --only): ratelimit, promoter, refresh.

    Each prints ours, the baseline and the ratio; a run saves bench/results/<UTC>.json.

    It then regenerates docs/benchmarks.md and its PNG charts (newest result per scenario).

    Exit code 1 if any measurement could not be verified (the other scenarios still run).

    Usage: jobctl bench [--quick] [--only NAME]... [--list] [--render-only]

    Example: jobctl bench --quick --only enqueue --only latency
    """
    folder = bench_dir or default_bench_dir()
    suite = folder / SUITE.name
    if not suite.is_file():
        typer.echo(
            f"jobctl bench: {suite} not found: the benchmarks live in the source checkout "
            "(bench/ is not installed); run from a checkout or pass --bench-dir",
            err=True,
        )
        raise typer.Exit(2)
    command = suite_command(
        suite,
        quick=quick,
        only=only or [],
        list_only=list_only,
        render_only=render_only,
        redis_url=redis_url,
        database_url=database_url,
        results_dir=results_dir,
        docs_dir=docs_dir,
    )
    raise typer.Exit(run_suite(command, cwd=folder.parent))


def run_suite(command: list[str], *, cwd: Path) -> int:
    """Run the suite; SIGTERM is passed on, so it can stop its workers and drop its databases."""
    process = subprocess.Popen(command, cwd=cwd)  # noqa: S603 - our interpreter, our script

    def forward(signum: int, _frame: FrameType | None) -> None:
        process.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                return process.wait()
            except KeyboardInterrupt:
                continue  # Ctrl-C reached the suite too: wait for it to clean up
    finally:
        signal.signal(signal.SIGTERM, previous)


def register(app: typer.Typer) -> None:
    """Add ``jobctl bench`` to ``app``."""
    app.command("bench")(bench)
