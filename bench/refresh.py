"""Refresh benchmark: ``mv_daily_stats`` over N events, ``REFRESH ... CONCURRENTLY`` vs plain.

Usage::

    python bench/refresh.py [--events N] [--days D] [--rounds R] [--delta K]
                            [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

Same run, same data: a throw-away database is created next to ``--database-url`` (dropped
afterwards, whatever happens), migrated to head, given monthly partitions over the last D days
(``jobs.partitions.ensure_partitions``), and filled server-side with N events (``generate_series``:
~50,000 users, 85 % views, 10 % signups, 5 % purchases with an amount). Then, R rounds
alternating the two modes (plain first, then concurrent, then plain...): each measured refresh
goes through ``jobs.views.refresh_view`` (advisory lock, timeouts, state row) after K new
events were inserted for today (the delta a 5-minute refresh typically sees; ``--delta 0``
measures the nothing-changed case). Prints each refresh, the median per mode and the ratio
concurrent / plain; writes ``bench/results/refresh-<UTC stamp>.json``.

Why the ratio matters: CONCURRENTLY recomputes the whole view *and* diffs it against the old
contents (a full join on the unique index), so it costs a multiple of a plain refresh; what it
buys is that readers are never blocked. The choice is per view (``concurrently`` in JOBS_VIEWS).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from throughput import RESULTS, _raise_on_sigterm, machine, save_results  # noqa: E402

DEFAULT_URL = os.environ.get(
    "JOBS_BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
#: Rows per INSERT ... SELECT generate_series statement (progress is printed after each).
CHUNK = 250_000
FILL = """
INSERT INTO events (id, user_id, event_type, payload, created_at)
SELECT gen_random_uuid(), (x.u * 50000)::bigint,
       CASE WHEN x.r < 0.05 THEN 'purchase' WHEN x.r < 0.15 THEN 'signup' ELSE 'view' END,
       CASE WHEN x.r < 0.05 THEN jsonb_build_object('amount', round((x.r * 2000)::numeric, 2))
            ELSE '{}'::jsonb END,
       %(end)s - x.t * %(span)s
FROM generate_series(1, %(n)s) AS g
CROSS JOIN LATERAL (SELECT random() + g * 0 AS r, random() + g * 0 AS u,
                           random() + g * 0 AS t) AS x
"""


def libpq(url: str) -> str:
    """``postgresql+psycopg://`` → ``postgresql://``."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delta", type=int, default=1000)
    parser.add_argument("--database-url", default=DEFAULT_URL)
    return parser.parse_args(argv)


def fill(conn: psycopg.Connection[Any], events: int, days: int) -> float:
    """Insert ``events`` rows spread over the last ``days`` days; returns seconds taken."""
    started = time.perf_counter()
    end, span = datetime.now(UTC), timedelta(days=days)
    done = 0
    while done < events:
        n = min(CHUNK, events - done)
        conn.execute(FILL, {"end": end, "span": span, "n": n})
        done += n
        print(f"  filled {done:,} / {events:,} events", flush=True)
    conn.execute("VACUUM ANALYZE events")
    return time.perf_counter() - started


def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Fill the database at ``url`` and time the refreshes."""
    os.environ["JOBS_DATABASE_URL"] = url  # before workers.* reads its settings
    from sqlalchemy import create_engine  # noqa: PLC0415

    from jobs.partitions import ensure_partitions  # noqa: PLC0415
    from jobs.views import refresh_view  # noqa: PLC0415
    from workers.migrate import upgrade  # noqa: PLC0415
    from workers.registries import PartitionSpec, ViewSpec  # noqa: PLC0415

    upgrade(url)
    engine = create_engine(url)
    start = datetime.now(UTC) - timedelta(days=args.days)
    months = args.days // 28 + 2
    spec = PartitionSpec(table="events", column="created_at", interval="month",
                         premake=months, default_partition=True)  # fmt: skip
    made = ensure_partitions(engine, spec, clock=lambda: start)
    print(f"partitions: {len(made.created)} monthly + DEFAULT", flush=True)
    plain = ViewSpec(view="mv_daily_stats", concurrently=False, statement_timeout=3000)
    concurrent = plain.model_copy(update={"concurrently": True})
    runs: list[dict[str, Any]] = []
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        fill_seconds = fill(conn, args.events, args.days)
        print(f"filled in {fill_seconds:.1f} s; warming up with one plain refresh", flush=True)
        refresh_view(engine, plain)
        days = conn.execute("SELECT count(*) FROM mv_daily_stats").fetchone()
        for round_number in range(1, args.rounds + 1):
            for mode, spec_ in (("plain", plain), ("concurrently", concurrent)):
                if args.delta:
                    conn.execute(FILL, {"end": datetime.now(UTC), "span": timedelta(0),
                                        "n": args.delta})  # fmt: skip
                wall = time.perf_counter()
                result = refresh_view(engine, spec_)
                wall = time.perf_counter() - wall
                if result.status != "refreshed" or result.concurrently != (mode != "plain"):
                    raise RuntimeError(f"unexpected refresh result {result}")
                runs.append({"round": round_number, "mode": mode, "ms": result.duration_ms,
                             "wall_ms": wall * 1000})  # fmt: skip
                print(f"round {round_number} {mode:>12}: {result.duration_ms:8.0f} ms", flush=True)
        total = conn.execute("SELECT count(*) FROM events").fetchone()
    engine.dispose()
    medians = {
        mode: statistics.median(r["ms"] for r in runs if r["mode"] == mode)
        for mode in ("plain", "concurrently")
    }
    ratio = medians["concurrently"] / medians["plain"]
    print(f"\n### mv_daily_stats refresh at {args.events:,} events "
          f"({days[0] if days else 0} days, delta {args.delta} rows per refresh, "
          f"median of {args.rounds})\n")  # fmt: skip
    print("| mode | median (ms) | per round (ms) |")
    print("|---|---:|---|")
    for mode, median in medians.items():
        per_round = ", ".join(f"{r['ms']:.0f}" for r in runs if r["mode"] == mode)
        print(f"| {mode} | {median:.0f} | {per_round} |")
    print(f"\nratio concurrently / plain: {ratio:.2f}x")
    return {
        "events": total[0] if total else None,
        "days": days[0] if days else None,
        "fill_seconds": round(fill_seconds, 1),
        "median_ms": {mode: round(v, 1) for mode, v in medians.items()},
        "ratio_concurrently_over_plain": round(ratio, 3),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    """Create a scratch database, measure, drop it, write the JSON."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    started = time.monotonic()
    name = f"jobs_bench_refresh_{uuid.uuid4().hex[:8]}"
    admin = libpq(args.database_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = args.database_url.rsplit("/", 1)[0] + f"/{name}"
    print(f"scratch database {name} (dropped afterwards)", flush=True)
    try:
        summary = measure(url, args)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    document = {
        "options": {k: v for k, v in vars(args).items() if k != "database_url"},
        "machine": machine(),
        "summary": summary,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    path = save_results("refresh", document)
    print(f"Results: {path.relative_to(RESULTS.parent.parent)}; {document['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
