"""Throughput benchmark: our ``JobTask`` (idempotency on) vs a bare Celery task, same run.

Usage::

    python bench/throughput.py [--jobs N] [--concurrency C] [--pool prefork|solo]
                               [--redis-url redis://127.0.0.1:6379[/DB]] [--rounds R]

Measures, on one Redis database (flushed before and between measurements). The database is
claimed the way test sessions claim theirs (``jobs-tests:db:<n>`` in DB 0, see
``tests/conftest.py``), so a concurrent test run and the benchmark never flush each other's
queues; without ``/DB`` in ``--redis-url`` the first free one of 15, 14, ... 8 is used.

1. **Drain rate**: N no-op jobs are enqueued *before* a worker subprocess starts (ours with
   ``jobs.enqueue_many`` in batches of 1,000, bare with an ``apply_async`` loop); the time runs
   from the worker's ``worker_ready`` signal until every job has run. Sides alternate
   (bare, ours, bare, ours, ...) and the median of each is reported. Same worker settings on
   both sides: pool, concurrency, prefetch multiplier 1, late acks, JSON, no mingle/gossip/events.
2. **Enqueue rate**: ``jobs.enqueue_many`` (batches of 1,000) vs an ``apply_async`` loop, and a
   single ``jobs.enqueue`` loop vs the same ``apply_async`` loop (rate, p50/p99 per call).

Every measurement is verified (each job ran exactly once; ours went through the policy chain:
one ``jobs:done:*`` marker per job); a run that cannot verify fails instead of reporting.
Results go to ``bench/results/throughput-<UTC timestamp>.json`` plus a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis

from ops.workerproc import WorkerProcess

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import FrameType, ModuleType

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
BATCH = 1000
#: Seconds between progress polls while a worker drains (a GET of the counter each time).
POLL_INTERVAL = 0.005
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: The test suite's claim keys for Redis databases (``tests/conftest.py``), kept in DB 0.
DB_LOCK_PREFIX = "jobs-tests:db:"
#: Databases the benchmark may claim: the test range, highest first (test sessions go lowest
#: first, so the two rarely contend).
BENCH_DBS = range(15, 7, -1)
#: Seconds a claim outlives a benchmark killed with SIGKILL (a run takes about 3 minutes).
DB_LOCK_TTL = 900

# bench/ is sys.path[0] when this file runs as a script; make it explicit for other launches.
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from bench_common import (  # noqa: E402 - needs bench/ on sys.path first
    BARE_QUEUE,
    COUNTER,
    OURS_QUEUE,
    READY_KEY,
    REDIS_URL_ENV,
)


class BenchError(RuntimeError):
    """A measurement could not be taken or could not be verified."""


# -- options ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    """Command-line options (``redis_url`` names the claimed database once it is claimed)."""

    jobs: int
    concurrency: int
    pool: str
    redis_url: str
    rounds: int
    loglevel: str


def parse_args(argv: list[str] | None = None) -> Options:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000, help="jobs per measurement")
    parser.add_argument("--concurrency", type=int, default=2, help="worker -c")
    parser.add_argument("--pool", choices=("prefork", "solo"), default="prefork", help="worker -P")
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379",
        help="Redis server, optionally with a database number (the database is FLUSHED; "
        "0 is refused; it is claimed like a test session's)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="drain rounds per side (median)")
    parser.add_argument(
        "--loglevel", default="WARNING", help="worker log level, both sides (INFO logs per task)"
    )
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.concurrency < 1 or args.rounds < 1:
        parser.error("--jobs, --concurrency and --rounds must be >= 1")
    path = urlsplit(args.redis_url).path.strip("/")
    if path and (not path.isdigit() or int(path) == 0):
        parser.error("--redis-url: the database must be a number other than 0 (it is flushed)")
    return Options(
        jobs=args.jobs,
        concurrency=args.concurrency,
        pool=args.pool,
        redis_url=args.redis_url,
        rounds=args.rounds,
        loglevel=args.loglevel.upper(),
    )


# -- environment and the two sides ------------------------------------------------------------


def side_env(options: Options) -> dict[str, str]:
    """Environment for this process and both workers (ours reads JOBS_*, bare BENCH_*)."""
    env = {key: value for key, value in os.environ.items() if key != "JOBS_BROKER_URL"}
    pythonpath = [str(BENCH), str(REPO), *filter(None, env.get("PYTHONPATH", "").split(":"))]
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(pythonpath),
            REDIS_URL_ENV: options.redis_url,
            "JOBS_REDIS_URL": options.redis_url,
            "JOBS_EXTRA_TASK_MODULES": json.dumps(["bench_tasks"]),
            "JOBS_LOG_LEVEL": options.loglevel,
        }
    )
    return env


@dataclass(frozen=True, slots=True)
class Side:
    """One side of the comparison: how to enqueue, which worker, how to verify."""

    name: str
    app_module: str
    queue: str
    enqueue: Callable[[int], None]
    verify: Callable[[redis.Redis[Any], int], dict[str, int]]


def load_sides() -> tuple[Side, Side, ModuleType, ModuleType]:
    """Import both task modules (after the environment is set) and describe both sides."""
    import bare_app  # noqa: PLC0415 - reads BENCH_REDIS_URL at import
    import bench_tasks  # noqa: PLC0415 - reads JOBS_* settings at import

    import jobs  # noqa: PLC0415

    def enqueue_ours(n: int) -> None:
        for start in range(0, n, BATCH):
            refs = jobs.enqueue_many(
                bench_tasks.noop, [{"n": i} for i in range(start, min(n, start + BATCH))]
            )
            if any(ref.deduplicated for ref in refs):
                raise BenchError("enqueue_many deduplicated a job: the database was not flushed")

    def enqueue_bare(n: int) -> None:
        apply_async = bare_app.noop.apply_async
        for i in range(n):
            apply_async(kwargs={"n": i})

    ours = Side("ours", "workers.app", OURS_QUEUE, enqueue_ours, verify_ours)
    bare = Side("bare", "bare_app", BARE_QUEUE, enqueue_bare, verify_bare)
    return ours, bare, bench_tasks, bare_app


def count_keys(client: redis.Redis[Any], pattern: str) -> int:
    """How many keys match ``pattern`` (SCAN, never KEYS)."""
    return sum(1 for _ in client.scan_iter(match=pattern, count=1000))


def verify_ours(client: redis.Redis[Any], n: int) -> dict[str, int]:
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


def verify_bare(client: redis.Redis[Any], n: int) -> dict[str, int]:
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


# -- worker processes -------------------------------------------------------------------------


def group_cpu(pgid: int, main_pid: int) -> tuple[float, float]:
    """CPU seconds used so far by ``main_pid`` and by the rest of its process group."""
    main = others = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) != pgid:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        if int(entry.name) == main_pid:
            main += seconds
        else:
            others += seconds
    return main, others


class Worker(WorkerProcess):
    """A worker subprocess for one side, in its own session (process group), always cleaned up."""

    def __init__(self, side: Side, options: Options, env: dict[str, str], log_dir: Path) -> None:
        """Configure; use as a context manager."""
        super().__init__(
            env=env,
            log_path=log_dir / f"worker-{side.name}-{time.monotonic_ns()}.log",
            app=side.app_module,
            queues=side.queue,
            concurrency=options.concurrency,
            pool=options.pool,
            name=f"bench-{side.name}",
            loglevel=options.loglevel,
            cwd=REPO,
        )


# -- measurements -----------------------------------------------------------------------------


@dataclass(slots=True)
class DrainRun:
    """One drain measurement."""

    side: str
    round: int
    jobs: int
    seconds: float
    rate: float
    first_job_after: float
    parent_cpu_pct: float
    children_cpu_pct: float
    checks: dict[str, int] = field(default_factory=dict)


def wait_until(
    condition: Callable[[], Any], timeout: float, what: str, worker: Worker | None = None
) -> Any:
    """Poll ``condition`` until truthy; fail (with the worker's log) on timeout or worker exit."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if worker is not None and not worker.alive():
            raise BenchError(f"worker exited while waiting for {what}:\n{worker.log_tail()}")
        if time.monotonic() > deadline:
            tail = f":\n{worker.log_tail()}" if worker is not None else ""
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")
        time.sleep(POLL_INTERVAL)


@dataclass(frozen=True, slots=True)
class Bench:
    """What every measurement needs: options, the Redis client, worker env and log folder."""

    options: Options
    client: redis.Redis[Any]
    env: dict[str, str]
    log_dir: Path


def drain(bench: Bench, side: Side, number: int) -> DrainRun:
    """Enqueue N jobs, start a worker, time it from ready until all N ran; verify."""
    options, client = bench.options, bench.client
    n = options.jobs
    client.flushdb()
    side.enqueue(n)
    queued = int(client.llen(side.queue))
    if queued != n:
        raise BenchError(f"{side.name}: {queued} messages in {side.queue!r} after enqueue, not {n}")
    with Worker(side, options, bench.env, bench.log_dir) as worker:
        ready_at = float(wait_until(lambda: client.get(READY_KEY), 60, "worker ready", worker))
        cpu_start = group_cpu(worker.pid, worker.pid)
        first_at = 0.0
        limit = time.monotonic() + max(60.0, n / 50)
        while True:
            done = int(client.get(COUNTER) or 0)
            now = time.time()
            if done and not first_at:
                first_at = now
            if done >= n:
                break
            if not worker.alive():
                raise BenchError(f"{side.name} worker exited mid-drain:\n{worker.log_tail()}")
            if time.monotonic() > limit:
                raise BenchError(f"{side.name}: only {done}/{n} ran:\n{worker.log_tail()}")
            time.sleep(POLL_INTERVAL)
        end_at = now
        cpu_end = group_cpu(worker.pid, worker.pid)
        try:
            wait_until(lambda: verified(side.verify(client, n)), 10, "acks and bookkeeping")
        except BenchError:
            raise BenchError(
                f"{side.name}: drain did not verify: {side.verify(client, n)}\n{worker.log_tail()}"
            ) from None
        checks = side.verify(client, n)
    seconds = end_at - ready_at
    return DrainRun(
        side=side.name,
        round=number,
        jobs=n,
        seconds=round(seconds, 4),
        rate=round(n / seconds, 1),
        first_job_after=round(first_at - ready_at, 4),
        parent_cpu_pct=round(100 * (cpu_end[0] - cpu_start[0]) / seconds, 1),
        children_cpu_pct=round(100 * (cpu_end[1] - cpu_start[1]) / seconds, 1),
        checks=checks,
    )


@dataclass(slots=True)
class EnqueueRun:
    """One enqueue measurement (latencies only for per-call loops)."""

    name: str
    round: int
    jobs: int
    seconds: float
    rate: float
    p50_us: float | None = None
    p99_us: float | None = None


def timed_loop(name: str, number: int, n: int, call: Callable[[int], object]) -> EnqueueRun:
    """Time ``call(i)`` for i in range(n), with per-call latency percentiles."""
    latencies: list[int] = []
    clock = time.perf_counter_ns
    start = clock()
    for i in range(n):
        before = clock()
        call(i)
        latencies.append(clock() - before)
    seconds = (clock() - start) / 1e9
    cuts = statistics.quantiles(latencies, n=100) if n > 1 else [latencies[0]] * 99
    return EnqueueRun(
        name=name,
        round=number,
        jobs=n,
        seconds=round(seconds, 4),
        rate=round(n / seconds, 1),
        p50_us=round(statistics.median(latencies) / 1000, 1),
        p99_us=round(cuts[98] / 1000, 1),
    )


def enqueue_rates(
    options: Options,
    client: redis.Redis[Any],
    ours: Side,
    bench_tasks: ModuleType,
    bare_app: ModuleType,
) -> list[EnqueueRun]:
    """``enqueue_many`` vs ``apply_async`` loop vs ``enqueue`` loop, alternating, verified."""
    import jobs  # noqa: PLC0415 - after the environment is set

    n = options.jobs

    def checked(run: EnqueueRun, queue: str) -> EnqueueRun:
        queued = int(client.llen(queue))
        if queued != n:
            raise BenchError(f"{run.name}: {queued} messages in {queue!r}, expected {n}")
        client.flushdb()
        return run

    # Warm-up: connections, script registration, imports on first use.
    ours.enqueue(10)
    for i in range(10):
        bare_app.noop.apply_async(kwargs={"n": i})
        jobs.enqueue(bench_tasks.noop, n=-1 - i)
    client.flushdb()

    runs: list[EnqueueRun] = []
    for number in range(1, options.rounds + 1):
        start = time.perf_counter()
        ours.enqueue(n)
        seconds = time.perf_counter() - start
        many = EnqueueRun("ours enqueue_many", number, n, round(seconds, 4), round(n / seconds, 1))
        runs.append(checked(many, OURS_QUEUE))
        bare_loop = timed_loop(
            "bare apply_async loop",
            number,
            n,
            lambda i: bare_app.noop.apply_async(kwargs={"n": i}),
        )
        runs.append(checked(bare_loop, BARE_QUEUE))
        single = timed_loop(
            "ours enqueue loop", number, n, lambda i: jobs.enqueue(bench_tasks.noop, n=i)
        )
        runs.append(checked(single, OURS_QUEUE))
    return runs


# -- reporting --------------------------------------------------------------------------------


def label(run: DrainRun | EnqueueRun) -> str:
    """The side (drains) or the measurement name (enqueues) a run belongs to."""
    return run.side if isinstance(run, DrainRun) else run.name


def values_of(runs: list[Any], name: str, attribute: str = "rate") -> list[float]:
    """``attribute`` of every run labelled ``name``, in run order."""
    return [getattr(run, attribute) for run in runs if label(run) == name]


def median_of(runs: list[Any], name: str, attribute: str = "rate") -> float:
    """Median ``attribute`` of the runs labelled ``name``."""
    values = values_of(runs, name, attribute)
    return round(statistics.median(values), 1) if values else float("nan")


def summarize(drains: list[DrainRun], enqueues: list[EnqueueRun]) -> dict[str, Any]:
    """Medians, ratios and pass/fail against the targets."""
    ours, bare = median_of(drains, "ours"), median_of(drains, "bare")
    many = median_of(enqueues, "ours enqueue_many")
    loop = median_of(enqueues, "bare apply_async loop")
    single = median_of(enqueues, "ours enqueue loop")
    return {
        "drain_ours_rate": ours,
        "drain_bare_rate": bare,
        "drain_ratio": round(ours / bare, 3),
        "drain_target": 0.8,
        "drain_ok": ours / bare >= 0.8,
        "enqueue_many_rate": many,
        "apply_async_loop_rate": loop,
        "enqueue_ratio": round(many / loop, 2),
        "enqueue_target": 3.0,
        "enqueue_ok": many / loop >= 3.0,
        "enqueue_single_rate": single,
        "enqueue_single_ratio": round(single / loop, 3),
    }


def markdown(
    options: Options, drains: list[DrainRun], enqueues: list[EnqueueRun], summary: dict[str, Any]
) -> str:
    """A compact markdown report."""

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**MISSED**"

    def raw(name: str, runs: list[Any]) -> str:
        return ", ".join(f"{v:,.0f}" for v in values_of(runs, name))

    def cpu(name: str) -> str:
        parent = median_of(drains, name, "parent_cpu_pct")
        children = median_of(drains, name, "children_cpu_pct")
        return f"{parent:.0f} % / {children:.0f} %"

    def latency(name: str) -> str:
        p50, p99 = median_of(enqueues, name, "p50_us"), median_of(enqueues, name, "p99_us")
        return f"{p50:.0f} / {p99:.0f} µs"

    s = summary
    head = (
        f"N={options.jobs}, pool={options.pool}, concurrency={options.concurrency}, "
        f"rounds={options.rounds}, worker loglevel={options.loglevel}"
    )
    enqueue_many = f"enqueue: `enqueue_many` (batches of {BATCH}) vs `apply_async` loop"
    ours_loop, bare_loop = "ours enqueue loop", "bare apply_async loop"
    lines = [
        f"### Throughput ({head})",
        "",
        "| measurement | ours (jobs/s) | bare (jobs/s) | ratio | target | raw: ours / bare |",
        "|---|---:|---:|---:|---:|---|",
        row(
            "drain (worker ready -> all ran)",
            f"{s['drain_ours_rate']:,.0f}",
            f"{s['drain_bare_rate']:,.0f}",
            f"{s['drain_ratio']:.2f}",
            f">= 0.8 {verdict(s['drain_ok'])}",
            f"{raw('ours', drains)} / {raw('bare', drains)}",
        ),
        row(
            enqueue_many,
            f"{s['enqueue_many_rate']:,.0f}",
            f"{s['apply_async_loop_rate']:,.0f}",
            f"{s['enqueue_ratio']:.2f}",
            f">= 3 {verdict(s['enqueue_ok'])}",
            f"{raw('ours enqueue_many', enqueues)} / {raw(bare_loop, enqueues)}",
        ),
        row(
            "enqueue: `enqueue` loop vs `apply_async` loop",
            f"{s['enqueue_single_rate']:,.0f}",
            f"{s['apply_async_loop_rate']:,.0f}",
            f"{s['enqueue_single_ratio']:.2f}",
            "info",
            f"{raw(ours_loop, enqueues)} / {raw(bare_loop, enqueues)}",
        ),
        "",
        "| detail | ours | bare |",
        "|---|---:|---:|",
        row("drain CPU, worker parent / pool children (% of one core)", cpu("ours"), cpu("bare")),
        row("per-call enqueue latency p50 / p99", latency(ours_loop), latency(bare_loop)),
        "",
        (
            "Every drain verified: each job ran exactly once (counter = N), queues and in-flight "
            "empty; ours: one `jobs:done:*` marker per job, no claims left, none skipped."
        ),
    ]
    return "\n".join(lines)


def row(*cells: str) -> str:
    """One markdown table row."""
    return "| " + " | ".join(cells) + " |"


def machine() -> dict[str, Any]:
    """Versions and CPU count, for the record."""
    import celery  # noqa: PLC0415
    import kombu  # noqa: PLC0415

    return {
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis_py": redis.__version__,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


# -- the database -----------------------------------------------------------------------------


@contextmanager
def claimed_db(url: str) -> Iterator[str]:
    """Claim a database like a test session does; yields the URL of the claimed database."""
    parts = urlsplit(url)
    server = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.strip("/")
    candidates = [int(path)] if path else list(BENCH_DBS)
    locks: redis.Redis[Any] = redis.Redis.from_url(f"{server}/0")
    token = f"bench-throughput:{os.getpid()}"
    for number in candidates:
        if locks.set(f"{DB_LOCK_PREFIX}{number}", token, nx=True, ex=DB_LOCK_TTL):
            break
    else:
        holders = {n: locks.get(f"{DB_LOCK_PREFIX}{n}") for n in candidates}
        raise BenchError(f"no Redis database free: claimed by {holders} (tests running?)")
    key = f"{DB_LOCK_PREFIX}{number}"
    try:
        yield f"{server}/{number}"
    finally:
        with suppress(redis.RedisError):
            if locks.get(key) == token.encode():
                locks.delete(key)


def save_results(kind: str, document: dict[str, Any]) -> Path:
    """Write ``document`` (plus a UTC timestamp) to ``bench/results/<kind>-<stamp>.json``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{kind}-{stamp}.json"
    path.write_text(json.dumps({"timestamp": stamp, **document}, indent=2) + "\n")
    return path


def announce(run: DrainRun) -> None:
    """Print one drain's line as soon as it is measured."""
    print(
        f"drain {run.side} #{run.round}: {run.rate:,.0f} jobs/s "
        f"({run.seconds:.2f} s; CPU parent {run.parent_cpu_pct:.0f} %, "
        f"children {run.children_cpu_pct:.0f} %)",
        flush=True,
    )


# -- main -------------------------------------------------------------------------------------


def _raise_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks stop the workers."""
    raise SystemExit(128 + signum)


@contextmanager
def flushed_after(client: redis.Redis[Any]) -> Iterator[None]:
    """Leave the benchmark database empty, whatever happens."""
    try:
        yield
    finally:
        with suppress(redis.RedisError):
            client.flushdb()


def main(argv: list[str] | None = None) -> int:
    """Claim a database, run every measurement, write the JSON, print the table."""
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    with claimed_db(options.redis_url) as url:
        print(f"Redis database: {url} (claimed; flushed before and after)", flush=True)
        return run(replace(options, redis_url=url))


def run(options: Options) -> int:
    """Every measurement on ``options.redis_url``; writes the JSON and prints the table."""
    env = side_env(options)
    os.environ.update(env)  # before importing workers.*, whose settings read the environment
    os.environ.pop("JOBS_BROKER_URL", None)
    client: redis.Redis[Any] = redis.Redis.from_url(options.redis_url)
    client.ping()
    ours, bare, bench_tasks, bare_app = load_sides()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    bench = Bench(options, client, env, log_dir)
    started = time.monotonic()
    drains: list[DrainRun] = []
    with flushed_after(client):
        for number in range(1, options.rounds + 1):
            for side in (bare, ours):
                run = drain(bench, side, number)
                drains.append(run)
                announce(run)
        client.flushdb()
        enqueues = enqueue_rates(options, client, ours, bench_tasks, bare_app)
        for run in enqueues:
            latency = f", p50 {run.p50_us} µs, p99 {run.p99_us} µs" if run.p50_us else ""
            print(f"enqueue {run.name} #{run.round}: {run.rate:,.0f} jobs/s{latency}", flush=True)
    summary = summarize(drains, enqueues)
    document = {
        "options": asdict(options),
        "machine": machine(),
        "summary": summary,
        "drains": [asdict(r) for r in drains],
        "enqueues": [asdict(r) for r in enqueues],
        "wall_seconds": round(time.monotonic() - started, 1),
        "worker_logs": str(log_dir),
    }
    path = save_results("throughput", document)
    print()
    print(markdown(options, drains, enqueues, summary))
    print(f"\nResults: {path.relative_to(REPO)} (worker logs: {log_dir}); "
          f"{document['wall_seconds']} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        sys.exit(1)
