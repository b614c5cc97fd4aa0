"""Webhook delivery throughput: our ``webhooks.deliver`` workers vs a raw httpx loop, same run.

Usage::

    python bench/webhooks.py [--events M] [--concurrency N [N ...]] [--latency S [S ...]]
                             [--rounds R] [--processes P] [--pool threads|gevent] [--quick]
                             [--redis-url redis://127.0.0.1:6379[/DB]] [--database-url URL]

Scenario ``webhooks`` of ``jobctl bench``: M=1,500 at N=8 and N=32, 50 ms, 3 rounds;
``--quick``: M=200 at N=8, 50 ms, 1 round.

Deliveries per second to a local receiver (``bench/webhook_receiver.py``: its own process, an
asyncio HTTP/1.1 keep-alive server that verifies every signature and answers 200 after
``--latency`` seconds), at concurrency N, for two sides measured alternately in the same run
(median of the rounds, ratio ours / raw, target >= 0.7):

- **ours**: one endpoint registered with ``store.add_endpoint`` (its secret is the receiver's),
  M events published with ``jobs.webhooks.publish`` *before* any worker starts (enqueue cost
  excluded, like ``bench/throughput.py``'s drain), then ``celery worker -Q webhooks -P threads``
  with N threads in total (``--processes`` workers of N / P threads each) drains them. The time
  runs from the first worker's ``worker_ready`` until every delivery row is ``delivered``.
  Each delivery pays the whole pipeline: broker fetch, the policy chain (idempotency claim,
  breaker, attempt accounting, ack), loading the delivery, endpoint and body from Postgres,
  signing, the SSRF-guarded POST and recording the outcome row.
- **raw**: N threads sharing one ``httpx.Client`` (keep-alive pool of N) POST M pre-built
  bodies of the same shape, each with fresh ``signed_headers`` (new timestamp per request),
  until M requests are done; the time runs from the first request to the last answer.

Both are verified or the run fails: the receiver counted exactly M requests, no duplicate
``(path, webhook-id)``, no bad signature; ours also has M ``delivered`` rows and nothing else,
M idempotency markers, nothing queued, in flight, delayed or dead-lettered.

Environment of the workers: a claimed Redis database (like ``bench/throughput.py``), a fresh
PostgreSQL database ``jobs_bench_<hex>`` created, migrated and dropped by this run,
``JOBS_WEBHOOK_ALLOW_HOSTS='["127.0.0.1"]'`` (the receiver is on loopback, which the SSRF guard
refuses otherwise) and ``JOBS_WEBHOOK_HOST_RATE=''`` (no per-host limit: the default 100/s
would be what we measured). The per-host breaker stays on (it is part of the cost).

Why ``-P threads`` for the I/O-bound webhooks queue (not gevent, not prefork):

- Everything a delivery touches is blocking: psycopg (Postgres), redis-py, httpx's sync client.
  Threads release the GIL in every socket wait, so N threads overlap N HTTP round trips just
  as N greenlets would, with no monkey-patching and the same ``JobTask`` code path the tests
  exercise. The CPU per delivery (Celery, policies, SQL, signing, HTTP framing) is the same
  Python under either pool: greenlets make it cooperative, not cheaper, and this benchmark is
  bound by that CPU (see the results), not by the number of waits in flight.
- gevent needs ``monkey.patch_all()`` before anything else is imported (Celery's ``-P gevent``
  does it) and then every blocking C call must cooperate: psycopg >= 3.1.14 detects gevent and
  waits cooperatively, but one unpatched call stalls every greenlet of the process, silently.
  Measured here (gevent 26.9 installed apart, ``PYTHONPATH=<dir> ... --pool gevent``): the
  worker does not even start: ``patch_all`` removes ``select.epoll``, and httpcore imports
  trio when it is installed, whose import needs ``select.epoll`` (AttributeError at import).
- Prefork would need one process per in-flight delivery (32 processes of ~60 MB for N=32);
  threads keep one process, one httpx keep-alive pool shared by all threads, one SQLAlchemy
  pool.

Why ``--processes`` (default 1): a threads worker is one process, so one GIL; our pipeline
costs ~5 ms of CPU per delivery (vs ~0.8 ms for a raw signed POST), so one process plateaus
near one core (~150-170 deliveries/s here) whatever the receiver latency. One process of N
threads is also the raw side's shape (one process, N threads, one GIL). Two processes of N/2
threads (``--processes 2``) were measured on the same machine (N=32, M=2000, 3 rounds): +25 %
at 50 ms and +0 % at 100 ms in one run, +4 % and -14 % in another (load average 5-7 from other
jobs), against one process: the second core is shared with Redis,
Postgres, the receiver and whatever else runs, so on these 2-core machines it is not a
reliable gain. In production, run one threads worker per core.

"""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
import threading
import time
from contextlib import suppress
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import httpx
import redis

from ops.profiles import pool_options

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    BENCH,
    POLL_INTERVAL,
    BenchError,
    Context,
    PoolSpec,
    configure,
    fresh_database,
    median,
    pool_cpu,
    process_cpu,
    script_main,
    wait_until,
    worker_env,
    worker_pool,
)
from report import Chart, Row, ScenarioResult
from webhook_receiver import SECRET_ENV

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from sqlalchemy.engine import Engine

#: Ratio ours / raw the issue asks for (at least).
TARGET = 0.7
#: The event type every benchmark event is published as.
EVENT_TYPE = "bench.order_paid"
WEBHOOK_TABLES = (
    "TRUNCATE webhook_deliveries, webhook_messages, webhook_endpoints, dead_letters "
    "RESTART IDENTITY"
)


# -- options ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    """What one set of measurements takes (one Options per concurrency N)."""

    events: int = 1500
    concurrency: int = 8
    latencies: tuple[float, ...] = (0.05,)
    rounds: int = 3
    processes: int = 1
    pool: str = "threads"
    db_pool_size: int | None = None


FULL = (Options(), Options(concurrency=32))
QUICK = (Options(events=200, rounds=1),)


def webhook_env(ctx: Context, options: Options, database_url: str) -> dict[str, str]:
    """Environment of this process and of the workers."""
    extra = {
        "JOBS_DATABASE_URL": database_url,
        "JOBS_WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',
        "JOBS_WEBHOOK_HOST_RATE": "",
    }
    if options.db_pool_size is not None:
        extra["JOBS_DB_POOL_SIZE"] = str(options.db_pool_size)
    # The task module too, in case the catalogue does not list it: a module named twice is
    # imported once.
    return worker_env(ctx, task_modules=("bench_tasks", "jobs.webhooks.tasks"), **extra)


class Receiver:
    """``bench/webhook_receiver.py`` as a subprocess; its counters over HTTP."""

    def __init__(self, secret: str, latency: float, log_dir: Path) -> None:
        """Configure; use as a context manager."""
        self.secret = secret
        self.latency = latency
        # One file pair per receiver: a port file left by an earlier one must not be read.
        self.log_path = log_dir / f"receiver-{latency}-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.client: httpx.Client | None = None

    def __enter__(self) -> Self:
        """Start the receiver and wait for its port."""
        port_file = self.log_path.with_suffix(".port")
        port_file.unlink(missing_ok=True)
        with self.log_path.open("wb") as log:
            command = [sys.executable, str(BENCH / "webhook_receiver.py")]
            command += ["--latency", repr(self.latency), "--port-file", str(port_file)]
            self.process = subprocess.Popen(
                command,
                env={**os.environ, SECRET_ENV: self.secret},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"receiver did not start:\n{self.log_path.read_text()}")
            time.sleep(0.02)
        self.port = int(port_file.read_text())
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5)
        return self

    def __exit__(self, *_: object) -> None:
        """Stop the receiver."""
        if self.client is not None:
            self.client.close()
        if self.process is not None:
            with suppress(ProcessLookupError):
                self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    @property
    def pid(self) -> int:
        """The receiver's process id."""
        assert self.process is not None
        return self.process.pid

    def url(self, path: str = "/hook") -> str:
        """Where to POST."""
        return f"http://127.0.0.1:{self.port}{path}"

    def stats(self) -> dict[str, int]:
        """requests, bad_signatures, duplicates, connections."""
        assert self.client is not None
        result: dict[str, int] = self.client.get("/stats").json()
        return result

    def reset(self) -> None:
        """Zero the counters."""
        assert self.client is not None
        self.client.post("/reset").raise_for_status()

    def cpu(self) -> float:
        """CPU seconds the receiver used so far."""
        return process_cpu(self.pid)


@dataclass(slots=True)
class Run:
    """One measurement of one side."""

    side: str
    latency: float
    round: int
    deliveries: int
    seconds: float
    rate: float
    #: CPU of the side's process(es) and of the receiver, % of one core over ``seconds``.
    side_cpu_pct: float
    receiver_cpu_pct: float
    connections: int
    publish_seconds: float | None = None
    first_ready_to_last_ready: float | None = None
    checks: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Bench:
    """What every measurement needs."""

    ctx: Context
    options: Options
    client: redis.Redis
    engine: Engine
    env: dict[str, str]
    secret: str


def payload(i: int) -> dict[str, Any]:
    """A realistic event payload (~300 bytes of JSON once wrapped)."""
    return {
        "order_id": f"ord_{i:08d}",
        "amount": "129.90",
        "currency": "EUR",
        "customer": {"id": f"cus_{i % 997:06d}", "email": f"buyer{i % 997}@example.com"},
        "items": [{"sku": "SKU-1042", "quantity": 2}, {"sku": "SKU-2001", "quantity": 1}],
        "paid_at": "2025-01-01T12:00:00Z",
    }


def measure_raw(bench: Bench, receiver: Receiver, latency: float, number: int) -> Run:
    """N threads, one shared keep-alive httpx.Client, M signed POSTs; verified."""
    from jobs.webhooks.publish import encode_event, new_event_id  # noqa: PLC0415
    from jobs.webhooks.signing import signed_headers  # noqa: PLC0415
    from workers.settings import get_settings  # noqa: PLC0415 - after the environment is set

    options = bench.options
    m, n = options.events, options.concurrency
    now = datetime.now(UTC)
    bodies = [(new_event_id(), encode_event(EVENT_TYPE, payload(i), at=now)) for i in range(m)]
    url = receiver.url()
    secrets = [bench.secret]
    receiver.reset()
    client = httpx.Client(
        limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
        timeout=httpx.Timeout(10.0, connect=3.0),
        follow_redirects=False,
        headers={"user-agent": get_settings().webhook_user_agent},
    )
    counter = itertools.count()
    failures: list[str] = []

    def send() -> None:
        while (i := next(counter)) < m:
            event_id, body = bodies[i]
            headers = signed_headers(
                secrets, message_id=event_id, timestamp=int(time.time()), body=body, attempt=1
            )
            try:
                answer = client.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                return
            if answer.status_code != httpx.codes.OK:
                failures.append(f"HTTP {answer.status_code}")
                return

    threads = [threading.Thread(target=send, name=f"raw-{k}") for k in range(n)]
    cpu_before, receiver_before = os.times(), receiver.cpu()
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    cpu_after, receiver_after = os.times(), receiver.cpu()
    stats = receiver.stats()
    client.close()
    if failures:
        raise BenchError(f"raw: {len(failures)} requests failed, first: {failures[0]}")
    checks = {"receiver": stats, "expected": m}
    if stats["requests"] != m or stats["duplicates"] or stats["bad_signatures"]:
        raise BenchError(f"raw: did not verify: {checks}")
    side_cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    return Run(
        side="raw",
        latency=latency,
        round=number,
        deliveries=m,
        seconds=round(seconds, 4),
        rate=round(m / seconds, 1),
        side_cpu_pct=round(100 * side_cpu / seconds, 1),
        receiver_cpu_pct=round(100 * (receiver_after - receiver_before) / seconds, 1),
        connections=stats["connections"],
        checks=checks,
    )


def publish_events(bench: Bench, receiver: Receiver) -> float:
    """Empty the tables and Redis, register the endpoint, publish M events; returns seconds."""
    from jobs.webhooks import store  # noqa: PLC0415
    from jobs.webhooks.publish import publish  # noqa: PLC0415

    with bench.engine.begin() as conn:
        conn.exec_driver_sql(WEBHOOK_TABLES)
    bench.client.flushdb()
    store.add_endpoint(
        bench.engine, url=receiver.url(), event_types=[EVENT_TYPE], secret=bench.secret
    )
    m = bench.options.events
    started = time.perf_counter()
    for i in range(m):
        published = publish(EVENT_TYPE, payload(i))
        if len(published.jobs) != 1 or published.jobs[0].deduplicated:
            raise BenchError(f"publish {i}: expected one new job, got {published.jobs}")
    seconds = time.perf_counter() - started
    queued = queue_depth(bench.client)
    if queued != m:
        raise BenchError(f"ours: {queued} messages queued on 'webhooks' after publishing {m}")
    return seconds


def queue_depth(client: redis.Redis) -> int:
    """Messages in the ``webhooks`` queue, every priority sub-queue included."""
    return sum(
        int(client.llen(key))
        for key in client.scan_iter(match="webhooks*", count=1000)
        if client.type(key) == b"list"
    )


def verify_ours(bench: Bench) -> dict[str, Any]:
    """Bookkeeping after a drain: rows, markers, queue, in-flight, delayed, dead letters."""
    from jobs.webhooks import store  # noqa: PLC0415

    client = bench.client
    with bench.engine.connect() as conn:
        dead = conn.exec_driver_sql("SELECT count(*) FROM dead_letters").scalar_one()
    inflight = sum(int(client.hlen(key)) for key in client.scan_iter(match="jobs:inflight:*"))
    return {
        "rows": store.delivery_counts(bench.engine),
        "done_markers": sum(1 for _ in client.scan_iter(match="jobs:done:*", count=1000)),
        "claims_left": sum(1 for _ in client.scan_iter(match="jobs:claim:*", count=1000)),
        "queued": queue_depth(client),
        "in_flight": inflight,
        "delayed": int(client.zcard("jobs:delayed")),
        "dead_letters": int(dead),
    }


def ours_verified(checks: dict[str, Any], m: int) -> bool:
    """Exactly M delivered rows, M markers, nothing queued, in flight, delayed or dead."""
    return bool(
        checks["rows"] == {"delivered": m}
        and checks["done_markers"] == m
        and checks["claims_left"] == 0
        and checks["queued"] == 0
        and checks["in_flight"] == 0
        and checks["delayed"] == 0
        and checks["dead_letters"] == 0
    )


def delivered(bench: Bench) -> int:
    """Delivery rows in status ``delivered`` (one indexed-enough count over M rows)."""
    from jobs.webhooks import store  # noqa: PLC0415

    return store.delivery_counts(bench.engine).get("delivered", 0)


def measure_ours(bench: Bench, receiver: Receiver, latency: float, number: int) -> Run:
    """Publish M events, start the workers, time first ready -> every row delivered; verified."""
    options = bench.options
    m = options.events
    publish_seconds = publish_events(bench, receiver)
    receiver.reset()
    limit = max(60.0, m / 20)
    spec = PoolSpec(
        name="webhooks", queues="webhooks", processes=options.processes, pool=options.pool,
        concurrency=options.concurrency // options.processes,
        options=("--without-mingle", "--without-gossip", *pool_options(options.pool, [])),
    )  # fmt: skip
    with worker_pool(bench.ctx, spec, bench.env) as pool:
        ready = pool.ready
        cpu_before = sum(pool_cpu(pool.workers))
        receiver_before = receiver.cpu()
        deadline = time.monotonic() + limit

        def progress(count: Callable[[], int]) -> None:
            while count() < m:
                pool.check_alive("delivering")
                if time.monotonic() > deadline:
                    tail = pool.log_tail()
                    raise BenchError(f"ours: {delivered(bench)}/{m} delivered in {limit}s:\n{tail}")
                time.sleep(POLL_INTERVAL)

        progress(lambda: receiver.stats()["requests"])  # cheap: no database query
        progress(lambda: delivered(bench))  # the rows commit just after the answers
        end = time.time()
        cpu_after = sum(pool_cpu(pool.workers))
        receiver_after = receiver.cpu()
        try:
            checks = wait_until(
                lambda: next((c for c in [verify_ours(bench)] if ours_verified(c, m)), None),
                10,
                "acks and bookkeeping",
            )
        except BenchError:
            raise BenchError(
                f"ours: drain did not verify: {verify_ours(bench)}\n{pool.log_tail()}"
            ) from None
        stats = receiver.stats()
    checks = {**checks, "receiver": stats, "expected": m}
    if stats["requests"] != m or stats["duplicates"] or stats["bad_signatures"]:
        raise BenchError(f"ours: receiver did not verify: {checks}")
    seconds = end - min(ready)
    return Run(
        side="ours",
        latency=latency,
        round=number,
        deliveries=m,
        seconds=round(seconds, 4),
        rate=round(m / seconds, 1),
        side_cpu_pct=round(100 * (cpu_after - cpu_before) / seconds, 1),
        receiver_cpu_pct=round(100 * (receiver_after - receiver_before) / seconds, 1),
        connections=stats["connections"],
        publish_seconds=round(publish_seconds, 3),
        first_ready_to_last_ready=round(max(ready) - min(ready), 4),
        checks=checks,
    )


def announce(run: Run) -> None:
    """Print one measurement as soon as it is taken."""
    extra = f", publish {run.publish_seconds:.1f} s" if run.publish_seconds is not None else ""
    print(
        f"{run.side} latency={run.latency * 1000:.0f}ms #{run.round}: {run.rate:,.0f} deliveries/s "
        f"({run.seconds:.2f} s; CPU side {run.side_cpu_pct:.0f} %, receiver "
        f"{run.receiver_cpu_pct:.0f} %; {run.connections} connections{extra})",
        flush=True,
    )


# -- reporting --------------------------------------------------------------------------------


# -- the scenario ------------------------------------------------------------------------------


def of(runs: list[Run], side: str, latency: float, attribute: str = "rate") -> float:
    """Median ``attribute`` of the runs of ``side`` at ``latency``."""
    return median([getattr(r, attribute) for r in runs if r.side == side and r.latency == latency])


def measure(ctx: Context, options: Options, database_url: str) -> list[Run]:
    """Every latency and round of one concurrency, alternating raw and ours; all verified."""
    from jobs.webhooks.signing import generate_secret  # noqa: PLC0415
    from workers import resources  # noqa: PLC0415

    env = webhook_env(ctx, options, database_url)
    configure(env)  # the migration built (and cached) settings before they named our database
    if resources.engine().url.database != database_url.rsplit("/", 1)[1]:
        raise BenchError(f"settings do not name the benchmark database: {resources.engine().url}")
    bench = Bench(ctx, options, ctx.client, resources.engine(), env, generate_secret())
    runs: list[Run] = []
    try:
        for latency in options.latencies:
            with Receiver(bench.secret, latency, ctx.log_dir) as receiver:
                for number in range(1, options.rounds + 1):
                    for measure_side in (measure_raw, measure_ours):
                        result = measure_side(bench, receiver, latency, number)
                        runs.append(result)
                        announce(result)
    finally:
        resources.engine().dispose()
    return runs


def scenario(ctx: Context, sets: tuple[Options, ...] | None = None) -> ScenarioResult:
    """Deliveries per second, ours vs raw httpx, for each (N, latency)."""
    sets = sets or (QUICK if ctx.quick else FULL)
    # httpx logs every request at INFO: that would cost the raw side (and the driver) CPU.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    runs: list[Run] = []
    rows: list[Row] = []
    with fresh_database(ctx.database_url, label="bench_webhooks") as database_url:
        for options in sets:
            measured = measure(ctx, options, database_url)
            runs += measured
            for latency in options.latencies:
                ours, raw = of(measured, "ours", latency), of(measured, "raw", latency)
                cpu = (of(measured, "ours", latency, "side_cpu_pct"),
                       of(measured, "raw", latency, "side_cpu_pct"))  # fmt: skip
                rows.append(Row(
                    f"signed deliveries, N={options.concurrency}, receiver {latency * 1000:.0f} ms",
                    "deliveries/s", ours, raw, "raw httpx", target=f"ratio >= {TARGET}",
                    note=f"CPU {cpu[0]:.0f} % vs {cpu[1]:.0f} % of a core",
                ))  # fmt: skip
    labels = [row.label.removeprefix("signed deliveries, ") for row in rows]
    first = sets[0]
    return ScenarioResult(
        name="webhooks",
        title="Webhook deliveries: our workers vs a raw httpx loop",
        rows=rows,
        params={
            "events": first.events,
            "rounds": first.rounds,
            "worker": f"{first.processes} x -P {first.pool} -c N/{first.processes}",
            "concurrency": [o.concurrency for o in sets],
        },
        details={"runs": [asdict(r) for r in runs]},
        charts=[
            Chart(
                file="bench-webhooks.png",
                kind="bars",
                title=f"Signed webhook deliveries, M={first.events:,} per measurement",
                x=labels,
                series={
                    "ours (celery -P threads)": [r.ours for r in rows],
                    "raw httpx (N threads)": [r.baseline for r in rows],
                },
                ylabel="deliveries/s",
            )
        ],
        notes=[
            (
                "Each delivery of ours pays the whole pipeline: broker fetch, the policy chain, "
                "loading delivery, endpoint and body from PostgreSQL, signing, the SSRF-guarded "
                "POST and recording the outcome. Raw: N threads POSTing pre-built signed bodies."
            ),
            (
                "The worker runs as `jobctl worker -P threads` does: prefetch multiplier 2, so "
                "a freed thread finds its next message queued; each fetch takes up to the "
                "prefetch headroom in one round trip."
            ),
            (
                "A threads worker is one process (one GIL): at ~5 ms of CPU per delivery it "
                "plateaus near one core (~150-200/s); past N ≈ latency x that rate, add processes "
                "or hosts, not threads."
            ),
        ],
    )


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, help="deliveries per measurement (M)")
    parser.add_argument("--concurrency", type=int, nargs="+", help="in-flight requests (N ...)")
    parser.add_argument("--latency", type=float, nargs="+", help="receiver seconds before a 200")
    parser.add_argument("--rounds", type=int, help="rounds per side (median)")
    parser.add_argument("--processes", type=int, default=1, help="worker processes sharing N")
    parser.add_argument("--pool", choices=("threads", "gevent"), default="threads")
    parser.add_argument("--db-pool-size", type=int, help="JOBS_DB_POOL_SIZE of the workers")


def _run(ctx: Context, args: argparse.Namespace) -> list[ScenarioResult]:
    base = (QUICK if ctx.quick else FULL)[0]
    concurrencies = args.concurrency or [o.concurrency for o in (QUICK if ctx.quick else FULL)]
    sets = tuple(
        replace(
            base,
            events=args.events or base.events,
            concurrency=n,
            latencies=tuple(args.latency or base.latencies),
            rounds=args.rounds or base.rounds,
            processes=args.processes,
            pool=args.pool,
            db_pool_size=args.db_pool_size,
        )
        for n in concurrencies
    )
    for options in sets:
        if min(options.events, options.concurrency, options.rounds, options.processes) < 1:
            raise BenchError("--events, --concurrency, --rounds and --processes must be >= 1")
        if options.concurrency % options.processes:
            raise BenchError("--concurrency must be a multiple of --processes")
        if any(latency < 0 for latency in options.latencies):
            raise BenchError("--latency must be >= 0")
    return [scenario(ctx, sets)]


if __name__ == "__main__":
    sys.exit(script_main(__doc__ or "", _run, _arguments))
