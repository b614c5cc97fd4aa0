"""Enqueue latency: one ``jobs.enqueue`` (backpressure + dedup + publish) vs bare ``apply_async``.

Usage::

    python bench/enqueue_latency.py [--jobs N] [--rounds R] [--redis-url redis://127.0.0.1:6379[/DB]]

Same run, same Redis database (claimed like a test session's, flushed before and after; see
``bench/throughput.py``), same process. Per round, alternating: a loop of N
``bare_app.noop.apply_async(kwargs=...)`` calls (a bare Celery app on kombu's stock Redis
transport), a loop of N ``jobs.enqueue(bench_tasks.noop, n=i)`` calls (one ``admit.lua`` round
trip: depth over the priority sub-queues vs the watermarks, dedup, publish), and the same with a
``max_age`` configured on the queue (adds the oldest-job check). Each call is timed on its own;
every loop is verified (N messages in its queue). Reports p50 / p99 per side (median over the
rounds) and the p50 ratio ours / bare; target <= 1.5. Results also go to
``bench/results/enqueue-latency-<UTC timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import BARE_QUEUE, OURS_QUEUE
from throughput import (
    RESULTS,
    BenchError,
    EnqueueRun,
    Options,
    _raise_on_sigterm,
    claimed_db,
    flushed_after,
    load_sides,
    machine,
    save_results,
    side_env,
    timed_loop,
)

if TYPE_CHECKING:
    from collections.abc import Callable

#: p50 latency ratio ours / bare apply_async that the issue asks for (at most).
TARGET = 1.5
BARE, OURS, OURS_AGED = "bare apply_async", "ours enqueue", "ours enqueue + max_age"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3000, help="calls per loop")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (median reported)")
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379",
        help="Redis server, optionally with a database number (FLUSHED; claimed like a test's)",
    )
    args = parser.parse_args(argv)
    if args.jobs < 2 or args.rounds < 1:
        parser.error("--jobs must be >= 2 and --rounds >= 1")
    return args


def use_max_age(max_age: float | None) -> None:
    """Configure (or clear) a max age on our queue for this process's next enqueues."""
    from workers.settings import get_settings  # noqa: PLC0415 - after the environment is set

    if max_age is None:
        os.environ.pop("JOBS_QUEUES", None)
    else:
        os.environ["JOBS_QUEUES"] = json.dumps({OURS_QUEUE: {"max_age": max_age}})
    get_settings.cache_clear()


def measure(jobs: int, rounds: int, client: redis.Redis) -> list[EnqueueRun]:
    """Alternate bare, ours, ours + max_age for ``rounds`` rounds; every loop verified."""
    import jobs as jobs_api  # noqa: PLC0415 - after the environment is set

    _, _, bench_tasks, bare_app = load_sides()
    bare_call: Callable[[int], object] = lambda i: bare_app.noop.apply_async(kwargs={"n": i})  # noqa: E731
    ours_call: Callable[[int], object] = lambda i: jobs_api.enqueue(bench_tasks.noop, n=i)  # noqa: E731

    def checked(run: EnqueueRun, queue: str) -> EnqueueRun:
        queued = int(client.llen(queue))
        if queued != jobs:
            raise BenchError(f"{run.name}: {queued} messages in {queue!r}, expected {jobs}")
        client.flushdb()
        return run

    for i in range(50):  # warm-up: connections, script registration, first-use imports
        bare_call(i)
        ours_call(i)
    client.flushdb()
    runs: list[EnqueueRun] = []
    for number in range(1, rounds + 1):
        runs.append(checked(timed_loop(BARE, number, jobs, bare_call), BARE_QUEUE))
        use_max_age(None)
        runs.append(checked(timed_loop(OURS, number, jobs, ours_call), OURS_QUEUE))
        use_max_age(3600.0)
        runs.append(checked(timed_loop(OURS_AGED, number, jobs, ours_call), OURS_QUEUE))
        use_max_age(None)
    return runs


def median(runs: list[EnqueueRun], name: str, attribute: str) -> float:
    """Median of ``attribute`` over the runs called ``name``."""
    return float(statistics.median(getattr(r, attribute) for r in runs if r.name == name))


def report(runs: list[EnqueueRun], jobs: int, rounds: int) -> dict[str, Any]:
    """Print the table; return the summary."""
    bare_p50 = median(runs, BARE, "p50_us")
    summary: dict[str, Any] = {}
    print(f"\n### Enqueue latency (N={jobs} calls per loop, {rounds} rounds, median of rounds)\n")
    print("| call | p50 (µs) | p99 (µs) | p50 ratio vs bare | per-round p50 |")
    print("|---|---:|---:|---:|---|")
    for name in (BARE, OURS, OURS_AGED):
        p50, p99 = median(runs, name, "p50_us"), median(runs, name, "p99_us")
        ratio = p50 / bare_p50
        rounds_p50 = ", ".join(f"{r.p50_us:.0f}" for r in runs if r.name == name)
        print(f"| {name} | {p50:.0f} | {p99:.0f} | {ratio:.2f} | {rounds_p50} |")
        summary[name] = {"p50_us": p50, "p99_us": p99, "p50_ratio": round(ratio, 3)}
    ratio = summary[OURS]["p50_ratio"]
    verdict = "met" if ratio <= TARGET else "MISSED"
    print(f"\np50 ratio ours / bare apply_async: {ratio:.2f} (target <= {TARGET}: {verdict})")
    summary["ratio"], summary["target"], summary["ok"] = ratio, TARGET, ratio <= TARGET
    return summary


def main(argv: list[str] | None = None) -> int:
    """Claim a database, measure, print, write the JSON."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    started = time.monotonic()
    with claimed_db(args.redis_url) as url:
        print(f"Redis database: {url} (claimed; flushed before and after)", flush=True)
        options = Options(
            jobs=args.jobs, concurrency=1, pool="solo", redis_url=url, rounds=args.rounds,
            loglevel="WARNING",
        )  # fmt: skip
        os.environ.update(side_env(options))  # before workers.* reads its settings
        os.environ.pop("JOBS_BROKER_URL", None)
        os.environ.pop("JOBS_QUEUES", None)
        client: redis.Redis = redis.Redis.from_url(url)
        client.flushdb()
        with flushed_after(client):
            runs = measure(args.jobs, args.rounds, client)
    summary = report(runs, args.jobs, args.rounds)
    document = {
        "options": vars(args),
        "machine": machine(),
        "summary": summary,
        "runs": [asdict(r) for r in runs],
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    path = save_results("enqueue-latency", document)
    print(f"Results: {path.relative_to(RESULTS.parent.parent)}; {document['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        sys.exit(1)
