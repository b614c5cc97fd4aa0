"""Poison messages are dead-lettered with a machine-readable reason; the worker keeps consuming."""

from __future__ import annotations

import base64
import json
import os
import pickle
from pathlib import Path
from typing import Any

import jobs
from tests import tasks
from tests.integration.test_execution import effects
from tests.support.worker import wait_for
from workers import publisher
from workers.job import Job


class Exploit:
    """Unpickling this would run a shell command (it must never happen)."""

    def __init__(self, marker: Path) -> None:
        """Remember where the exploit would write."""
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        """Ask pickle to call os.system on load."""
        return (os.system, (f"touch {self.marker}",))


def envelope_for(task: str, kwargs: dict[str, Any], job_id: str) -> dict[str, Any]:
    job = Job(id=job_id, task=task, key=f"k-{job_id}", queue="default", args=(), kwargs=kwargs)
    return publisher.envelope(job)


def reasons(db: Any) -> dict[str, str]:
    rows = db.execute("SELECT job_id, reason FROM dead_letters").fetchall()
    return {row[0]: row[1] for row in rows}


def test_each_kind_of_poison_message_is_dead_lettered_with_its_reason(
    clean: Any, workers: Any, tmp_path: Path
) -> None:
    """Given garbage bytes, a pickle payload, an unknown task, arguments that don't bind and a
    JSON-typed body that is not JSON on the queue, then each lands in dead_letters with its
    reason, the pickle is never executed, and a normal job after them still runs.
    """
    db, redis_client = clean
    marker = tmp_path / "pwned"
    pickled = envelope_for("tests.record", {"name": "x"}, "pickle-1")
    pickled["content-type"] = "application/x-python-serialize"
    pickled["content-encoding"] = "binary"
    pickled["body"] = base64.b64encode(pickle.dumps(((Exploit(marker),), {}, {}))).decode()
    not_json = envelope_for("tests.record", {"name": "x"}, "notjson-1")
    not_json["body"] = base64.b64encode(b"{this is not json").decode()
    poison = [
        b"\x00\xff garbage, not even an envelope",
        json.dumps(pickled).encode(),
        json.dumps(envelope_for("no.such.task", {}, "unknown-1")).encode(),
        json.dumps(envelope_for("tests.record", {"nope": 1}, "badargs-1")).encode(),
        json.dumps(not_json).encode(),
    ]
    redis_client.lpush("default", *poison)
    workers(concurrency=1)
    wait_for(lambda: len(reasons(db)) == len(poison), 30, "every poison message dead-lettered")
    found = reasons(db)
    assert found["pickle-1"] == "content_disallowed"
    assert found["unknown-1"] == "unknown_task"
    assert found["badargs-1"] == "invalid_args"
    assert found["notjson-1"] == "decode_error"
    garbage = [reason for job_id, reason in found.items() if job_id.startswith("garbage:")]
    assert garbage == ["decode_error"]
    raw = db.execute(
        "SELECT raw_message FROM dead_letters WHERE job_id LIKE 'garbage:%'"
    ).fetchone()[0]
    assert base64.b64decode(raw) == poison[0]
    assert not marker.exists()

    jobs.enqueue(tasks.record, name="after-poison")
    wait_for(lambda: effects(db, "after-poison"), 20, "normal job after poison")
    assert redis_client.llen("default") == 0
