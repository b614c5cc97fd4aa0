"""Dead-letter replay: ``jobctl dlq replay --all`` rate and peak RSS, vs a raw LPUSH pipeline.

Usage::

    python bench/dlq_replay.py [--sizes 10000 100000] [--rate 1000000/s] [--quick]
                               [--redis-url redis://127.0.0.1:6379[/DB]] [--database-url URL]

A scratch database is created and migrated (dropped afterwards, whatever happens). For each
size S (10,000 and 100,000; ``--quick`` 1,000 and 10,000), S dead-letter rows of the bench
no-op task are bulk-inserted with ``COPY``, then the real CLI runs as a subprocess:
``jobctl dlq replay --all --rate <rate> --by bench`` (the rate is far above what it reaches, so
the pacing code runs but never binds). The driver polls ``/proc/<pid>/status`` (``VmHWM``: the
CLI's peak resident set) and the queue length every 20 ms:

- **replay rate**: entries published per second, from the first message in the queue to the
  last (the CLI's start-up, ~1 s of imports, is excluded; its whole wall time is reported too);
- **peak RSS** at S and at 10 S: replay streams rows in keyset pages, so it should not grow
  with the number of entries ("flat": at most +25 %).

Baseline, stated honestly: the *same messages* (kombu envelopes built in advance from the same
rows) ``LPUSH``ed in pipelines of 500, the batch size replay uses. That is the floor of the
broker work alone: it reads nothing from PostgreSQL and writes no replay history, which the
CLI does for every entry (one UPDATE per batch in the transaction that publishes).

Verified: the CLI exits 0, the queue holds exactly S messages, every row is ``replayed``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.json import Jsonb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import OURS_QUEUE
from harness import (
    BenchError,
    Context,
    configure,
    fresh_database,
    libpq,
    params_runner,
    rss_peak_kib,
    script_main,
    worker_env,
)
from report import Chart, Row, ScenarioResult

if TYPE_CHECKING:
    import argparse

    import redis

#: Messages per pipeline on the raw side (replay's own batch size).
RAW_BATCH = 500
#: Peak RSS at the largest size over the smallest: at most this is "flat".
FLAT = 1.25
TASK = "bench.noop"
COLUMNS = (
    "job_id", "task_name", "queue", "args", "kwargs", "idempotency_key", "attempts", "reason",
    "exc_type", "exc_message", "fingerprint",
)  # fmt: skip
#: The CLI exactly as the ``jobctl`` console script runs it (a Python process of its own).
JOBCTL = ("-c", "import sys; from ops.cli import main; sys.argv[0] = 'jobctl'; main()")


@dataclass(frozen=True, slots=True)
class Params:
    """Dead-letter counts (the RSS comparison is last vs first) and the replay rate option."""

    sizes: tuple[int, ...] = (10_000, 100_000)
    rate: str = "1000000/s"


FULL = Params()
QUICK = Params(sizes=(1_000, 10_000))


@dataclass(slots=True)
class ReplayRun:
    """One size: the CLI's figures and the raw baseline's."""

    entries: int
    rate: float
    wall_seconds: float
    publish_seconds: float
    peak_rss_mb: float
    raw_rate: float
    checks: dict[str, Any]


def load_dead_letters(url: str, n: int) -> None:
    """Empty ``dead_letters`` and COPY ``n`` replayable rows into it."""
    statement = f"COPY dead_letters ({', '.join(COLUMNS)}) FROM STDIN"
    with psycopg.connect(libpq(url)) as conn:
        conn.execute("TRUNCATE dead_letters RESTART IDENTITY")
        with conn.cursor() as cur, cur.copy(statement) as copy:
            for i in range(n):
                copy.write_row((
                    f"dlq-bench-{i}", TASK, OURS_QUEUE, Jsonb([]), Jsonb({"n": i}),
                    f"dlq-bench-key-{i}", 3, "exhausted", "Boom", f"failure {i} on attempt 3",
                    "bench-fingerprint",
                ))  # fmt: skip
        conn.execute("ANALYZE dead_letters")


def replayed_rows(url: str) -> dict[str, int]:
    """Rows per status."""
    with psycopg.connect(libpq(url)) as conn:
        rows = conn.execute("SELECT status, count(*) FROM dead_letters GROUP BY status").fetchall()
    return {str(status): int(count) for status, count in rows}


def run_cli(ctx: Context, env: dict[str, str], n: int, rate: str) -> tuple[float, float, float]:
    """``jobctl dlq replay --all``; returns (wall s, first -> last publish s, peak RSS MiB)."""
    client = ctx.client
    log = ctx.log_dir / f"dlq-replay-{n}.log"
    command = [sys.executable, *JOBCTL, "dlq", "replay", "--all", "--rate", rate, "--by", "bench"]
    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    peak_kib = 0
    first = last = 0.0
    try:
        while process.poll() is None:
            peak_kib = max(peak_kib, rss_peak_kib(process.pid) or 0)
            queued = int(client.llen(OURS_QUEUE))
            now = time.monotonic()
            if queued and not first:
                first = now
            if queued >= n and not last:
                last = now
            if now - started > max(120.0, n / 200):
                raise BenchError(f"replay of {n} still running after {now - started:.0f} s")
            time.sleep(0.02)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    wall = time.monotonic() - started
    if process.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise BenchError(f"jobctl dlq replay exited {process.returncode}:\n{tail}")
    if not peak_kib:
        raise BenchError("could not read the CLI's VmHWM")
    last = last or time.monotonic()
    first = first or started
    return wall, max(last - first, 1e-6), peak_kib / 1024


def raw_lpush(client: redis.Redis, messages: list[str]) -> float:
    """Seconds to LPUSH ``messages`` in pipelines of :data:`RAW_BATCH`."""
    started = time.perf_counter()
    for start in range(0, len(messages), RAW_BATCH):
        with client.pipeline(transaction=False) as pipe:
            pipe.lpush(OURS_QUEUE, *messages[start : start + RAW_BATCH])
            pipe.execute()
    return time.perf_counter() - started


def envelopes(n: int) -> list[str]:
    """The kombu envelopes replay publishes for the rows :func:`load_dead_letters` wrote."""
    from workers.job import Job  # noqa: PLC0415 - after the environment is set
    from workers.publisher import envelope  # noqa: PLC0415

    return [
        json.dumps(envelope(Job(id=f"dlq-bench-{i}", task=TASK, key=f"dlq-bench-key-{i}",
                                queue=OURS_QUEUE, args=(), kwargs={"n": i}, attempt=1)))
        for i in range(n)
    ]  # fmt: skip


def measure(ctx: Context, url: str, params: Params) -> list[ReplayRun]:
    """Every size: load, replay through the CLI, verify; the raw pipeline of the same messages."""
    env = worker_env(ctx, JOBS_DATABASE_URL=url)
    configure(env)
    client = ctx.client
    runs = []
    for n in params.sizes:
        load_dead_letters(url, n)
        client.flushdb()
        wall, publish, rss = run_cli(ctx, env, n, params.rate)
        queued, rows = int(client.llen(OURS_QUEUE)), replayed_rows(url)
        if queued != n or rows != {"replayed": n}:
            raise BenchError(f"replay of {n}: {queued} messages queued, rows {rows}")
        messages = envelopes(n)
        client.flushdb()
        raw = raw_lpush(client, messages)
        if int(client.llen(OURS_QUEUE)) != n:
            raise BenchError(f"raw LPUSH: {client.llen(OURS_QUEUE)} messages, expected {n}")
        client.flushdb()
        run = ReplayRun(
            entries=n,
            rate=round(n / publish, 1),
            wall_seconds=round(wall, 2),
            publish_seconds=round(publish, 3),
            peak_rss_mb=round(rss, 1),
            raw_rate=round(n / raw, 1),
            checks={"queued": queued, "rows": rows},
        )
        runs.append(run)
        print(f"dlq replay {n:,}: {run.rate:,.0f} entries/s (wall {wall:.1f} s incl. start-up), "
              f"peak RSS {run.peak_rss_mb:.0f} MiB; raw LPUSH {run.raw_rate:,.0f}/s",
              flush=True)  # fmt: skip
    return runs


def scenario(ctx: Context, params: Params | None = None) -> ScenarioResult:
    """Replay rate and the CLI's peak RSS at two sizes, vs the raw pipeline."""
    params = params or (QUICK if ctx.quick else FULL)
    with fresh_database(ctx.database_url, label="bench_dlq") as url:
        runs = measure(ctx, url, params)
    small, large = runs[0], runs[-1]
    rows = [
        Row(f"replay rate, {run.entries:,} entries", "entries/s", run.rate, run.raw_rate,
            "raw LPUSH pipeline", note=f"CLI wall {run.wall_seconds:.1f} s incl. start-up")
        for run in runs
    ]  # fmt: skip
    rows.append(
        Row(
            f"CLI peak RSS, {large.entries:,} vs {small.entries:,} entries",
            "MiB",
            large.peak_rss_mb,
            small.peak_rss_mb,
            f"ours at {small.entries:,} entries",
            higher_is_better=False,
            target=f"ratio <= {FLAT}",
        )
    )
    return ScenarioResult(
        name="dlq_replay",
        title="Dead-letter replay: `jobctl dlq replay --all` vs a raw LPUSH pipeline",
        rows=rows,
        params={"sizes": list(params.sizes), "rate": params.rate, "raw_batch": RAW_BATCH},
        details={"runs": [asdict(r) for r in runs]},
        charts=[
            Chart(
                file="bench-dlq-replay.png",
                kind="bars",
                title="Replay rate: jobctl dlq replay vs a raw LPUSH pipeline",
                x=[f"{run.entries:,} entries" for run in runs],
                series={
                    "jobctl dlq replay": [run.rate for run in runs],
                    "raw LPUSH pipeline": [run.raw_rate for run in runs],
                },
                ylabel="entries/s",
            ),
            Chart(
                file="bench-dlq-rss.png",
                kind="bars",
                title="Peak RSS of the jobctl dlq replay process",
                x=[f"{run.entries:,} entries" for run in runs],
                series={"VmHWM": [run.peak_rss_mb for run in runs]},
                ylabel="MiB",
            ),
        ],
        notes=[
            (
                "Baseline: the same messages, built in advance, `LPUSH`ed in pipelines of 500: the "
                "broker work alone. The CLI also streams the rows from PostgreSQL (keyset pages) "
                "and marks each batch replayed in the transaction that publishes it."
            ),
            (
                f"`--rate {params.rate}` is far above the reachable rate: the pacing runs, never "
                "binds. The rate counts from the first published message to the last (start-up "
                "excluded; the wall time including it is in the note)."
            ),
            "Peak RSS is the CLI process's `VmHWM`, polled every 20 ms while it runs.",
        ],
    )


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", help="dead letters per run (10000 100000)")
    parser.add_argument("--rate", help=f"jobctl dlq replay --rate ({FULL.rate})")


if __name__ == "__main__":
    run = params_runner(scenario, quick=QUICK, full=FULL, minimum={"sizes": 1})
    sys.exit(script_main(__doc__ or "", run, _arguments))
