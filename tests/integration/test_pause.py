"""Queue pause/resume across the cluster (``jobctl queues``), with real workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from typer.testing import CliRunner

import jobs
from ops.cli import app as jobctl_app
from tests import tasks
from tests.integration.test_execution import runs
from tests.support.worker import wait_for
from workers import keys, pausing
from workers.backpressure import list_keys


def jobctl(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``jobctl`` as a subprocess against the test services."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        [sys.executable, "-c", "from ops.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def effects(db: Any) -> list[tuple[str, int]]:
    """(name, hits) of every side effect."""
    return db.execute("SELECT name, hits FROM test_effects ORDER BY name").fetchall()


def depth(client: Any, queue: str) -> int:
    """Waiting jobs of ``queue`` over its priority lists."""
    return sum(client.llen(key) for key in list_keys(queue))


def test_a_paused_queue_is_not_consumed_by_running_or_new_workers_until_resumed(
    clean: Any, workers: Any
) -> None:
    """Given a worker running a slow job on "default", when the queue is paused with jobctl,
    then the running job finishes; jobs enqueued meanwhile (normal priority, low priority, and
    a countdown that housekeeping promotes) are accepted and wait, in the running worker and in
    a worker started while paused; when resumed (no restart), every job runs exactly once.
    """
    db, client = clean
    workers(name="before", concurrency=2)
    jobs.enqueue(tasks.record, name="inflight", sleep=1.5)
    wait_for(lambda: runs(db, "inflight"), 15, "the slow job started")

    paused = jobctl("queues", "pause", "default")
    assert paused.returncode == 0, paused.stderr
    assert "paused" in paused.stdout
    assert client.sismember(keys.paused_queues(), "default")

    for n in range(8):
        jobs.enqueue(tasks.record, name=f"p{n}")
    jobs.enqueue(tasks.record, name="low", priority=9)
    jobs.enqueue(tasks.record, name="later", countdown=0.3)
    wait_for(lambda: client.zcard(keys.delayed()) == 0, 10, "the countdown job promoted")
    wait_for(lambda: effects(db) == [("inflight", 1)], 10, "the in-flight job finished")
    assert depth(client, "default") == 10

    workers(name="after", concurrency=2)  # started while paused
    time.sleep(2.0)  # both idle workers have polled (every ~1 s) many times by now
    assert effects(db) == [("inflight", 1)]
    assert depth(client, "default") == 10

    listed = json.loads(jobctl("queues", "list", "--json").stdout)
    default = next(row for row in listed if row["queue"] == "default")
    assert default["paused"] is True
    assert default["depth"] == 10
    assert default["paused_for"] >= 2

    resumed = jobctl("queues", "resume", "default")
    assert resumed.returncode == 0, resumed.stderr
    expected = sorted(
        [("inflight", 1), ("later", 1), ("low", 1)] + [(f"p{n}", 1) for n in range(8)]
    )
    wait_for(lambda: effects(db) == expected, 20, "every job ran once after resume")
    time.sleep(1.0)
    assert effects(db) == expected
    assert len(db.execute("SELECT 1 FROM test_runs").fetchall()) == len(expected)


def test_pausing_one_queue_leaves_the_others_consumed(clean: Any, workers: Any) -> None:
    """Given a worker on "default" and "cache" with "cache" paused, when a job is enqueued on
    each, then the "default" one runs and the "cache" one waits until resumed.
    """
    db, client = clean
    pausing.pause(client, "cache")
    workers(queues="default,cache", concurrency=1)
    jobs.enqueue(tasks.record, name="cache-job", queue="cache")
    jobs.enqueue(tasks.record, name="default-job")
    wait_for(lambda: runs(db, "default-job"), 15, "the default job ran")
    assert not runs(db, "cache-job")
    assert depth(client, "cache") == 1
    pausing.resume(client, "cache")
    wait_for(lambda: runs(db, "cache-job"), 10, "the cache job ran after resume")


def test_queues_cli_refuses_unknown_queues_and_reports_resuming_a_running_one(
    clean: Any,
) -> None:
    """Given jobctl, when pausing a queue that does not exist, then it fails naming the known
    queues and pauses nothing; resuming a queue that is not paused exits 1.
    """
    _, client = clean
    runner = CliRunner()
    bad = runner.invoke(jobctl_app, ["queues", "pause", "webhook"])
    assert bad.exit_code == 2
    assert "unknown queue 'webhook'" in bad.output
    assert not client.smembers(keys.paused_queues())
    idle = runner.invoke(jobctl_app, ["queues", "resume", "webhooks"])
    assert idle.exit_code == 1
    twice = [runner.invoke(jobctl_app, ["queues", "pause", "webhooks"]) for _ in range(2)]
    assert [result.exit_code for result in twice] == [0, 0]
    assert "already paused" in twice[1].output
    assert runner.invoke(jobctl_app, ["queues", "resume", "webhooks"]).exit_code == 0
    assert not client.smembers(keys.paused_queues())
