"""The benchmark harness: what every scenario module shares, so none repeats it.

- paths (``BENCH``, ``REPO``, ``RESULTS``) and ``bench/`` on ``sys.path`` (scenario modules,
  ``bench_common``, ``bench_tasks`` and ``bare_app`` import each other by plain name);
- :class:`Context`: the services one run measures on (a claimed Redis database, a PostgreSQL
  server to create scratch databases on), quick or full sizes, a log folder;
- the services: :func:`claimed_db` (a Redis database claimed the way test sessions claim
  theirs, renewed while held), :func:`fresh_database` (created, migrated, dropped after),
  :func:`flushed_after`;
- workers: :func:`worker_env`, :func:`configure` (this process's settings), :func:`worker_pool`
  (N ``celery worker`` processes, started together, ready together, always stopped);
- measuring: :func:`wait_until`, :func:`group_cpu`, :func:`timed_loop`, :class:`Sampler`;
- scripts: :func:`script_main` runs one module's scenarios by hand (argparse, claim, run,
  print the table, save the JSON), with the same options for every script.

Every measurement is verified by its scenario; a check that fails raises :class:`BenchError`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar
from urllib.parse import urlsplit

import psycopg
import redis
from psycopg import sql

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
DOCS = REPO / "docs"

# bench/ is sys.path[0] when a script in it runs; make it explicit for every other launch.
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import report  # noqa: E402 - needs bench/ on sys.path first
from bench_common import READY_LIST, REDIS_URL_ENV  # noqa: E402

from ops.workerproc import WorkerProcess  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from types import FrameType

P = TypeVar("P")

#: Redis server when none is given (a database on it is claimed: see :func:`claimed_db`).
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379"
#: PostgreSQL server when none is given (scratch databases are created on it and dropped).
DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
#: Seconds between progress polls while a worker drains (one cheap Redis read each).
POLL_INTERVAL = 0.005
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: The test suite's claim keys for Redis databases (``tests/conftest.py``), kept in DB 0.
DB_LOCK_PREFIX = "jobs-tests:db:"
#: Databases a benchmark may claim: the test range, highest first (test sessions go lowest
#: first, so the two rarely contend).
BENCH_DBS = range(15, 7, -1)
#: Seconds a claim outlives a benchmark killed with SIGKILL; renewed every third of it.
DB_LOCK_TTL = 300
#: Seconds to wait for every worker of a pool to be ready.
READY_TIMEOUT = 90.0


class BenchError(RuntimeError):
    """A measurement could not be taken or could not be verified."""


# -- the run's context -------------------------------------------------------------------------


@dataclass(slots=True)
class Context:
    """What one run measures on; shared by the scenarios of one process.

    ``redis_url`` names a database this run has claimed (flushed freely); ``database_url`` a
    PostgreSQL server's maintenance database (scenarios create scratch databases next to it).
    ``cache`` keeps measurements that scenarios of one module share in one process (the
    scaling curve reuses the no-op drains taken at 1 and 2 processes).
    """

    quick: bool
    redis_url: str
    database_url: str
    log_dir: Path
    loglevel: str = "WARNING"
    cache: dict[str, Any] = field(default_factory=dict)
    _client: redis.Redis | None = None

    @property
    def client(self) -> redis.Redis:
        """A Redis client on the claimed database (this process's)."""
        if self._client is None:
            self._client = redis.Redis.from_url(self.redis_url)
        return self._client

    def as_json(self) -> dict[str, Any]:
        """What a scenario subprocess needs to rebuild this context."""
        return {
            "quick": self.quick,
            "redis_url": self.redis_url,
            "database_url": self.database_url,
            "log_dir": str(self.log_dir),
            "loglevel": self.loglevel,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Context:
        """The inverse of :meth:`as_json`."""
        return cls(
            quick=bool(data["quick"]),
            redis_url=str(data["redis_url"]),
            database_url=str(data["database_url"]),
            log_dir=Path(data["log_dir"]),
            loglevel=str(data.get("loglevel", "WARNING")),
        )


# -- services ----------------------------------------------------------------------------------


def server_of(url: str) -> str:
    """``redis://host:port/3`` -> ``redis://host:port``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@contextmanager
def claimed_db(url: str) -> Iterator[str]:
    """Claim a Redis database like a test session does; yields its URL; released after.

    Without a database number in ``url`` the first free one of 15, 14, ... 8 is taken; 0 is
    refused (it holds the claims). The claim is renewed in the background while held, and
    expires :data:`DB_LOCK_TTL` seconds after a benchmark killed with SIGKILL.
    """
    path = urlsplit(url).path.strip("/")
    if path and (not path.isdigit() or int(path) == 0):
        raise BenchError(f"{url}: the database must be a number other than 0 (it is flushed)")
    server = server_of(url)
    candidates = [int(path)] if path else list(BENCH_DBS)
    locks: redis.Redis = redis.Redis.from_url(f"{server}/0")
    token = f"bench:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    try:
        number = next(
            n
            for n in candidates
            if locks.set(f"{DB_LOCK_PREFIX}{n}", token, nx=True, ex=DB_LOCK_TTL)
        )
    except StopIteration:
        holders = {n: locks.get(f"{DB_LOCK_PREFIX}{n}") for n in candidates}
        raise BenchError(f"no Redis database free: claimed by {holders} (tests running?)") from None
    except redis.ConnectionError as exc:
        raise BenchError(f"Redis at {server} does not answer: {exc}") from None
    key = f"{DB_LOCK_PREFIX}{number}"
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(DB_LOCK_TTL / 3):
            with suppress(redis.RedisError):
                if locks.get(key) == token.encode():
                    locks.expire(key, DB_LOCK_TTL)

    renewer = threading.Thread(target=renew, name="bench-claim", daemon=True)
    renewer.start()
    try:
        yield f"{server}/{number}"
    finally:
        stop.set()
        with suppress(redis.RedisError):
            if locks.get(key) == token.encode():
                locks.delete(key)
        locks.close()


@contextmanager
def flushed_after(client: redis.Redis) -> Iterator[None]:
    """Leave the benchmark database empty, whatever happens."""
    try:
        yield
    finally:
        with suppress(redis.RedisError):
            client.flushdb()


def libpq(url: str) -> str:
    """``postgresql+psycopg://`` -> ``postgresql://`` (psycopg's own URL form)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@contextmanager
def fresh_database(server_url: str, *, label: str = "bench") -> Iterator[str]:
    """Create ``jobs_<label>_<hex>`` next to ``server_url``, migrate it; drop it after."""
    name = f"jobs_{label}_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(libpq(server_url), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.OperationalError as exc:
        raise BenchError(f"PostgreSQL does not answer at {server_url}: {exc}") from None
    url = server_url.rsplit("/", 1)[0] + f"/{name}"
    print(f"PostgreSQL database: {name} (created and migrated; dropped after)", flush=True)
    try:
        from workers.migrate import upgrade  # noqa: PLC0415 - reads settings at import

        upgrade(url)
        yield url
    finally:
        with (
            suppress(psycopg.Error),
            psycopg.connect(libpq(server_url), autocommit=True) as conn,
        ):
            statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(statement.format(sql.Identifier(name)))


# -- the environment of this process and of the workers ----------------------------------------


def worker_env(
    ctx: Context, *, task_modules: Sequence[str] = ("bench_tasks",), **extra: str
) -> dict[str, str]:
    """Environment for this process and the workers (ours reads JOBS_*, bare BENCH_*).

    ``bench/`` and the repository come first on ``PYTHONPATH``; ``extra`` adds or overrides
    variables (``JOBS_DATABASE_URL``, ``JOBS_HIGH_WATERMARK``, ...).
    """
    env = {key: value for key, value in os.environ.items() if key != "JOBS_BROKER_URL"}
    pythonpath = [str(BENCH), str(REPO), *filter(None, env.get("PYTHONPATH", "").split(":"))]
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(dict.fromkeys(pythonpath)),
            REDIS_URL_ENV: ctx.redis_url,
            "JOBS_REDIS_URL": ctx.redis_url,
            "JOBS_EXTRA_TASK_MODULES": json.dumps(list(task_modules)),
            "JOBS_LOG_LEVEL": ctx.loglevel,
            # One message per job unless a scenario measures envelopes (``envelopes.py``).
            "JOBS_ENVELOPE_SIZE": "1",
        }
    )
    env.update(extra)
    return env


def configure(env: dict[str, str]) -> None:
    """Make ``env`` this process's environment for ``workers.*`` (settings rebuilt, clients reset).

    A scenario calls this before it imports anything that reads settings; calling it again
    (another scenario in the same process) drops the cached settings and per-process clients.
    """
    os.environ.update(env)
    os.environ.pop("JOBS_BROKER_URL", None)
    if "workers.settings" in sys.modules:
        from workers import resources  # noqa: PLC0415 - only if already imported
        from workers.settings import get_settings  # noqa: PLC0415

        get_settings.cache_clear()
        resources.dispose()


# -- worker processes ------------------------------------------------------------------------------


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


def pool_cpu(workers: Sequence[WorkerProcess]) -> tuple[float, float]:
    """CPU seconds so far of the workers' main processes and of their pool children."""
    totals = [group_cpu(worker.pid, worker.pid) for worker in workers]
    return sum(t[0] for t in totals), sum(t[1] for t in totals)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of one process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """N identical ``celery worker`` processes: app module, queues, pool, concurrency each."""

    name: str
    app: str = "workers.app"
    queues: str = "default"
    processes: int = 1
    pool: str = "solo"
    concurrency: int = 1
    options: tuple[str, ...] = ("--without-mingle", "--without-gossip")


@dataclass(slots=True)
class ReadyPool:
    """A started pool: its workers and when each became ready (``time.time()``)."""

    workers: list[WorkerProcess]
    ready: list[float]

    def check_alive(self, what: str) -> None:
        """Fail (with the log of the first dead worker) if any worker exited."""
        for worker in self.workers:
            if not worker.alive():
                raise BenchError(f"a worker exited while {what}:\n{worker.log_tail()}")

    def log_tail(self) -> str:
        """The first worker's last log lines."""
        return self.workers[0].log_tail() if self.workers else ""


@contextmanager
def worker_pool(
    ctx: Context, spec: PoolSpec, env: dict[str, str], *, wait_ready: bool = True
) -> Iterator[ReadyPool]:
    """Start ``spec.processes`` workers together; with ``wait_ready``, until all are ready.

    Readiness is each process's ``worker_ready`` stamp in :data:`READY_LIST` (the list is
    cleared first), so the caller can time from the moment every worker consumes. Every
    worker is stopped afterwards, whatever happens.
    """
    ctx.client.delete(READY_LIST)
    started: list[WorkerProcess] = []
    try:
        for k in range(spec.processes):
            worker = WorkerProcess(
                env=env,
                log_path=ctx.log_dir / f"worker-{spec.name}-{k}-{time.monotonic_ns()}.log",
                app=spec.app,
                queues=spec.queues,
                concurrency=spec.concurrency,
                pool=spec.pool,
                name=f"bench-{spec.name}-{k}",
                loglevel=ctx.loglevel,
                cwd=REPO,
                options=spec.options,
            )
            started.append(worker.start())
        pool = ReadyPool(started, [])
        if wait_ready:

            def all_ready() -> list[float] | None:
                pool.check_alive("starting")
                stamps = [float(v) for v in ctx.client.lrange(READY_LIST, 0, -1)]
                return stamps if len(stamps) >= spec.processes else None

            pool.ready = wait_until(all_ready, READY_TIMEOUT, f"{spec.name} workers ready")
        yield pool
    finally:
        for worker in started:
            worker.stop()


# -- measuring ---------------------------------------------------------------------------------


def wait_until(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    *,
    interval: float = POLL_INTERVAL,
    log: Callable[[], str] | None = None,
) -> Any:
    """Poll ``condition`` until truthy; fail after ``timeout`` seconds (with ``log()`` if given)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            tail = f":\n{log()}" if log is not None else ""
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")
        time.sleep(interval)
    return value


@dataclass(slots=True)
class LoopRun:
    """One timed loop of calls: rate and per-call latency percentiles (µs)."""

    name: str
    round: int
    calls: int
    seconds: float
    rate: float
    p50_us: float | None = None
    p99_us: float | None = None


def timed_loop(name: str, number: int, n: int, call: Callable[[int], object]) -> LoopRun:
    """Time ``call(i)`` for i in range(n), with per-call latency percentiles."""
    latencies: list[int] = []
    clock = time.perf_counter_ns
    start = clock()
    for i in range(n):
        before = clock()
        call(i)
        latencies.append(clock() - before)
    seconds = (clock() - start) / 1e9
    return LoopRun(
        name=name,
        round=number,
        calls=n,
        seconds=round(seconds, 4),
        rate=round(n / seconds, 1),
        p50_us=round(report.percentile(latencies, 50) / 1000, 1),
        p99_us=round(report.percentile(latencies, 99) / 1000, 1),
    )


def timed(name: str, number: int, n: int, block: Callable[[], object]) -> LoopRun:
    """Time one call of ``block`` that handles ``n`` items (a rate, no per-item latency)."""
    start = time.perf_counter()
    block()
    seconds = time.perf_counter() - start
    return LoopRun(name, number, n, round(seconds, 4), round(n / seconds, 1))


def median(values: Sequence[float]) -> float:
    """The median (NaN for no values)."""
    return float(statistics.median(values)) if values else float("nan")


class Sampler:
    """Calls ``sample()`` every ``interval`` seconds on a thread; keeps ``(t, value)`` pairs.

    ``t`` counts from :meth:`start`. The sampler uses whatever client ``sample`` closes over:
    give it its own (redis-py clients are not shared across threads here).
    """

    def __init__(self, sample: Callable[[], dict[str, float]], interval: float = 0.25) -> None:
        """Configure; use as a context manager."""
        self.sample = sample
        self.interval = interval
        self.points: list[dict[str, float]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._started = 0.0

    def _run(self) -> None:
        while True:
            try:
                self.points.append({"t": time.monotonic() - self._started, **self.sample()})
            except Exception as exc:
                self.error = exc
                return
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Self:
        """Start sampling."""
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        """Stop, then take a last sample (the state the measurement ended in)."""
        self._stop.set()
        self._thread.join(10)
        if self.error is None:
            with suppress(Exception):
                self.points.append({"t": self.elapsed(), **self.sample()})

    def elapsed(self) -> float:
        """Seconds since :meth:`start` (the samples' clock)."""
        return time.monotonic() - self._started

    def peak(self, key: str) -> float:
        """The largest sampled ``key``."""
        return max((p[key] for p in self.points if key in p), default=float("nan"))


def rss_peak_kib(pid: int) -> int | None:
    """``VmHWM`` (peak resident set, KiB) of a running process; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def machine() -> dict[str, Any]:
    """Versions, CPU count and load, for the record."""
    import celery  # noqa: PLC0415
    import kombu  # noqa: PLC0415

    return {
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis_py": redis.__version__,
        "cpus": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "platform": platform.platform(),
    }


# -- scripts ----------------------------------------------------------------------------------


def raise_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks stop workers and drop databases."""
    raise SystemExit(128 + signum)


def service_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every benchmark script and the suite take."""
    parser.add_argument(
        "--redis-url",
        default=DEFAULT_REDIS_URL,
        help="Redis server, optionally with a database number other than 0 (it is FLUSHED; "
        "claimed like a test session's; default: the first free of 15..8)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("JOBS_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="PostgreSQL server (scratch databases are created on it and dropped)",
    )
    parser.add_argument("--quick", action="store_true", help="the quick sizes (a smoke run)")
    parser.add_argument("--loglevel", default="WARNING", help="worker log level")
    return parser


def params_from(args: argparse.Namespace, base: P) -> P:
    """``base`` (a frozen params dataclass) with every field the command line gave replaced.

    An option is "given" when its value is not None; lists (``nargs``) become tuples.
    """
    changes = {}
    for spec in dataclasses.fields(base):  # type: ignore[arg-type]
        value = getattr(args, spec.name, None)
        if value is not None:
            changes[spec.name] = tuple(value) if isinstance(value, list) else value
    return dataclasses.replace(base, **changes)  # type: ignore[type-var]


def params_runner(
    scenario: Callable[[Context, P], report.ScenarioResult],
    *,
    quick: P,
    full: P,
    minimum: dict[str, float],
) -> Callable[[Context, argparse.Namespace], list[report.ScenarioResult]]:
    """What :func:`script_main` runs for a module with one scenario and one params dataclass.

    The quick or full params, overridden by the command line, each field named in ``minimum``
    at least that value (for a tuple, every element).
    """

    def run(ctx: Context, args: argparse.Namespace) -> list[report.ScenarioResult]:
        params = params_from(args, quick if ctx.quick else full)
        for name, least in minimum.items():
            value = getattr(params, name)
            if min(value if isinstance(value, tuple) else (value,)) < least:
                raise BenchError(f"--{name.replace('_', '-')} must be >= {least:g}")
        return [scenario(ctx, params)]

    return run


def script_main(
    doc: str,
    run: Callable[[Context, argparse.Namespace], list[report.ScenarioResult]],
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: list[str] | None = None,
) -> int:
    """Run one module's scenarios by hand: parse, claim, run, print the tables, save the JSON.

    Exit code 0 when every measurement verified, 1 otherwise (the message on stderr).
    """
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n", maxsplit=1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    service_arguments(parser)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    started = time.monotonic()
    try:
        with bench_context(args, Path(tempfile.mkdtemp(prefix="bench-"))) as ctx:
            results = run(ctx, args)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    document = report.document(
        results,
        runner="script",
        quick=args.quick,
        machine=machine(),
        argv=sys.argv,
        wall_seconds=time.monotonic() - started,
    )
    path = save_results(document, RESULTS, suffix=results[0].name if len(results) == 1 else "")
    for result in results:
        print()
        print(report.scenario_markdown(result))
    print(f"\nResults: {path}; worker logs: {ctx.log_dir}; {document['wall_seconds']} s")
    return 0


@contextmanager
def bench_context(args: argparse.Namespace, log_dir: Path) -> Iterator[Context]:
    """A :class:`Context` on a claimed Redis database, flushed before and after."""
    with claimed_db(args.redis_url) as url:
        print(f"Redis database: {url} (claimed; flushed before and after)", flush=True)
        ctx = Context(
            quick=args.quick,
            redis_url=url,
            database_url=args.database_url,
            log_dir=log_dir,
            loglevel=args.loglevel.upper(),
        )
        ctx.client.flushdb()
        with flushed_after(ctx.client):
            yield ctx


def save_results(document: dict[str, Any], folder: Path, *, suffix: str = "") -> Path:
    """Write ``document`` to ``<folder>/<its UTC timestamp>[-suffix].json``; returns the path."""
    report.validate(document)
    folder.mkdir(parents=True, exist_ok=True)
    name = document["timestamp"] + (f"-{suffix}" if suffix else "")
    path = folder / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    tmp.replace(path)
    return path
