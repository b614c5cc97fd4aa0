"""The benchmark suite: every scenario, ours vs its baseline in the same run; one JSON, one page.

Usage::

    python bench/suite.py [--quick] [--only NAME]... [--list] [--render-only]
                          [--results-dir bench/results] [--docs-dir docs] [--no-docs]
                          [--redis-url redis://127.0.0.1:6379[/DB]] [--database-url URL]

(``jobctl bench`` runs this file.) One Redis database is claimed for the whole run (like a
test session's: flushed before and after); scenarios that need PostgreSQL create scratch
databases on ``--database-url``'s server and drop them. Each scenario module runs in its own
Python process (a scenario sets ``JOBS_*`` for itself and its workers before it imports
``workers.*``; a fresh process per module keeps one scenario's settings, clients and memory
out of the next), sequentially, so no two measurements share the CPU.

Results: ``<results-dir>/<UTC date-time>.json`` (schema in ``bench/report.py``), then
``<docs-dir>/benchmarks.md`` and ``<docs-dir>/img/bench-*.png`` are regenerated from the newest
suite result of every scenario (so ``--only flush`` refreshes one section and keeps the
others). Exit code 0 when every scenario verified, 1 when any failed (the others still run
and are reported), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report
from harness import (
    DOCS,
    RESULTS,
    BenchError,
    Context,
    bench_context,
    flushed_after,
    machine,
    raise_on_sigterm,
    save_results,
    service_arguments,
)


@dataclass(frozen=True, slots=True)
class Scenario:
    """A scenario: its name, the module and function that measure it, whether it runs by default."""

    name: str
    module: str
    function: str
    summary: str
    default: bool = True


#: Every scenario, in report order. Scenarios of one module run in one process, in this order.
SCENARIOS = (
    Scenario("drain", "throughput", "drain_scenario",
             "no-op drain, JobTask vs bare Celery, 1 and 2 worker processes"),
    Scenario("scaling", "throughput", "scaling_scenario",
             "drain rate vs worker processes 1, 2, 4 (reuses drain's points)"),
    Scenario("envelopes", "envelopes", "scenario",
             "logical drain and enqueue_many with envelopes vs Dramatiq's best and bare Celery"),
    Scenario("enqueue", "enqueue_latency", "scenario",
             "enqueue p50/p99 vs apply_async; enqueue_many vs apply_async loop"),
    Scenario("latency", "latency", "scenario",
             "end-to-end enqueue -> start p50/p99 at low load, vs bare Celery"),
    Scenario("flash_sale", "flash_sale", "scenario",
             "300,000 jobs (quick 8,000) against 2 workers: rates, memory, watermark"),
    Scenario("webhooks", "webhooks", "scenario", "signed webhook deliveries vs raw httpx"),
    Scenario("flush", "flush", "scenario", "write-buffer flush vs raw COPY"),
    Scenario("dlq_replay", "dlq_replay", "scenario",
             "jobctl dlq replay rate and peak RSS vs a raw LPUSH pipeline"),
    Scenario("ratelimit", "ratelimit", "scenario",
             "drain with a non-binding rate limit vs none", default=False),
    Scenario("promoter", "promoter", "scenario",
             "delayed-job promotion vs raw LPUSH pipeline", default=False),
    Scenario("refresh", "refresh", "scenario",
             "materialized view refresh, CONCURRENTLY vs plain", default=False),
)  # fmt: skip
NAMES = tuple(s.name for s in SCENARIOS)
SUITE = Path(__file__).resolve()


def selected(only: list[str] | None) -> list[Scenario]:
    """The scenarios to run: ``only`` (any, extras included) or every default one."""
    if not only:
        return [s for s in SCENARIOS if s.default]
    unknown = sorted(set(only) - set(NAMES))
    if unknown:
        raise ValueError(f"unknown scenario(s) {', '.join(unknown)}; one of {', '.join(NAMES)}")
    return [s for s in SCENARIOS if s.name in only]


def groups(scenarios: list[Scenario]) -> list[tuple[str, list[Scenario]]]:
    """Scenarios grouped by module, in first-appearance order."""
    out: dict[str, list[Scenario]] = {}
    for scenario in scenarios:
        out.setdefault(scenario.module, []).append(scenario)
    return list(out.items())


# -- the child process: one module's scenarios ----------------------------------------------------


def run_child(module_name: str, names: list[str], context_file: Path, out_file: Path) -> int:
    """Run ``names`` of ``module_name`` in this process; write their results to ``out_file``."""
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    ctx = Context.from_json(json.loads(context_file.read_text()))
    module = importlib.import_module(module_name)
    results = []
    with flushed_after(ctx.client):
        for scenario in (s for s in SCENARIOS if s.name in names):
            print(f"\n== {scenario.name}: {scenario.summary}", flush=True)
            started = time.monotonic()
            try:
                result = getattr(module, scenario.function)(ctx)
            except BenchError as exc:
                result = report.ScenarioResult(scenario.name, scenario.summary, error=str(exc))
            except Exception as exc:
                traceback.print_exc()
                result = report.ScenarioResult(
                    scenario.name, scenario.summary, error=f"{type(exc).__name__}: {exc}"
                )
            result.wall_seconds = round(time.monotonic() - started, 1)
            results.append(result.as_json())
            print(report.scenario_markdown(result), flush=True)
            ctx.client.flushdb()
    out_file.write_text(json.dumps(results))
    return 0


def spawn(module: str, scenarios: list[Scenario], ctx: Context, work: Path) -> list[dict[str, Any]]:
    """Run one module's scenarios in a child process; their results (failures included)."""
    context_file, out_file = work / f"{module}.context.json", work / f"{module}.results.json"
    context_file.write_text(json.dumps(ctx.as_json()))
    command = [
        sys.executable, str(SUITE), "--child", module,
        "--names", ",".join(s.name for s in scenarios),
        "--context", str(context_file), "--out", str(out_file),
    ]  # fmt: skip
    child = subprocess.Popen(command)
    try:
        code = child.wait()
    except BaseException as exc:
        # Stopped: Ctrl-C reached the child too; SIGTERM reached only us, so pass it on. Either
        # way the child gets time to stop its workers and drop its databases.
        if not isinstance(exc, KeyboardInterrupt):
            child.terminate()
        try:
            child.wait(60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        raise
    if code == 0 and out_file.exists():
        results: list[dict[str, Any]] = json.loads(out_file.read_text())
        return results
    return [
        report.ScenarioResult(s.name, s.summary, error=f"scenario process exited {code}").as_json()
        for s in scenarios
    ]


# -- the parent: claim, run every group, save, render ------------------------------------------


def load_documents(folder: Path) -> list[dict[str, Any]]:
    """Every valid results document in ``folder`` (others are skipped with a warning)."""
    documents = []
    for path in sorted(folder.glob("*.json")):
        try:
            document = json.loads(path.read_text())
            if isinstance(document, dict) and "schema" not in document:
                continue  # a per-script result from before the suite: not ours to render
            report.validate(document)
        except (ValueError, OSError) as exc:
            print(f"skipping {path.name}: {exc}"[:300], file=sys.stderr)
            continue
        documents.append(document)
    return documents


def render(results_dir: Path, docs_dir: Path) -> Path:
    """Regenerate the docs page and charts from the suite results in ``results_dir``."""
    return report.render_docs(load_documents(results_dir), docs_dir, order=NAMES)


def run_suite(args: argparse.Namespace, scenarios: list[Scenario]) -> int:
    """Claim Redis, run every group in order, save the document, render the page."""
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="bench-suite-"))
    results: list[dict[str, Any]] = []
    with bench_context(args, work) as ctx:
        for module, members in groups(scenarios):
            results += spawn(module, members, ctx, work)
    document = {
        **report.document(
            [],
            runner="suite",
            quick=args.quick,
            machine=machine(),
            argv=sys.argv,
            wall_seconds=time.monotonic() - started,
        ),
        "scenarios": results,
    }
    path = save_results(document, args.results_dir)
    print(f"\nResults: {path} (logs: {work}); {document['wall_seconds']} s")
    print("\n| scenario " + report.TABLE_HEAD[0] + "\n|---" + report.TABLE_HEAD[1])
    for scenario in results:
        if scenario["error"]:
            print(f"| {scenario['name']} | **FAILED**: {scenario['error'][:200]} | | | | |")
        else:
            print("\n".join(report.table_rows(scenario, with_scenario=True)))
    if not args.no_docs:
        print(f"Docs: {render(args.results_dir, args.docs_dir)}")
    failed = [s["name"] for s in results if s["error"]]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="scenarios:\n" + "\n".join(
            f"  {s.name:<11} {s.summary}" for s in SCENARIOS
        ),
    )  # fmt: skip
    service_arguments(parser)
    parser.add_argument("--only", action="append", metavar="NAME", help="run only NAME (repeat)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--render-only", action="store_true", help="regenerate the docs from saved results"
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--docs-dir", type=Path, default=DOCS, help="benchmarks.md + img/")
    parser.add_argument("--no-docs", action="store_true", help="do not regenerate the docs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--names", help=argparse.SUPPRESS)
    parser.add_argument("--context", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point (see the module docstring)."""
    args = parse_args(argv)
    if args.child:
        return run_child(args.child, args.names.split(","), args.context, args.out)
    if args.list:
        for s in SCENARIOS:
            print(f"{s.name:<11} {'' if s.default else '(extra) '}{s.summary}")
        return 0
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    try:
        if args.render_only:
            print(render(args.results_dir, args.docs_dir))
            return 0
        return run_suite(args, selected(args.only))
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # an unknown scenario, or nothing to render
        print(f"bench: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
