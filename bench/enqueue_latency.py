"""Enqueue: ``jobs.enqueue`` per-call latency and ``jobs.enqueue_many`` rate vs ``apply_async``.

Usage::

    python bench/enqueue_latency.py [--calls N] [--batch-jobs M] [--rounds R] [--quick]
                                    [--redis-url redis://127.0.0.1:6379[/DB]]

Same run, same claimed Redis database (flushed before and after), same process. Per round,
alternating: a loop of N ``bare_app.noop.apply_async(kwargs=...)`` calls (a bare Celery app on
kombu's stock Redis transport), a loop of N ``jobs.enqueue(bench_tasks.noop, n=i)`` calls (one
``admit.lua`` round trip: depth over the priority sub-queues vs the watermarks, dedup,
publish), the same with a ``max_age`` configured on the queue (adds the oldest-job check), and
M jobs through ``jobs.enqueue_many`` in batches of 1,000. Each loop call is timed on its own;
every loop is verified (exactly its number of messages in its queue). Reports p50 / p99 per
call (median over the rounds, target p50 ratio ours / bare <= 1.5) and the rates
(``enqueue_many`` vs the ``apply_async`` loop, target >= 3).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import BARE_QUEUE, OURS_QUEUE
from harness import (
    BenchError,
    Context,
    LoopRun,
    configure,
    median,
    params_runner,
    script_main,
    timed,
    timed_loop,
    worker_env,
)
from report import Chart, Row, ScenarioResult
from throughput import BATCH, enqueue_in_batches

if TYPE_CHECKING:
    import argparse

BARE, OURS, OURS_AGED = "bare apply_async", "ours enqueue", "ours enqueue + max_age"
MANY = "ours enqueue_many"


@dataclass(frozen=True, slots=True)
class Params:
    """Calls per latency loop, jobs per ``enqueue_many`` measurement, rounds."""

    calls: int = 3000
    batch_jobs: int = 20_000
    rounds: int = 3


FULL = Params()
QUICK = Params(calls=1000, batch_jobs=5000, rounds=1)


def use_max_age(max_age: float | None) -> None:
    """Configure (or clear) a max age on our queue for this process's next enqueues."""
    from workers.settings import get_settings  # noqa: PLC0415 - after the environment is set

    if max_age is None:
        os.environ.pop("JOBS_QUEUES", None)
    else:
        os.environ["JOBS_QUEUES"] = json.dumps({OURS_QUEUE: {"max_age": max_age}})
    get_settings.cache_clear()


def measure(ctx: Context, params: Params) -> list[LoopRun]:
    """Alternate bare, ours, ours + max_age, enqueue_many for ``rounds`` rounds; all verified."""
    configure(worker_env(ctx))
    os.environ.pop("JOBS_QUEUES", None)
    import bare_app  # noqa: PLC0415 - reads BENCH_REDIS_URL at import
    import bench_tasks  # noqa: PLC0415 - reads JOBS_* settings at import

    import jobs  # noqa: PLC0415 - after the environment is set

    client = ctx.client

    def bare_call(i: int) -> object:
        return bare_app.noop.apply_async(kwargs={"n": i})

    def ours_call(i: int) -> object:
        return jobs.enqueue(bench_tasks.noop, n=i)

    def checked(run: LoopRun, queue: str) -> LoopRun:
        queued = int(client.llen(queue))
        if queued != run.calls:
            raise BenchError(f"{run.name}: {queued} messages in {queue!r}, expected {run.calls}")
        client.flushdb()
        print(
            f"{run.name} #{run.round}: {run.rate:,.0f} jobs/s"
            + (f", p50 {run.p50_us:.0f} µs, p99 {run.p99_us:.0f} µs" if run.p50_us else ""),
            flush=True,
        )
        return run

    client.flushdb()
    for i in range(50):  # warm-up: connections, script registration, first-use imports
        bare_call(i)
        ours_call(i)
    enqueue_in_batches(bench_tasks.noop, 10, first=10**6)
    client.flushdb()
    runs: list[LoopRun] = []
    n = params.calls
    for number in range(1, params.rounds + 1):
        runs.append(checked(timed_loop(BARE, number, n, bare_call), BARE_QUEUE))
        use_max_age(None)
        runs.append(checked(timed_loop(OURS, number, n, ours_call), OURS_QUEUE))
        use_max_age(3600.0)
        runs.append(checked(timed_loop(OURS_AGED, number, n, ours_call), OURS_QUEUE))
        use_max_age(None)
        many = timed(MANY, number, params.batch_jobs,
                     lambda: enqueue_in_batches(bench_tasks.noop, params.batch_jobs))  # fmt: skip
        runs.append(checked(many, OURS_QUEUE))
    return runs


def of(runs: list[LoopRun], name: str, attribute: str) -> float:
    """Median ``attribute`` over the runs called ``name``."""
    return median([getattr(r, attribute) for r in runs if r.name == name])


def scenario(ctx: Context, params: Params | None = None) -> ScenarioResult:
    """``enqueue`` p50/p99 vs ``apply_async``; ``enqueue_many`` and ``enqueue`` loop rates."""
    params = params or (QUICK if ctx.quick else FULL)
    runs = measure(ctx, params)
    bare = "bare `apply_async`"
    rows = [
        Row("`enqueue` per call, p50", "µs", of(runs, OURS, "p50_us"), of(runs, BARE, "p50_us"),
            bare, higher_is_better=False, target="ratio <= 1.5"),
        Row("`enqueue` per call, p99", "µs", of(runs, OURS, "p99_us"), of(runs, BARE, "p99_us"),
            bare, higher_is_better=False),
        Row("`enqueue` + `max_age` check, p50", "µs", of(runs, OURS_AGED, "p50_us"),
            of(runs, BARE, "p50_us"), bare, higher_is_better=False),
        Row(f"`enqueue_many` (batches of {BATCH:,}) vs `apply_async` loop", "jobs/s",
            of(runs, MANY, "rate"), of(runs, BARE, "rate"), "`apply_async` loop",
            target="ratio >= 3"),
        Row("`enqueue` loop vs `apply_async` loop", "jobs/s", of(runs, OURS, "rate"),
            of(runs, BARE, "rate"), "`apply_async` loop"),
    ]  # fmt: skip
    return ScenarioResult(
        name="enqueue",
        title="Enqueue: `enqueue` / `enqueue_many` vs `apply_async`",
        rows=rows,
        params=asdict(params),
        details={"runs": [asdict(r) for r in runs]},
        charts=[
            Chart(
                file="bench-enqueue.png",
                kind="bars",
                title=f"Per-call enqueue latency ({params.calls:,} calls, median of "
                f"{params.rounds} rounds)",
                x=["p50", "p99"],
                series={
                    "ours `enqueue`": [of(runs, OURS, "p50_us"), of(runs, OURS, "p99_us")],
                    "ours + max_age": [
                        of(runs, OURS_AGED, "p50_us"),
                        of(runs, OURS_AGED, "p99_us"),
                    ],
                    "bare apply_async": [of(runs, BARE, "p50_us"), of(runs, BARE, "p99_us")],
                },
                ylabel="µs per call",
            )
        ],
        notes=[
            (
                "One `enqueue` is one round trip (`admit.lua`: backpressure over the priority "
                "sub-queues, dedup on the idempotency key, publish); kombu's `apply_async` "
                "builds a new Redis client per publish."
            ),
        ],
    )


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, help=f"calls per latency loop ({FULL.calls})")
    parser.add_argument("--batch-jobs", type=int, help=f"enqueue_many jobs ({FULL.batch_jobs})")
    parser.add_argument("--rounds", type=int, help=f"rounds, median reported ({FULL.rounds})")


if __name__ == "__main__":
    run = params_runner(
        scenario, quick=QUICK, full=FULL, minimum={"calls": 2, "batch_jobs": 1, "rounds": 1}
    )
    sys.exit(script_main(__doc__ or "", run, _arguments))
