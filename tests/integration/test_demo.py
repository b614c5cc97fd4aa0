"""``jobctl demo`` end to end, through the real CLI in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ops.services import libpq_url

REPO = Path(__file__).resolve().parents[2]


def summary_rows(output: str) -> dict[str, int]:
    """``label -> count`` from the demo's summary table (rich box drawing stripped)."""
    rows = {}
    for line in output.splitlines():
        match = re.match(r"^│ (?P<label>.+?)\s+│\s+(?P<n>[\d,]+) │$", line)
        if match:
            rows[re.sub(r" \(.*\)$", "", match["label"])] = int(match["n"].replace(",", ""))
    return rows


def test_jobctl_demo_charges_replays_writes_events_refreshes_warms_delivers_and_exits_zero(
    worker_env: dict[str, str], redis_client: Any, tmp_path: Path
) -> None:
    """``jobctl demo`` exits 0 and its summary shows every outcome of every phase.

    Given the test's Redis and PostgreSQL servers, when the demo runs with its own database,
    Redis DB number and data directory, then 35 orders are charged at first (11 after a
    retry), 5 are dead-lettered, 3 duplicates are deduplicated at enqueue, 2 redeliveries are
    skipped at execution, and the 4 fixable dead letters are replayed and charged once; then
    the events table has its partitions (the current month, 3 ahead, DEFAULT), exactly 20,000
    buffered events reach it, mv_daily_stats shows 7 days, the 7 warmed keys serve today's
    read from the cache, and 10 order.paid webhooks are delivered in 11 signed, verified
    requests: one delivery retried after a 503.
    """
    redis_server, session_db = os.environ["JOBS_REDIS_URL"].rsplit("/", 1)
    postgres_server = os.environ["JOBS_DATABASE_URL"].rsplit("/", 1)[0] + "/postgres"
    database = f"jobs_demo_test_{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in worker_env.items() if not k.startswith("JOBS_")}
    env["COLUMNS"] = "120"  # one table row per line, whatever the terminal
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "from ops.cli import main; main()",
                "demo",
                "--data-dir",
                str(tmp_path / "data"),
                "--redis-url",
                f"{redis_server}/0",
                "--database-url",
                postgres_server,
                "--database",
                database,
                # This session's own DB (the redis_client fixture flushes it before and after),
                # never a DB another test session may have claimed.
                "--redis-db",
                session_db,
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        with psycopg.connect(libpq_url(postgres_server), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )
    output = result.stdout + result.stderr
    worker_log = tmp_path / "data" / "demo-worker.log"
    assert result.returncode == 0, output + (worker_log.read_text() if worker_log.exists() else "")
    assert "(reused)" in output
    rows = summary_rows(output)
    assert rows.pop("partitions of events") >= 5
    assert rows == {
        "enqueued": 40,
        "done": 39,
        "retried, then succeeded": 11,
        "dead-lettered": 5,
        "duplicates deduplicated at enqueue": 3,
        "duplicates skipped at execution": 2,
        "replayed after the fix": 4,
        "replayed, then succeeded": 4,
        "still dead-lettered": 1,
        "events buffered, then flushed to PostgreSQL": 20_000,
        "mv_daily_stats days after views.refresh": 7,
        "cache keys warmed": 7,
        "cache reads served from cache": 1,
        "webhooks published": 10,
        "webhooks delivered": 10,
        "webhook requests": 11,
        "webhook deliveries retried after a 503": 1,
        "webhook signatures verified": 11,
    }
    assert "OrderBlocked 4, PaymentDeclined 1" in output
    assert "0 in events_default" in output
    assert "order-1001-paid: attempt 1 → 503, attempt 2 → 200" in output
