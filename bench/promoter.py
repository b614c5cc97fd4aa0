"""Promoter: due jobs moved from the delayed store to their queue per second (extra).

Usage::

    python bench/promoter.py [--jobs N] [--rounds R] [--quick]
                             [--redis-url redis://127.0.0.1:6379[/DB]]

Scenario ``promoter`` of ``jobctl bench`` (not run by default: ``--only promoter``). Same run,
same claimed Redis database: ours (``promote.lua`` in batches of 1,000, as workers'
housekeeping runs it) vs a raw baseline that LPUSHes the same messages in pipelines of 1,000
(the floor any promoter pays). Target: >= 10,000 jobs/s. Verified: every message is in the
queue afterwards, the delayed store is empty.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BenchError, Context, configure, median, params_runner, script_main, worker_env
from report import Row, ScenarioResult

if TYPE_CHECKING:
    import argparse

BATCH = 1000


@dataclass(frozen=True, slots=True)
class Params:
    """Messages per measurement, rounds."""

    jobs: int = 100_000
    rounds: int = 2


FULL = Params()
QUICK = Params(jobs=20_000, rounds=1)


def scenario(ctx: Context, params: Params | None = None) -> ScenarioResult:
    """Both sides, alternating; rates and the ratio."""
    params = params or (QUICK if ctx.quick else FULL)
    configure(worker_env(ctx))
    from workers import keys  # noqa: PLC0415 - settings read the environment set above
    from workers.housekeeping import Housekeeper  # noqa: PLC0415
    from workers.job import Job  # noqa: PLC0415
    from workers.publisher import envelope  # noqa: PLC0415
    from workers.settings import get_settings  # noqa: PLC0415 - after the environment is set

    client = ctx.client
    promoter = Housekeeper(get_settings())
    promoter.connect()
    messages = [
        json.dumps(envelope(Job(id=f"j{n}", task="bench.noop", key=f"k{n}", queue="default",
                                args=(), kwargs={"n": n})))
        for n in range(params.jobs)
    ]  # fmt: skip
    rates: dict[str, list[float]] = {"ours": [], "raw": []}
    for _ in range(params.rounds):
        client.flushdb()
        started = time.perf_counter()
        for start in range(0, len(messages), BATCH):
            with client.pipeline(transaction=False) as pipe:
                pipe.lpush("default", *messages[start : start + BATCH])
                pipe.execute()
        rates["raw"].append(params.jobs / (time.perf_counter() - started))
        if client.llen("default") != params.jobs:
            raise BenchError(f"raw: {client.llen('default')} queued, expected {params.jobs}")
        client.flushdb()
        due = time.time() - 1
        for start in range(0, len(messages), BATCH):
            chunk = messages[start : start + BATCH]
            client.zadd(keys.delayed(), {f"default\n{m}": due for m in chunk})
        started = time.perf_counter()
        moved = 0
        while moved < params.jobs:
            step = promoter.promote_due(time.time())
            if not step:
                raise BenchError(f"promoter stalled at {moved} / {params.jobs}")
            moved += step
        rates["ours"].append(params.jobs / (time.perf_counter() - started))
        if client.llen("default") != params.jobs or client.zcard(keys.delayed()):
            raise BenchError(f"ours: {client.llen('default')} queued, expected {params.jobs}")
        print(f"promoter {rates['ours'][-1]:,.0f} jobs/s, raw LPUSH {rates['raw'][-1]:,.0f}/s",
              flush=True)  # fmt: skip
    return ScenarioResult(
        name="promoter",
        title="Delayed-job promoter vs raw pipelined LPUSH",
        rows=[Row(f"due jobs promoted (promote.lua, {BATCH:,} per call)", "jobs/s",
                  median(rates["ours"]), median(rates["raw"]), "raw LPUSH pipeline",
                  target="ours >= 10000")],
        params=asdict(params),
        details={"rates": rates},
    )  # fmt: skip


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, help=f"messages ({FULL.jobs:,})")
    parser.add_argument("--rounds", type=int, help=f"rounds ({FULL.rounds})")


if __name__ == "__main__":
    run = params_runner(scenario, quick=QUICK, full=FULL, minimum={"jobs": 1, "rounds": 1})
    sys.exit(script_main(__doc__ or "", run, _arguments))
