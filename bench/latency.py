"""End-to-end latency at low load: enqueue -> the job starts, ours vs bare Celery.

Usage::

    python bench/latency.py [--jobs N] [--rate R] [--rounds K] [--quick]
                            [--redis-url redis://127.0.0.1:6379[/DB]]

One worker process (``celery worker -P solo``) per side, started and ready *before* the first
job, so the queue is empty and the worker idle between jobs: what is measured is how fast an
idle system picks a job up, not how fast it drains a backlog. The driver enqueues N stamp jobs
paced at R per second (``jobs.enqueue`` for ours, ``apply_async`` for bare) and notes the wall
time just before each call; the job writes ``time.time()`` into a Redis hash when it starts.
Latency = start - enqueue (same machine, same clock), in ms; p50 / p99 / max per side, sides
alternating per round (bare first).

Verified: every job started exactly once (N entries in the hash, the run counter at N), the
queue and in-flight state empty afterwards.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import COUNTER, STARTED
from harness import (
    BenchError,
    Context,
    PoolSpec,
    configure,
    params_runner,
    script_main,
    wait_until,
    worker_env,
    worker_pool,
)
from report import Chart, Row, ScenarioResult, percentile
from throughput import verified, verify_bare, verify_ours

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    import redis

#: Percentiles drawn on the chart.
CURVE = (50, 75, 90, 95, 99, 100)


@dataclass(frozen=True, slots=True)
class Params:
    """Jobs per side and round, their pace, rounds."""

    jobs: int = 200
    rate: float = 20.0
    rounds: int = 1


FULL = Params()
QUICK = Params(jobs=60, rate=30.0)


@dataclass(slots=True)
class LatencyRun:
    """One side's round: every job's enqueue -> start latency (ms)."""

    side: str
    round: int
    latencies_ms: list[float]

    def at(self, q: float) -> float:
        """The ``q``-th percentile latency."""
        return round(percentile(self.latencies_ms, q), 3)


def paced(n: int, rate: float, call: Callable[[int], object]) -> list[float]:
    """Call ``call(i)`` for i < n at ``rate`` per second; the wall time before each call."""
    sent: list[float] = []
    start = time.monotonic()
    for i in range(n):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sent.append(time.time())
        call(i)
    return sent


def measure_side(
    ctx: Context,
    *,
    side: str,
    spec: PoolSpec,
    call: Callable[[int], object],
    verify: Callable[[redis.Redis, int], dict[str, int]],
    params: Params,
    number: int,
) -> LatencyRun:
    """Start one worker, pace N jobs into the idle queue, collect every start time; verify."""
    client, n = ctx.client, params.jobs
    client.flushdb()
    with worker_pool(ctx, spec, worker_env(ctx)) as pool:
        time.sleep(0.5)  # let the worker settle into its idle wait
        sent = paced(n, params.rate, call)
        wait_until(lambda: client.hlen(STARTED) >= n, 30, f"{side}: {n} jobs started",
                   log=pool.log_tail)  # fmt: skip
        try:
            wait_until(lambda: verified(verify(client, n)), 15, "acks and bookkeeping")
        except BenchError:
            raise BenchError(f"{side}: did not verify: {verify(client, n)}") from None
        pool.check_alive("measuring")
    started = {int(k): float(v) for k, v in client.hgetall(STARTED).items()}
    if sorted(started) != list(range(n)) or int(client.get(COUNTER) or 0) != n:
        raise BenchError(f"{side}: {len(started)} distinct jobs started, expected {n} once each")
    latencies = [round((started[i] - sent[i]) * 1000, 3) for i in range(n)]
    run = LatencyRun(side, number, latencies)
    print(f"latency {side} #{number}: p50 {run.at(50):.2f} ms, p99 {run.at(99):.2f} ms, "
          f"max {run.at(100):.2f} ms ({n} jobs at {params.rate:g}/s)", flush=True)  # fmt: skip
    return run


def measure(ctx: Context, params: Params) -> list[LatencyRun]:
    """Both sides, alternating, ``rounds`` times."""
    configure(worker_env(ctx))
    import bare_app  # noqa: PLC0415 - reads BENCH_REDIS_URL at import
    import bench_tasks  # noqa: PLC0415 - reads JOBS_* settings at import

    import jobs  # noqa: PLC0415 - after the environment is set

    for i in range(5):  # warm-up: connections and scripts on the driver side
        bare_app.stamp.apply_async(kwargs={"n": i})
        jobs.enqueue(bench_tasks.stamp, n=i)
    sides: list[tuple[str, PoolSpec, Callable[[int], object], Any]] = [
        ("bare", PoolSpec("bare-latency", app="bare_app", queues="bench"),
         lambda i: bare_app.stamp.apply_async(kwargs={"n": i}), verify_bare),
        ("ours", PoolSpec("ours-latency"), lambda i: jobs.enqueue(bench_tasks.stamp, n=i),
         verify_ours),
    ]  # fmt: skip
    runs = []
    for number in range(1, params.rounds + 1):
        for side, spec, call, verify in sides:
            runs.append(
                measure_side(
                    ctx,
                    side=side,
                    spec=spec,
                    call=call,
                    verify=verify,
                    params=params,
                    number=number,
                )
            )
    return runs


def pooled(runs: list[LatencyRun], side: str) -> LatencyRun:
    """Every round of ``side`` as one sample."""
    latencies = [v for r in runs if r.side == side for v in r.latencies_ms]
    return LatencyRun(side, 0, latencies)


def scenario(ctx: Context, params: Params | None = None) -> ScenarioResult:
    """End-to-end latency p50 / p99 / max, ours vs bare."""
    params = params or (QUICK if ctx.quick else FULL)
    runs = measure(ctx, params)
    ours, bare = pooled(runs, "ours"), pooled(runs, "bare")
    rows = [
        Row(f"enqueue → start, {name}", "ms", ours.at(q), bare.at(q), "bare Celery",
            higher_is_better=False)
        for name, q in (("p50", 50), ("p99", 99), ("max", 100))
    ]  # fmt: skip
    return ScenarioResult(
        name="latency",
        title="End-to-end latency at low load (enqueue → start)",
        rows=rows,
        params=asdict(params) | {"worker": "1 process, -P solo"},
        details={"runs": [asdict(r) for r in runs]},
        charts=[
            Chart(
                file="bench-latency.png",
                kind="lines",
                title=f"Enqueue → start latency, {params.jobs} jobs at {params.rate:g}/s",
                x=list(CURVE),
                series={
                    "ours": [ours.at(q) for q in CURVE],
                    "bare Celery": [bare.at(q) for q in CURVE],
                },
                xlabel="percentile",
                ylabel="ms",
            )
        ],
        notes=[
            (
                "The worker is idle when each job arrives. Ours blocks on wake-up tokens that "
                "`enqueue` pushes (fetch and in-flight record in one Lua call); bare Celery blocks "
                "in `BRPOP`. The time includes the enqueue call itself."
            ),
        ],
    )


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, help=f"jobs per side and round ({FULL.jobs})")
    parser.add_argument("--rate", type=float, help=f"jobs per second ({FULL.rate:g})")
    parser.add_argument("--rounds", type=int, help=f"rounds ({FULL.rounds})")


if __name__ == "__main__":
    run = params_runner(
        scenario, quick=QUICK, full=FULL, minimum={"jobs": 2, "rate": 0.01, "rounds": 1}
    )
    sys.exit(script_main(__doc__ or "", run, _arguments))
