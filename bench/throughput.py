"""No-op drain and the scaling curve: our ``JobTask`` (idempotency on) vs a bare Celery task.

Usage::

    python bench/throughput.py [--jobs N] [--processes 1 2 4] [--rounds R]
                               [--pool solo|prefork] [--concurrency C] [--quick]
                               [--redis-url redis://127.0.0.1:6379[/DB]]

Scenarios (``jobctl bench --only drain`` / ``--only scaling``):

- **drain**: N no-op jobs are enqueued *before* the workers start (ours with
  ``jobs.enqueue_many`` in batches of 1,000, bare with an ``apply_async`` loop); then P worker
  processes start together and the rate is taken over the window in which *all* P consume:
  from the moment the last one is ready (the counter read then) until every job has run. Sides
  alternate (bare, ours, bare, ours, ...) and the median of each is reported, at P = 1 and 2.
  Same worker settings on both sides: pool, concurrency, prefetch multiplier 1, late acks,
  JSON, no mingle/gossip/events.
- **scaling**: the same drain at P = 1, 2, 4 (the points already measured by ``drain`` in the
  same process are reused). A worker process is one ``celery worker -P solo`` OS process (its
  own consumer loop): the unit one scales out by. These machines have **2 cores**, shared with
  Redis and the driver: beyond 2 processes the curve shows contention, not scale-out.

Every drain is verified (each job ran exactly once; ours went through the policy chain: one
``jobs:done:*`` marker per job, no claims left, nothing skipped, deferred, queued or in flight);
a drain that cannot verify fails the run instead of reporting.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import BARE_QUEUE, COUNTER, OURS_QUEUE
from harness import (
    BenchError,
    Context,
    PoolSpec,
    configure,
    median,
    params_runner,
    pool_cpu,
    script_main,
    wait_until,
    worker_env,
    worker_pool,
)
from report import Chart, Row, ScenarioResult

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    import redis

#: Jobs per ``enqueue_many`` call.
BATCH = 1000
#: Ratio ours / bare the drain must reach (the policy chain may cost at most 20 %).
DRAIN_TARGET = "ratio >= 0.8"


@dataclass(frozen=True, slots=True)
class DrainParams:
    """What one set of drains measures."""

    jobs: int = 6000
    processes: tuple[int, ...] = (1, 2)
    rounds: int = 2
    pool: str = "solo"
    concurrency: int = 1


FULL = DrainParams()
QUICK = DrainParams(jobs=1500, rounds=1)
SCALING_PROCESSES = (1, 2, 4)


# -- the two sides -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Side:
    """One side of the comparison: how to enqueue, which worker app and queue, how to verify."""

    name: str
    app: str
    queue: str
    enqueue: Callable[[int], None]
    verify: Callable[[redis.Redis, int], dict[str, int]]
    #: Broker messages that ``n`` jobs make (fewer with envelopes).
    messages: Callable[[int], int] = lambda n: n
    #: Worker options (``ops.profiles``); Celery's defaults minus mingle and gossip.
    options: tuple[str, ...] = ("--without-mingle", "--without-gossip")


def count_keys(client: redis.Redis, pattern: str) -> int:
    """How many keys match ``pattern`` (SCAN, never KEYS)."""
    return sum(1 for _ in client.scan_iter(match=pattern, count=1000))


def verify_ours(client: redis.Redis, n: int) -> dict[str, int]:
    """Our drain's bookkeeping: counter, queue, in-flight hashes, done markers, skips."""
    inflight = sum(int(client.hlen(key)) for key in client.scan_iter(match="jobs:inflight:*"))
    return {
        "counter": int(client.get(COUNTER) or 0),
        "queued": int(client.llen(OURS_QUEUE)),
        "in_flight": inflight,
        "done_markers": count_keys(client, "jobs:done:*"),
        "claims_left": count_keys(client, "jobs:claim:*"),
        "skipped": int(client.get("jobs:counter:duplicates_skipped") or 0),
        "delayed": int(client.zcard("jobs:delayed")),
        "expected": n,
    }


def verify_bare(client: redis.Redis, n: int) -> dict[str, int]:
    """The bare drain's bookkeeping: counter, queue, kombu's unacked hash."""
    return {
        "counter": int(client.get(COUNTER) or 0),
        "queued": int(client.llen(BARE_QUEUE)),
        "in_flight": int(client.hlen("unacked")),
        "expected": n,
    }


def verified(checks: dict[str, int]) -> bool:
    """Every job ran exactly once and nothing is left queued, in flight or half-done."""
    n = checks["expected"]
    ok = checks["counter"] == n and checks["queued"] == 0 and checks["in_flight"] == 0
    if "done_markers" in checks:
        ok = ok and checks["done_markers"] == n and checks["claims_left"] == 0
        ok = ok and checks["skipped"] == 0 and checks["delayed"] == 0
    return ok


def enqueue_in_batches(task: Any, n: int, *, first: int = 0) -> None:
    """``jobs.enqueue_many`` of ``n`` no-op calls in batches of :data:`BATCH`; none deduplicated."""
    import jobs  # noqa: PLC0415 - after the environment is set

    for start in range(first, first + n, BATCH):
        calls = [{"n": i} for i in range(start, min(first + n, start + BATCH))]
        if any(ref.deduplicated for ref in jobs.enqueue_many(task, calls)):
            raise BenchError("enqueue_many deduplicated a job: the database was not flushed")


def sides(ctx: Context) -> tuple[Side, Side]:
    """Configure this process for the claimed database, import both task modules, the sides."""
    configure(worker_env(ctx))
    import bare_app  # noqa: PLC0415 - reads BENCH_REDIS_URL at import
    import bench_tasks  # noqa: PLC0415 - reads JOBS_* settings at import

    def enqueue_bare(n: int) -> None:
        apply_async = bare_app.noop.apply_async
        for i in range(n):
            apply_async(kwargs={"n": i})

    ours = Side(
        "ours", "workers.app", OURS_QUEUE, lambda n: enqueue_in_batches(bench_tasks.noop, n),
        verify_ours,
    )  # fmt: skip
    bare = Side("bare", "bare_app", BARE_QUEUE, enqueue_bare, verify_bare)
    return ours, bare


# -- one drain -----------------------------------------------------------------------------------


@dataclass(slots=True)
class DrainRun:
    """One drain measurement."""

    side: str
    processes: int
    round: int
    jobs: int
    measured_jobs: int
    seconds: float
    rate: float
    ready_spread: float
    worker_cpu_pct: float
    children_cpu_pct: float
    checks: dict[str, int] = field(default_factory=dict)


def drain(ctx: Context, side: Side, params: DrainParams, processes: int, number: int) -> DrainRun:
    """Enqueue N jobs, start P workers, time the window in which all P consume; verify."""
    client, n = ctx.client, params.jobs
    client.flushdb()
    side.enqueue(n)
    queued, expected = int(client.llen(side.queue)), side.messages(n)
    if queued != expected:
        raise BenchError(
            f"{side.name}: {queued} messages in {side.queue!r} after enqueue, not {expected}"
        )
    spec = PoolSpec(
        name=side.name, app=side.app, queues=side.queue, processes=processes,
        pool=params.pool, concurrency=params.concurrency, options=side.options,
    )  # fmt: skip
    with worker_pool(ctx, spec, worker_env(ctx)) as pool:
        started_at = time.time()
        done_before = int(client.get(COUNTER) or 0)
        cpu_start = pool_cpu(pool.workers)
        if done_before >= n:
            raise BenchError(
                f"{side.name}: all {n} jobs ran before the last of {processes} workers was "
                "ready: use more --jobs"
            )
        limit = time.monotonic() + max(60.0, n / 50)
        while (done := int(client.get(COUNTER) or 0)) < n:
            pool.check_alive("draining")
            if time.monotonic() > limit:
                raise BenchError(f"{side.name}: only {done}/{n} ran:\n{pool.log_tail()}")
            time.sleep(0.005)
        end_at = time.time()
        cpu_end = pool_cpu(pool.workers)
        try:
            wait_until(lambda: verified(side.verify(client, n)), 15, "acks and bookkeeping")
        except BenchError:
            raise BenchError(
                f"{side.name}: drain did not verify: {side.verify(client, n)}\n{pool.log_tail()}"
            ) from None
        checks = side.verify(client, n)
    seconds = end_at - started_at
    measured = n - done_before
    run = DrainRun(
        side=side.name,
        processes=processes,
        round=number,
        jobs=n,
        measured_jobs=measured,
        seconds=round(seconds, 4),
        rate=round(measured / seconds, 1),
        ready_spread=round(max(pool.ready) - min(pool.ready), 3),
        worker_cpu_pct=round(100 * (cpu_end[0] - cpu_start[0]) / seconds, 1),
        children_cpu_pct=round(100 * (cpu_end[1] - cpu_start[1]) / seconds, 1),
        checks=checks,
    )
    print(
        f"drain {run.side} P={processes} #{number}: {run.rate:,.0f} jobs/s ({measured:,} jobs "
        f"in {seconds:.2f} s after all ready; spread {run.ready_spread:.2f} s; CPU "
        f"workers {run.worker_cpu_pct:.0f} %, pool children {run.children_cpu_pct:.0f} %)",
        flush=True,
    )
    return run


def drains(ctx: Context, params: DrainParams) -> list[DrainRun]:
    """Every (P, round, side) drain of ``params``, alternating sides; reused within a process.

    Runs are cached in ``ctx.cache`` by (P, jobs, pool, concurrency), so the scaling curve
    measures only the process counts the drain scenario did not.
    """
    ours, bare = sides(ctx)
    cache: dict[tuple[Any, ...], list[DrainRun]] = ctx.cache.setdefault("drains", {})
    runs: list[DrainRun] = []
    for processes in params.processes:
        key = (processes, params.jobs, params.pool, params.concurrency, params.rounds)
        if key not in cache:
            cache[key] = [
                drain(ctx, side, params, processes, number)
                for number in range(1, params.rounds + 1)
                for side in (bare, ours)
            ]
        runs += cache[key]
    return runs


def rate_of(runs: list[DrainRun], side: str, processes: int) -> float:
    """Median rate of ``side`` at ``processes``."""
    return median([r.rate for r in runs if r.side == side and r.processes == processes])


def plural(n: int) -> str:
    """``1 worker process`` / ``2 worker processes``."""
    return f"{n} worker process{'es' if n != 1 else ''}"


def describe(params: DrainParams) -> dict[str, Any]:
    """The parameters as reported."""
    shape = f"-P {params.pool}" + (f" -c {params.concurrency}" if params.pool != "solo" else "")
    return {"jobs": params.jobs, "rounds": params.rounds, "worker": shape}


# -- scenarios ---------------------------------------------------------------------------------


def drain_scenario(ctx: Context, params: DrainParams | None = None) -> ScenarioResult:
    """No-op drain, ours vs bare, at 1 and 2 worker processes."""
    params = params or (QUICK if ctx.quick else FULL)
    runs = drains(ctx, params)
    rows = [
        Row(
            f"no-op drain, {plural(p)}",
            "jobs/s",
            rate_of(runs, "ours", p),
            rate_of(runs, "bare", p),
            "bare Celery",
            target=DRAIN_TARGET,
        )
        for p in params.processes
    ]
    return ScenarioResult(
        name="drain",
        title="No-op drain: JobTask (idempotency on) vs bare Celery",
        rows=rows,
        params=describe(params),
        details={"runs": [asdict(r) for r in runs]},
        charts=[
            Chart(
                file="bench-drain.png",
                kind="bars",
                title=f"No-op drain, {params.jobs:,} jobs (median of {params.rounds})",
                x=[plural(p) for p in params.processes],
                series={
                    "ours (JobTask, idempotency on)": [
                        rate_of(runs, "ours", p) for p in params.processes
                    ],
                    "bare Celery": [rate_of(runs, "bare", p) for p in params.processes],
                },
                ylabel="jobs/s",
            )
        ],
        notes=[
            (
                "Each job of ours claims and completes its idempotency key (one `jobs:done:*` "
                "marker per job, verified); bare Celery does nothing but the same `INCR`."
            ),
            (
                "Jobs are enqueued before the workers start; the rate is taken while all worker "
                "processes consume (from the last one's `worker_ready` to the last job)."
            ),
        ],
    )


def scaling_scenario(ctx: Context, params: DrainParams | None = None) -> ScenarioResult:
    """Drain rate vs worker processes 1, 2, 4 (ours and bare)."""
    base = params or (QUICK if ctx.quick else FULL)
    params = replace(base, processes=SCALING_PROCESSES)
    runs = drains(ctx, params)
    points = list(params.processes)
    ours = [rate_of(runs, "ours", p) for p in points]
    bare = [rate_of(runs, "bare", p) for p in points]
    # The 1- and 2-process rates are the drain scenario's rows: only the last point here.
    rows = [Row(f"drain, {plural(points[-1])}", "jobs/s", ours[-1], bare[-1], "bare Celery")]
    rows += [
        Row(
            f"speed-up {plural(p)} vs 1",
            "x",
            o / ours[0],
            b / bare[0],
            "bare Celery's",
            note="2 cores",
        )
        for p, o, b in zip(points[1:], ours[1:], bare[1:], strict=True)
    ]
    return ScenarioResult(
        name="scaling",
        title="Scaling curve: drain rate vs worker processes",
        rows=rows,
        params=describe(params) | {"processes": points},
        details={"runs": [asdict(r) for r in runs]},
        charts=[
            Chart(
                file="bench-scaling.png",
                kind="lines",
                title="No-op drain rate vs worker processes (2-core machine)",
                x=points,
                series={"ours": ours, "bare Celery": bare},
                xlabel="worker processes (celery worker -P solo each)",
                ylabel="jobs/s",
            )
        ],
        notes=[
            (
                "**This machine has 2 cores**, shared by the workers, Redis and the driver: the "
                "curve can rise to 2 processes at best; 4 processes show contention, not "
                "scale-out. On more cores (or hosts) each process adds its own consumer loop."
            ),
            (
                "The 1- and 2-process points are the drain scenario's measurements when both ran "
                "in the same run."
            ),
        ],
    )


# -- by hand ---------------------------------------------------------------------------------


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, help=f"jobs per drain (default {FULL.jobs})")
    parser.add_argument("--processes", type=int, nargs="+", help="worker processes (1 2)")
    parser.add_argument("--rounds", type=int, help="drains per side (median)")
    parser.add_argument("--pool", choices=("solo", "prefork"), help="worker -P (solo)")
    parser.add_argument("--concurrency", type=int, help="worker -c (1; for prefork)")


if __name__ == "__main__":
    run = params_runner(
        drain_scenario,
        quick=QUICK,
        full=FULL,
        minimum={"jobs": 1, "processes": 1, "rounds": 1, "concurrency": 1},
    )
    sys.exit(script_main(__doc__ or "", run, _arguments))
