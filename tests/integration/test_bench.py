"""``jobctl bench`` end to end: the real CLI runs one quick scenario of the suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.worker import REPO


def test_jobctl_bench_quick_enqueue_measures_both_sides_and_writes_json_table_and_chart(
    tmp_path: Path,
) -> None:
    """Given the test services, when ``jobctl bench --quick --only enqueue`` runs (results and
    docs into a temporary folder), then it exits 0, prints ours, the baseline and the ratio,
    saves one schema-1 JSON whose rows carry both sides of the same run, and writes
    benchmarks.md with the table and the chart it links to.
    """
    redis_server = os.environ["JOBS_REDIS_URL"].rsplit("/", 1)[0]
    postgres_server = os.environ["JOBS_DATABASE_URL"].rsplit("/", 1)[0] + "/postgres"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "JOBS_"))}
    results, docs = tmp_path / "results", tmp_path / "docs"
    done = subprocess.run(
        [
            sys.executable, "-c", "from ops.cli import main; main()", "bench", "--quick",
            "--only", "enqueue", "--redis-url", redis_server, "--database-url", postgres_server,
            "--results-dir", str(results), "--docs-dir", str(docs),
        ],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ours enqueue #1" in done.stdout
    assert "bare apply_async #1" in done.stdout

    [saved] = list(results.glob("*.json"))
    document = json.loads(saved.read_text())
    assert document["schema"] == 1
    assert document["runner"] == "suite"
    assert document["quick"] is True
    [scenario] = document["scenarios"]
    assert scenario["name"] == "enqueue"
    assert scenario["error"] is None
    for row in scenario["rows"]:
        assert row["ours"] > 0
        assert row["baseline"] > 0
        assert row["ratio"] == round(row["ours"] / row["baseline"], 3)

    page = (docs / "benchmarks.md").read_text()
    assert "| `enqueue` per call, p50 |" in page
    assert "(img/bench-enqueue.png)" in page
    assert (docs / "img" / "bench-enqueue.png").stat().st_size > 1000
