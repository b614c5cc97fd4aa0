"""Rate-limit overhead: drain rate with a limit configured but not binding vs none (extra).

Usage::

    python bench/ratelimit.py [--jobs N] [--processes P] [--rounds R] [--quick]
                              [--redis-url redis://127.0.0.1:6379[/DB]]

Scenario ``ratelimit`` of ``jobctl bench`` (not run by default: ``--only ratelimit``). Both
sides are our ``JobTask`` with the same no-op body (one ``INCR``), drained by the same workers
in the same run (the drain, worker launcher and verification of ``bench/throughput.py``):

- **unlimited**: ``bench.noop`` (no ``rate``: the policy makes no Redis call);
- **limited**: ``bench.noop_limited`` with ``rate="100000/s"``, far above what a worker can
  drain, so every job pays the limiter script (one ``EVALSHA``) but none is ever parked.

Sides alternate and the median of each is reported with the ratio limited / unlimited (target
>= 0.85). Each drain is verified: every job ran exactly once, none was deferred, and the
limited side's limiter state exists (the script really ran).
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import OURS_QUEUE
from harness import Context, configure, median, params_runner, script_main, worker_env
from report import Row, ScenarioResult
from throughput import DrainParams, DrainRun, Side, drain, enqueue_in_batches, verify_ours

if TYPE_CHECKING:
    import argparse

    import redis

TARGET = "ratio >= 0.85"
FULL = DrainParams(jobs=5000, processes=(2,), rounds=3)
QUICK = DrainParams(jobs=2000, processes=(2,), rounds=1)


def sides(ctx: Context) -> tuple[Side, Side]:
    """The unlimited and the limited side."""
    configure(worker_env(ctx))
    import bench_tasks  # noqa: PLC0415 - reads JOBS_* settings at import

    from workers import keys  # noqa: PLC0415 - settings read the environment set above

    def verify_limited(client: redis.Redis, n: int) -> dict[str, int]:
        checks = verify_ours(client, n)
        if not client.exists(keys.rate(bench_tasks.noop_limited.name)):
            checks["counter"] = -1  # the limiter never ran: fail verification
        return checks

    unlimited = Side(
        "unlimited",
        "workers.app",
        OURS_QUEUE,
        lambda n: enqueue_in_batches(bench_tasks.noop, n),
        verify_ours,
    )
    limited = Side(
        "limited",
        "workers.app",
        OURS_QUEUE,
        lambda n: enqueue_in_batches(bench_tasks.noop_limited, n),
        verify_limited,
    )
    return unlimited, limited  # fmt: skip


def scenario(ctx: Context, params: DrainParams | None = None) -> ScenarioResult:
    """Alternate the two sides' drains; the medians and the ratio."""
    params = params or (QUICK if ctx.quick else FULL)
    unlimited, limited = sides(ctx)
    processes = params.processes[0]
    runs: list[DrainRun] = [
        drain(ctx, side, params, processes, number)
        for number in range(1, params.rounds + 1)
        for side in (unlimited, limited)
    ]
    rate = {
        name: median([r.rate for r in runs if r.side == name]) for name in ("unlimited", "limited")
    }
    return ScenarioResult(
        name="ratelimit",
        title="Rate-limit overhead: a non-binding limit vs none",
        rows=[Row(f"no-op drain, {processes} worker processes, rate 100000/s (never binds)",
                  "jobs/s", rate["limited"], rate["unlimited"], "no limit", target=TARGET)],
        params={"jobs": params.jobs, "rounds": params.rounds, "processes": processes},
        details={"runs": [asdict(r) for r in runs]},
        notes=["Every limited job pays one limiter `EVALSHA`; none is ever deferred (verified)."],
    )  # fmt: skip


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, help=f"jobs per drain ({FULL.jobs})")
    parser.add_argument("--processes", type=int, nargs=1, help="worker processes (2)")
    parser.add_argument("--rounds", type=int, help=f"drains per side ({FULL.rounds})")


if __name__ == "__main__":
    run = params_runner(
        scenario, quick=QUICK, full=FULL, minimum={"jobs": 1, "processes": 1, "rounds": 1}
    )
    sys.exit(script_main(__doc__ or "", run, _arguments))
