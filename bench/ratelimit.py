"""Rate-limit overhead benchmark: drain rate with a limit configured but not binding vs none.

Usage::

    python bench/ratelimit.py [--jobs N] [--concurrency C] [--rounds R]
                              [--redis-url redis://127.0.0.1:6379[/DB]]

Both sides are our ``JobTask`` with the same no-op body (one ``INCR``), in the same run, on the
same claimed Redis database (claimed and flushed like ``bench/throughput.py`` does; its drain
measurement, worker launcher and verification are reused, not copied):

- **unlimited**: ``bench.noop`` (no ``rate``: the policy makes no Redis call);
- **limited**: ``bench.noop_limited`` with ``rate="100000/s"``, far above what a worker can
  drain, so every job pays the limiter script (one ``EVALSHA``) but none is ever parked.

Sides alternate (unlimited, limited, ...) and the median of each is reported with the ratio
limited / unlimited (target >= 0.85). Each drain is verified: every job ran exactly once, no
job was deferred, and the limited side's limiter state exists (the script really ran).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from bench_common import COUNTER, OURS_QUEUE  # noqa: E402 - needs bench/ on sys.path first
from throughput import (  # noqa: E402 - needs bench/ on sys.path first
    BATCH,
    Bench,
    BenchError,
    DrainRun,
    Options,
    Side,
    _raise_on_sigterm,
    announce,
    claimed_db,
    drain,
    flushed_after,
    side_env,
    verify_ours,
)

from workers import resources  # noqa: E402
from workers.task import JobTask, job  # noqa: E402

if TYPE_CHECKING:
    import redis

#: A rate no worker on these machines gets near (~1,500 jobs/s per worker).
NOT_BINDING = "100000/s"
TARGET = 0.85
#: Module name the worker imports this file as (``bench/`` is on its ``PYTHONPATH``).
MODULE = "ratelimit"


def declare() -> JobTask:
    """Declare ``bench.noop_limited`` (once the environment names the claimed database)."""

    @job(name="bench.noop_limited", queue=OURS_QUEUE, rate=NOT_BINDING)
    def noop_limited(*, n: int) -> None:  # noqa: ARG001 - the argument makes each job's key unique
        """The same side effect as ``bench.noop``, behind a rate limit that never binds."""
        resources.redis_client().incr(COUNTER)

    return noop_limited


#: Declared when a worker imports this module; the driver declares it in :func:`run`.
noop_limited = declare() if __name__ != "__main__" else None


def parse_args(argv: list[str] | None = None) -> Options:
    """Parse the command line into the throughput benchmark's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per drain")
    parser.add_argument("--concurrency", type=int, default=2, help="worker -c (prefork)")
    parser.add_argument("--rounds", type=int, default=3, help="drains per side (median)")
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379",
        help="Redis server, optionally with a database number other than 0 (it is FLUSHED)",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.concurrency < 1 or args.rounds < 1:
        parser.error("--jobs, --concurrency and --rounds must be >= 1")
    return Options(
        jobs=args.jobs,
        concurrency=args.concurrency,
        pool="prefork",
        redis_url=args.redis_url,
        rounds=args.rounds,
        loglevel="WARNING",
    )


def sides(limited_task: JobTask) -> tuple[Side, Side]:
    """The unlimited and the limited side (import after the environment is set)."""
    import bench_tasks  # noqa: PLC0415 - reads JOBS_* settings at import

    import jobs  # noqa: PLC0415
    from workers import keys  # noqa: PLC0415

    def enqueuer(task: Any) -> Any:
        def enqueue(n: int) -> None:
            for start in range(0, n, BATCH):
                calls = [{"n": i} for i in range(start, min(n, start + BATCH))]
                if any(ref.deduplicated for ref in jobs.enqueue_many(task, calls)):
                    raise BenchError("a job was deduplicated: the database was not flushed")

        return enqueue

    def verify_limited(client: redis.Redis, n: int) -> dict[str, int]:
        checks = verify_ours(client, n)
        if not client.exists(keys.rate(limited_task.name)):
            checks["counter"] = -1  # the limiter never ran: fail verification
        return checks

    unlimited = Side(
        "unlimited", "workers.app", OURS_QUEUE, enqueuer(bench_tasks.noop), verify_ours
    )
    limited = Side("limited", "workers.app", OURS_QUEUE, enqueuer(limited_task), verify_limited)
    return unlimited, limited


def run(options: Options) -> int:
    """Alternate the two sides' drains; print each, then the medians and the ratio."""
    import redis  # noqa: PLC0415

    env = side_env(options)
    env["JOBS_EXTRA_TASK_MODULES"] = json.dumps(["bench_tasks", MODULE])
    os.environ.update(env)
    os.environ.pop("JOBS_BROKER_URL", None)
    client: redis.Redis = redis.Redis.from_url(options.redis_url)
    client.ping()
    unlimited, limited = sides(noop_limited or declare())
    bench = Bench(options, client, env, Path(tempfile.mkdtemp(prefix="bench-ratelimit-")))
    started = time.monotonic()
    drains: list[DrainRun] = []
    with flushed_after(client):
        for number in range(1, options.rounds + 1):
            for side in (unlimited, limited):
                result = drain(bench, side, number)
                drains.append(result)
                announce(result)
    rate = {
        name: statistics.median(d.rate for d in drains if d.side == name)
        for name in ("unlimited", "limited")
    }
    ratio = rate["limited"] / rate["unlimited"]
    verdict = "met" if ratio >= TARGET else "MISSED"
    print(
        f"\nN={options.jobs}, prefork -c {options.concurrency}, rounds={options.rounds} "
        f"(median): unlimited {rate['unlimited']:,.0f} jobs/s, limited ({NOT_BINDING}, not "
        f"binding) {rate['limited']:,.0f} jobs/s, ratio {ratio:.3f} "
        f"(target >= {TARGET}: {verdict}); {time.monotonic() - started:.0f} s"
    )
    return 0 if ratio >= TARGET else 1


def main(argv: list[str] | None = None) -> int:
    """Claim a database, run, release it."""
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    with claimed_db(options.redis_url) as url:
        print(f"Redis database: {url} (claimed; flushed before and after)", flush=True)
        return run(replace(options, redis_url=url))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        sys.exit(1)
