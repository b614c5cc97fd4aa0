"""Write-buffer benchmark: flush throughput vs a raw psycopg COPY, and the producer's extend rate.

Usage::

    python bench/flush.py [--rows N] [--rounds R] [--batch-size B] [--extend-chunk C]
                          [--redis-url redis://127.0.0.1:6379[/DB]]
                          [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

Same run, same rows, same process. A scratch database is created next to ``--database-url``
(dropped afterwards, whatever happens), migrated to head and given the ``events`` partitions
(``jobs.partitions.ensure_all``); a Redis database is claimed like a test session's (flushed
before and after). N event rows (ids and timestamps fixed up front, so both sides write the very
same rows) are then written once per side in each of R rounds (``events`` truncated before
each; rounds alternate which side goes first):

- **raw**: psycopg ``COPY events FROM STDIN`` (``write_row``), one transaction per B rows: the
  floor any loader pays for these rows into this partitioned table;
- **flush**: the rows are put in the buffer (``WriteBuffer.extend`` in calls of C rows: timed
  as the producer's rate), then ``jobs.buffers.drain`` writes them all, as a flush job does:
  claim (Lua) → COPY into a temporary table → ``INSERT ... SELECT`` → commit → drop the claim,
  per batch of B (the next batch is claimed while this one is written).

Target: flush / raw >= 0.5, taken as the median of the per-round ratios (both sides of a round
run back to back, so a noisy neighbour slows both). Also measured: ``append()`` (one row per
call). Every round is verified (N distinct rows in ``events``, nothing left in the buffer).
Writes ``bench/results/flush-<UTC stamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg import sql
from psycopg.types.json import Jsonb

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from throughput import (  # noqa: E402 - needs bench/ on sys.path first
    RESULTS,
    BenchError,
    _raise_on_sigterm,
    claimed_db,
    flushed_after,
    machine,
    save_results,
)

DEFAULT_URL = os.environ.get(
    "JOBS_BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
#: ``append()`` calls timed (one row each).
APPENDS = 5000
COLUMNS = ("id", "user_id", "event_type", "payload", "created_at")


def libpq(url: str) -> str:
    """``postgresql+psycopg://`` → ``postgresql://``."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--extend-chunk", type=int, default=10_000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    parser.add_argument("--database-url", default=DEFAULT_URL)
    args = parser.parse_args(argv)
    if min(args.rows, args.rounds, args.batch_size, args.extend_chunk) < 1:
        parser.error("--rows, --rounds, --batch-size and --extend-chunk must be >= 1")
    return args


def make_rows(n: int) -> list[dict[str, Any]]:
    """N demo events with their keys fixed (85 % views, 10 % signups, 5 % purchases)."""
    now = datetime.now(UTC)
    rows = []
    for i in range(n):
        kind = "purchase" if i % 20 == 0 else "signup" if i % 10 == 1 else "view"
        rows.append({
            "id": str(uuid.uuid4()),
            "user_id": i % 50_000,
            "event_type": kind,
            "payload": {"amount": i % 200} if kind == "purchase" else {},
            "created_at": now.isoformat(),
        })  # fmt: skip
    return rows


def raw_copy(url: str, rows: list[dict[str, Any]], batch: int) -> float:
    """Seconds to COPY ``rows`` into events with psycopg, one transaction per ``batch``."""
    statement = sql.SQL("COPY events ({}) FROM STDIN").format(
        sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
    )
    with psycopg.connect(libpq(url)) as conn:
        started = time.perf_counter()
        for start in range(0, len(rows), batch):
            with conn.cursor() as cur, cur.copy(statement) as copy:
                for row in rows[start : start + batch]:
                    copy.write_row((row["id"], row["user_id"], row["event_type"],
                                    Jsonb(row["payload"]), row["created_at"]))  # fmt: skip
            conn.commit()
        return time.perf_counter() - started


def count(url: str) -> tuple[int, int]:
    """(rows, distinct ids) in events."""
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT id) FROM events").fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def truncate(url: str) -> None:
    """Empty events (all partitions)."""
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute("TRUNCATE events")


def configure(url: str, redis_url: str, args: argparse.Namespace) -> None:
    """Point this process's settings at the scratch database and the claimed Redis DB."""
    os.environ.update(
        JOBS_DATABASE_URL=url,
        JOBS_REDIS_URL=redis_url,
        JOBS_BUFFERS=json.dumps({"events": {
            "table": "events",
            "columns": {"id": "uuid", "user_id": "bigint", "event_type": "text",
                        "payload": "jsonb", "created_at": "timestamptz"},
            "conflict_columns": ["id", "created_at"],
            "defaults": {"payload": {}},
            "generated": {"id": "uuid4", "created_at": "utcnow"},
            "batch_size": args.batch_size,
            "flush_threshold": args.rows * 10,  # no flush job: this process drains
        }}),
        JOBS_LOG_LEVEL="WARNING",
    )  # fmt: skip
    os.environ.pop("JOBS_BROKER_URL", None)


def measure_raw(url: str, rows: list[dict[str, Any]], args: argparse.Namespace) -> float:
    """One raw COPY round, verified; returns rows/s."""
    truncate(url)
    rate = len(rows) / raw_copy(url, rows, args.batch_size)
    if count(url) != (len(rows), len(rows)):
        raise BenchError(f"raw COPY: {count(url)} rows, expected {len(rows)}")
    return rate


def measure_buffer(
    url: str, client: redis.Redis[Any], rows: list[dict[str, Any]], args: argparse.Namespace
) -> tuple[float, float]:
    """One buffer round (extend everything, then drain it), verified; returns the rates."""
    from jobs.buffers import WriteBuffer, buffer_stats, drain  # noqa: PLC0415

    truncate(url)
    client.flushdb()
    buffer = WriteBuffer("events")
    started = time.perf_counter()
    for start in range(0, len(rows), args.extend_chunk):
        buffer.extend(rows[start : start + args.extend_chunk])
    extend_rate = len(rows) / (time.perf_counter() - started)
    started = time.perf_counter()
    result = drain("events", budget=3600, max_age=-1)
    flush_rate = len(rows) / (time.perf_counter() - started)
    if count(url) != (len(rows), len(rows)) or buffer_stats("events").length:
        raise BenchError(f"flush: {count(url)} rows, expected {len(rows)}")
    if result.written != len(rows) or result.batches != -(-len(rows) // args.batch_size):
        raise BenchError(f"flush wrote {result.written} rows in {result.batches} batches")
    return extend_rate, flush_rate


def measure_append(client: redis.Redis[Any], rows: list[dict[str, Any]]) -> float:
    """``append()`` of single rows; returns rows/s."""
    from jobs.buffers import WriteBuffer  # noqa: PLC0415

    client.flushdb()
    buffer = WriteBuffer("events")
    started = time.perf_counter()
    for i in range(APPENDS):
        buffer.append({**rows[i % len(rows)], "id": str(uuid.uuid4())})
    return APPENDS / (time.perf_counter() - started)


def measure(url: str, redis_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement against the scratch database ``url`` and the claimed Redis DB.

    Rounds alternate which side goes first; the ratio is the median of the per-round ratios
    (each round's two sides ran back to back, so a noisy neighbour hits both alike).
    """
    configure(url, redis_url, args)
    from jobs.partitions import ensure_all  # noqa: PLC0415
    from workers import resources  # noqa: PLC0415
    from workers.migrate import upgrade  # noqa: PLC0415

    upgrade(url)
    ensure_all()
    client: redis.Redis[Any] = redis.Redis.from_url(redis_url)
    rows = make_rows(args.rows)
    rounds: list[dict[str, float]] = []
    with flushed_after(client):
        for number in range(1, args.rounds + 1):
            if number % 2:
                raw = measure_raw(url, rows, args)
                extend, flush = measure_buffer(url, client, rows, args)
            else:
                extend, flush = measure_buffer(url, client, rows, args)
                raw = measure_raw(url, rows, args)
            rounds.append({"raw": raw, "flush": flush, "extend": extend, "ratio": flush / raw})
            print(f"round {number}: raw COPY {raw:9,.0f} rows/s | flush {flush:9,.0f} rows/s"
                  f" | ratio {flush / raw:.2f} | extend {extend:9,.0f} rows/s",
                  flush=True)  # fmt: skip
        append = measure_append(client, rows)
    resources.engine().dispose()
    summary = {
        side: statistics.median(r[side] for r in rounds)
        for side in ("raw", "flush", "extend", "ratio")
    }
    report(args, summary, append)
    return {
        "median_rates": {side: round(summary[side]) for side in ("raw", "flush", "extend")},
        "append_rate": round(append),
        "ratio_flush_over_raw": round(summary["ratio"], 3),
        "rounds": rounds,
    }


def report(args: argparse.Namespace, summary: dict[str, float], append: float) -> None:
    """The markdown table."""
    print(f"\n### Write buffer: {args.rows:,} rows into partitioned `events`, batches of "
          f"{args.batch_size:,} (median of {args.rounds} rounds)\n")  # fmt: skip
    print("| measurement | rows/s |")
    print("|---|---:|")
    print(f"| raw psycopg COPY (baseline) | {summary['raw']:,.0f} |")
    print(f"| buffer flush (claim + COPY + INSERT ... SELECT + drop) | {summary['flush']:,.0f} |")
    print(f"| producer extend() ({args.extend_chunk:,} rows per call) | {summary['extend']:,.0f} |")
    print(f"| producer append() (1 row per call) | {append:,.0f} |")
    verdict = "met" if summary["ratio"] >= 0.5 else "MISSED"
    print(f"\nratio flush / raw COPY (median per round): {summary['ratio']:.2f} "
          f"(target >= 0.5: {verdict})")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Claim Redis, create a scratch database, measure, clean up, write the JSON."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    started = time.monotonic()
    name = f"jobs_bench_flush_{uuid.uuid4().hex[:8]}"
    admin = libpq(args.database_url)
    with claimed_db(args.redis_url) as redis_url:
        print(f"Redis database: {redis_url} (claimed; flushed before and after)", flush=True)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = args.database_url.rsplit("/", 1)[0] + f"/{name}"
        print(f"scratch database {name} (dropped afterwards)", flush=True)
        try:
            summary = measure(url, redis_url, args)
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
    document = {
        "options": {k: v for k, v in vars(args).items() if k not in {"database_url", "redis_url"}},
        "machine": machine(),
        "summary": summary,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    path = save_results("flush", document)
    print(f"Results: {path.relative_to(RESULTS.parent.parent)}; {document['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        sys.exit(1)
