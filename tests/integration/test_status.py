"""``jobctl status``: a scripted state shows exactly, as JSON, as tables, and refreshing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest

import jobs
from jobs import buffers
from tests import tasks
from workers import deadletters, health, keys, pausing, ratelimits, resources
from workers.breakers import Breakers, Result, Thresholds
from workers.queues import QUEUE_NAMES
from workers.settings import get_settings

SECTIONS = (
    "Queues",
    "Workers",
    "Dead letters",
    "Breakers",
    "Rate limits",
    "Beat",
    "Write buffers",
    "Views",
)
DESTINATION = "hooks.example.com"
CONSUMER = "status-host:4242:abcdef"


def jobctl(*args: str, prefix: tuple[str, ...] = (), **overrides: str) -> Any:
    """Run ``jobctl`` as a subprocess (optionally under ``prefix``, e.g. ``timeout 5``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        [*prefix, sys.executable, "-c", "from ops.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "220", **overrides},
        timeout=60,
        check=False,
    )


@pytest.fixture
def scripted(clean: Any) -> dict[str, Any]:
    """3 jobs waiting on "default", "cache" paused, one dead letter, one open breaker, one rate
    override, 4 buffered rows, a beat leader that ticked, and one live worker holding 2 jobs.
    """
    _, client = clean
    now = time.time()
    for n in range(3):
        jobs.enqueue(tasks.record, name=f"waiting-{n}")
    pausing.pause(client, "cache")
    dead = deadletters.DeadLetterRecord(
        job_id="dead-1",
        task_name="tests.record",
        queue="default",
        reason="permanent",
        exc_type="PermanentError",
        exc_message="declined",
        attempts=1,
    )
    deadletters.write(resources.engine(), dead)
    breakers = Breakers(Thresholds())
    for _ in range(5):
        breakers.record(breakers.allow(DESTINATION, lease=30), Result.FAILURE, lease=30)
    rate = ratelimits.parse_rate("5/s", burst=2, field="RATE")
    ratelimits.set_override(client, "tests.record", rate)
    buffers.WriteBuffer("events").extend([{"user_id": n, "event_type": "view"} for n in range(4)])
    client.set(keys.beat_leader(), "7 beat-host:99:cafe", px=10_000)
    client.set(keys.beat_last_tick(), repr(now - 2))
    record = health.HealthRecord(
        CONSUMER, "status-host", 4242, ("default",), now - 60, now - 0.5, now - 5, 2, 2, now
    )
    # A heartbeat a minute ahead: jobctl (a subprocess, slow to start on a loaded machine)
    # must still see the worker alive (the tests' JOBS_CONSUMER_DEAD_AFTER is 3 s).
    client.zadd(keys.consumers(), {CONSUMER: now + 60})
    client.hset(keys.worker_health(), CONSUMER, record.to_json())
    client.hset(keys.inflight(CONSUMER), mapping={"t1": "default\n{}", "t2": "default\n{}"})
    return {"fingerprint": dead.fingerprint, "rate": str(rate)}


def test_status_json_has_exactly_the_scripted_values(scripted: dict[str, Any]) -> None:
    """Given the scripted state, when `jobctl status --json` runs, then each section holds
    exactly those values and no section is unavailable.
    """
    result = jobctl("status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["errors"] == {}

    queues = {row["queue"]: row for row in status["queues"]}
    assert set(queues) == set(QUEUE_NAMES)
    assert queues["default"]["depth"] == 3
    assert 0 <= queues["default"]["oldest_age"] < 30
    assert queues["default"]["paused"] is False
    assert queues["default"]["consumers"] == 1  # the scripted worker
    assert queues["webhooks"]["consumers"] == 0
    assert queues["cache"]["paused"] is True
    assert [name for name, row in queues.items() if row["depth"]] == ["default"]

    [worker] = status["workers"]
    assert (worker["consumer"], worker["hostname"], worker["pid"]) == (
        CONSUMER,
        "status-host",
        4242,
    )
    assert (worker["state"], worker["queues"], worker["inflight"]) == ("ok", ["default"], 2)
    assert 0 <= worker["last_poll_age"] < 30

    assert status["dead_letters"] == {
        "total": 1,
        "by_task": [{"task": "tests.record", "count": 1}],
        "top_fingerprints": [{"fingerprint": scripted["fingerprint"], "count": 1}],
    }
    [breaker] = status["breakers"]
    assert (breaker["name"], breaker["state"], breaker["failures"]) == (DESTINATION, "open", 5)
    limits = {row["name"]: row for row in status["limits"]}
    assert limits["tests.record"]["override"] == scripted["rate"]
    beat = status["beat"]
    assert (beat["leader"], beat["fence"]) == ("beat-host:99:cafe", 7)
    assert 1.5 <= beat["last_tick_age"] < 30
    assert [(row["buffer"], row["rows"]) for row in status["buffers"]] == [("events", 4)]
    assert [(row["view"], row["staleness"]) for row in status["views"]] == [
        (spec.view, None) for spec in get_settings().views
    ]


@pytest.mark.serial  # measures a time window: run alone
def test_status_tables_show_every_section_and_watch_refreshes(scripted: dict[str, Any]) -> None:
    """Given the scripted state, the table output has every section title and the values; with
    `--watch 0.5` (stopped by `timeout`) at least two frames are printed.
    """
    del scripted
    result = jobctl("status")
    assert result.returncode == 0, result.stderr
    for title in SECTIONS:
        assert title in result.stdout, title
    assert "paused" in result.stdout
    assert DESTINATION in result.stdout
    assert "beat-host:99:cafe" in result.stdout
    # Generous: on a loaded machine importing jobctl alone can take seconds.
    watched = jobctl("status", "--watch", "0.5", prefix=("timeout", "9"))
    assert watched.returncode == 124, watched.stderr
    assert watched.stdout.count("jobs status at") >= 2, watched.stdout[-2000:]


def test_a_failing_source_shows_unavailable_and_the_rest_still_shows(clean: Any) -> None:
    """Given a database nobody listens on, `jobctl status` still exits 0: dead letters and views
    are unavailable with the reason (password redacted), Redis sections are present.
    """
    del clean
    bad = {"JOBS_DATABASE_URL": "postgresql+psycopg://jobs:sentinel-pw@127.0.0.1:1/nowhere"}
    result = jobctl("status", "--json", **bad)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert set(status["errors"]) == {"dead_letters", "views"}
    assert status["dead_letters"] is None
    assert status["views"] is None
    assert "OperationalError" in status["errors"]["dead_letters"]
    assert "database unreachable" in status["errors"]["views"]
    assert len(status["queues"]) == len(QUEUE_NAMES)
    assert "sentinel-pw" not in result.stdout
    tables = jobctl("status", **bad)
    assert tables.returncode == 0, tables.stderr
    assert tables.stdout.count("unavailable") >= 2
    assert "Queues" in tables.stdout
