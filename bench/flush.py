"""Write-buffer benchmark: flush throughput vs a raw psycopg COPY, and the producer's extend rate.

Usage::

    python bench/flush.py [--rows N] [--rounds R] [--batch-size B] [--extend-chunk C] [--quick]
                          [--redis-url redis://127.0.0.1:6379[/DB]]
                          [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

Scenario ``flush`` of ``jobctl bench``: 200,000 rows, 3 rounds (``--quick``: 20,000, 1 round).

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
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    BenchError,
    Context,
    configure,
    fresh_database,
    libpq,
    params_runner,
    script_main,
    worker_env,
)
from report import Chart, Row, ScenarioResult

if TYPE_CHECKING:
    import argparse

    import redis

#: ``append()`` calls timed (one row each).
APPENDS = 5000
COLUMNS = ("id", "user_id", "event_type", "payload", "created_at")


@dataclass(frozen=True, slots=True)
class Params:
    """Rows per round, rounds, rows per flush batch, rows per ``extend()`` call."""

    rows: int = 200_000
    rounds: int = 3
    batch_size: int = 5000
    extend_chunk: int = 10_000


FULL = Params()
QUICK = Params(rows=20_000, rounds=1)


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


def buffer_env(ctx: Context, url: str, params: Params) -> dict[str, str]:
    """Settings naming the scratch database, the claimed Redis DB and the ``events`` buffer."""
    return worker_env(
        ctx,
        JOBS_DATABASE_URL=url,
        JOBS_BUFFERS=json.dumps({"events": {
            "table": "events",
            "columns": {"id": "uuid", "user_id": "bigint", "event_type": "text",
                        "payload": "jsonb", "created_at": "timestamptz"},
            "conflict_columns": ["id", "created_at"],
            "defaults": {"payload": {}},
            "generated": {"id": "uuid4", "created_at": "utcnow"},
            "batch_size": params.batch_size,
            "flush_threshold": params.rows * 10,  # no flush job: this process drains
        }}),
    )  # fmt: skip


def measure_raw(url: str, rows: list[dict[str, Any]], params: Params) -> float:
    """One raw COPY round, verified; returns rows/s."""
    truncate(url)
    rate = len(rows) / raw_copy(url, rows, params.batch_size)
    if count(url) != (len(rows), len(rows)):
        raise BenchError(f"raw COPY: {count(url)} rows, expected {len(rows)}")
    return rate


def measure_buffer(
    url: str, client: redis.Redis, rows: list[dict[str, Any]], params: Params
) -> tuple[float, float]:
    """One buffer round (extend everything, then drain it), verified; returns the rates."""
    from jobs.buffers import WriteBuffer, buffer_stats, drain  # noqa: PLC0415

    truncate(url)
    client.flushdb()
    buffer = WriteBuffer("events")
    started = time.perf_counter()
    for start in range(0, len(rows), params.extend_chunk):
        buffer.extend(rows[start : start + params.extend_chunk])
    extend_rate = len(rows) / (time.perf_counter() - started)
    started = time.perf_counter()
    result = drain("events", budget=3600, max_age=-1)
    flush_rate = len(rows) / (time.perf_counter() - started)
    if count(url) != (len(rows), len(rows)) or buffer_stats("events").length:
        raise BenchError(f"flush: {count(url)} rows, expected {len(rows)}")
    if result.written != len(rows) or result.batches != -(-len(rows) // params.batch_size):
        raise BenchError(f"flush wrote {result.written} rows in {result.batches} batches")
    return extend_rate, flush_rate


def measure_append(client: redis.Redis, rows: list[dict[str, Any]]) -> float:
    """``append()`` of single rows; returns rows/s."""
    from jobs.buffers import WriteBuffer  # noqa: PLC0415

    client.flushdb()
    buffer = WriteBuffer("events")
    started = time.perf_counter()
    for i in range(APPENDS):
        buffer.append({**rows[i % len(rows)], "id": str(uuid.uuid4())})
    return APPENDS / (time.perf_counter() - started)


def measure(ctx: Context, url: str, params: Params) -> dict[str, Any]:
    """Every measurement against the scratch database ``url`` and the claimed Redis DB.

    Rounds alternate which side goes first; the ratio is the median of the per-round ratios
    (each round's two sides ran back to back, so a noisy neighbour hits both alike).
    """
    configure(buffer_env(ctx, url, params))
    from jobs.partitions import ensure_all  # noqa: PLC0415
    from workers import resources  # noqa: PLC0415

    ensure_all()
    client = ctx.client
    rows = make_rows(params.rows)
    rounds: list[dict[str, float]] = []
    for number in range(1, params.rounds + 1):
        if number % 2:
            raw = measure_raw(url, rows, params)
            extend, flush = measure_buffer(url, client, rows, params)
        else:
            extend, flush = measure_buffer(url, client, rows, params)
            raw = measure_raw(url, rows, params)
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
    return {
        "median_rates": {side: round(summary[side]) for side in ("raw", "flush", "extend")},
        "append_rate": round(append),
        "ratio_flush_over_raw": round(summary["ratio"], 3),
        "rounds": rounds,
    }


def scenario(ctx: Context, params: Params | None = None) -> ScenarioResult:
    """Flush vs raw COPY (the ratio is the median of the per-round ratios)."""
    params = params or (QUICK if ctx.quick else FULL)
    with fresh_database(ctx.database_url, label="bench_flush") as url:
        summary = measure(ctx, url, params)
    rates, rounds = summary["median_rates"], summary["rounds"]
    flush_row = Row(
        f"buffer flush into partitioned `events`, batches of {params.batch_size:,}", "rows/s",
        rates["flush"], rates["raw"], "raw psycopg COPY", target="ratio >= 0.5",
        note="ratio: median of the per-round ratios",
    )  # fmt: skip
    flush_row.ratio = summary["ratio_flush_over_raw"]
    flush_row.ok = flush_row.ratio >= 0.5
    return ScenarioResult(
        name="flush",
        title="Write-buffer flush vs raw COPY",
        rows=[
            flush_row,
            Row(
                f"producer `extend()` ({params.extend_chunk:,} rows per call)",
                "rows/s",
                rates["extend"],
            ),
            Row("producer `append()` (1 row per call)", "rows/s", summary["append_rate"]),
        ],
        params=asdict(params),
        details=summary,
        charts=[
            Chart(
                file="bench-flush.png",
                kind="bars",
                title=f"{params.rows:,} rows into `events` (per round)",
                x=[f"round {k + 1}" for k in range(len(rounds))],
                series={
                    "buffer flush": [round(r["flush"]) for r in rounds],
                    "raw COPY": [round(r["raw"]) for r in rounds],
                },
                ylabel="rows/s",
            )
        ],
        notes=[
            (
                "Flush: claim a batch (Lua) → COPY into a temporary table → `INSERT ... SELECT` → "
                "commit → drop the claim (the next batch is claimed while this one is written). "
                "Raw: psycopg `COPY events FROM STDIN`, one transaction per batch: the floor."
            ),
        ],
    )


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, help=f"rows per round ({FULL.rows:,})")
    parser.add_argument("--rounds", type=int, help=f"rounds ({FULL.rounds})")
    parser.add_argument("--batch-size", type=int, help=f"rows per flush batch ({FULL.batch_size})")
    parser.add_argument("--extend-chunk", type=int, help=f"rows per extend() ({FULL.extend_chunk})")


if __name__ == "__main__":
    run = params_runner(
        scenario,
        quick=QUICK,
        full=FULL,
        minimum={"rows": 1, "rounds": 1, "batch_size": 1, "extend_chunk": 1},
    )
    sys.exit(script_main(__doc__ or "", run, _arguments))
