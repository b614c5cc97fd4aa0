"""Refresh benchmark: ``mv_daily_stats`` over N events, ``REFRESH ... CONCURRENTLY`` vs plain.

Usage::

    python bench/refresh.py [--events N] [--days D] [--rounds R] [--delta K] [--quick]
                            [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

Scenario ``refresh`` of ``jobctl bench`` (not run by default: ``--only refresh``); ``--quick``
uses 100,000 events and 1 round.

Same run, same data: a throw-away database is created next to ``--database-url`` (dropped
afterwards, whatever happens), migrated to head, given monthly partitions over the last D days
(``jobs.partitions.ensure_partitions``), and filled server-side with N events (``generate_series``:
~50,000 users, 85 % views, 10 % signups, 5 % purchases with an amount). Then, R rounds
alternating the two modes (plain first, then concurrent, then plain...): each measured refresh
goes through ``jobs.views.refresh_view`` (advisory lock, timeouts, state row) after K new
events were inserted for today (the delta a 5-minute refresh typically sees; ``--delta 0``
measures the nothing-changed case). Prints each refresh, the median per mode and the ratio
concurrent / plain.

Why the ratio matters: CONCURRENTLY recomputes the whole view *and* diffs it against the old
contents (a full join on the unique index), so it costs a multiple of a plain refresh; what it
buys is that readers are never blocked. The choice is per view (``concurrently`` in JOBS_VIEWS).
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

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
from report import Row, ScenarioResult

if TYPE_CHECKING:
    import argparse


@dataclass(frozen=True, slots=True)
class Params:
    """Events, the days they span, rounds, new rows before each refresh."""

    events: int = 1_000_000
    days: int = 90
    rounds: int = 3
    delta: int = 1000


FULL = Params()
QUICK = Params(events=100_000, rounds=1)

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


def measure(ctx: Context, url: str, params: Params) -> dict[str, Any]:
    """Fill the database at ``url`` and time the refreshes."""
    configure(worker_env(ctx, JOBS_DATABASE_URL=url))  # before workers.* reads its settings
    from sqlalchemy import create_engine  # noqa: PLC0415

    from jobs.partitions import ensure_partitions  # noqa: PLC0415
    from jobs.views import refresh_view  # noqa: PLC0415
    from workers.registries import PartitionSpec, ViewSpec  # noqa: PLC0415

    engine = create_engine(url)
    start = datetime.now(UTC) - timedelta(days=params.days)
    months = params.days // 28 + 2
    spec = PartitionSpec(table="events", column="created_at", interval="month",
                         premake=months, default_partition=True)  # fmt: skip
    made = ensure_partitions(engine, spec, clock=lambda: start)
    print(f"partitions: {len(made.created)} monthly + DEFAULT", flush=True)
    plain = ViewSpec(view="mv_daily_stats", concurrently=False, statement_timeout=3000)
    concurrent = plain.model_copy(update={"concurrently": True})
    runs: list[dict[str, Any]] = []
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        fill_seconds = fill(conn, params.events, params.days)
        print(f"filled in {fill_seconds:.1f} s; warming up with one plain refresh", flush=True)
        refresh_view(engine, plain)
        days = conn.execute("SELECT count(*) FROM mv_daily_stats").fetchone()
        for round_number in range(1, params.rounds + 1):
            for mode, spec_ in (("plain", plain), ("concurrently", concurrent)):
                if params.delta:
                    conn.execute(FILL, {"end": datetime.now(UTC), "span": timedelta(0),
                                        "n": params.delta})  # fmt: skip
                wall = time.perf_counter()
                result = refresh_view(engine, spec_)
                wall = time.perf_counter() - wall
                if result.status != "refreshed" or result.concurrently != (mode != "plain"):
                    raise BenchError(f"unexpected refresh result {result}")
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
    print(f"\n### mv_daily_stats refresh at {params.events:,} events "
          f"({days[0] if days else 0} days, delta {params.delta} rows per refresh, "
          f"median of {params.rounds})\n")  # fmt: skip
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


def scenario(ctx: Context, params: Params | None = None) -> ScenarioResult:
    """CONCURRENTLY vs plain, on a scratch database."""
    params = params or (QUICK if ctx.quick else FULL)
    with fresh_database(ctx.database_url, label="bench_refresh") as url:
        summary = measure(ctx, url, params)
    medians = summary["median_ms"]
    return ScenarioResult(
        name="refresh",
        title="Materialized view refresh: CONCURRENTLY vs plain",
        rows=[Row(f"`mv_daily_stats` refresh over {params.events:,} events", "ms",
                  medians["concurrently"], medians["plain"], "plain refresh",
                  higher_is_better=False, note="CONCURRENTLY does not block readers")],
        params=asdict(params),
        details=summary,
    )  # fmt: skip


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, help=f"events ({FULL.events:,})")
    parser.add_argument("--days", type=int, help=f"days they span ({FULL.days})")
    parser.add_argument("--rounds", type=int, help=f"rounds ({FULL.rounds})")
    parser.add_argument(
        "--delta", type=int, help=f"rows inserted before each refresh ({FULL.delta})"
    )


if __name__ == "__main__":
    run = params_runner(
        scenario, quick=QUICK, full=FULL, minimum={"events": 1, "days": 1, "rounds": 1, "delta": 0}
    )
    sys.exit(script_main(__doc__ or "", run, _arguments))
