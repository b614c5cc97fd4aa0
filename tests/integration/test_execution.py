"""Enqueue → real worker → side effect in PostgreSQL; idempotency; retries; dead letters."""

from __future__ import annotations

import json
from typing import Any

import pytest

import jobs
from tests import tasks
from tests.support.worker import wait_for
from workers import publisher
from workers.job import Job

#: Every test runs with one message per job and with envelopes (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("delivery")


def effects(db: Any, name: str | None = None) -> list[tuple[str, int]]:
    query = "SELECT name, hits FROM test_effects"
    rows = db.execute(
        query + (" WHERE name = %s" if name else ""), (name,) if name else ()
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def runs(db: Any, name: str) -> list[tuple[int, Any]]:
    return db.execute(
        "SELECT attempt, at FROM test_runs WHERE name = %s ORDER BY id", (name,)
    ).fetchall()


def dead(db: Any) -> list[Any]:
    return db.execute(
        "SELECT task_name, reason, attempts, exc_type, idempotency_key, kwargs "
        "FROM dead_letters ORDER BY id"
    ).fetchall()


def test_an_enqueued_job_runs_in_a_worker_and_its_side_effect_is_in_postgres(
    clean: Any, workers: Any
) -> None:
    """Given a worker, when a job is enqueued, then its side effect appears in PostgreSQL once."""
    db, _ = clean
    workers()
    ref = jobs.enqueue(tasks.record, name="hello")
    assert not ref.deduplicated
    wait_for(lambda: effects(db, "hello"), 20, "side effect")
    assert effects(db, "hello") == [("hello", 1)]


def test_a_duplicate_enqueue_returns_the_first_id_and_runs_once(clean: Any, workers: Any) -> None:
    """Given a job enqueued with a key, when the same key is enqueued again, then the first id
    comes back with deduplicated=True and the job runs once.
    """
    db, redis_client = clean
    first = jobs.enqueue(tasks.record, name="dup", key="order-7")
    second = jobs.enqueue(tasks.record, name="dup", key="order-7")
    assert second.id == first.id
    assert second.deduplicated
    assert redis_client.llen("default") == 1
    workers()
    wait_for(lambda: effects(db, "dup"), 20, "side effect")
    wait_for(lambda: redis_client.llen("default") == 0, 10, "queue drained")
    assert len(runs(db, "dup")) == 1


def test_the_same_message_delivered_twice_has_its_side_effect_once(
    clean: Any, workers: Any
) -> None:
    """Given one job published twice by hand (same id and key), then the side effect happens once
    and the second delivery is skipped as already done.
    """
    db, redis_client = clean
    job = Job(
        id="same-1",
        task="tests.record",
        key="same-key",
        queue="default",
        args=(),
        kwargs={"name": "twice"},
    )
    raw = json.dumps(publisher.envelope(job))
    redis_client.lpush("default", raw, raw)
    workers(concurrency=1)
    wait_for(lambda: redis_client.llen("default") == 0, 20, "both deliveries consumed")
    wait_for(lambda: redis_client.get("jobs:counter:duplicates_skipped"), 20, "skip counted")
    assert effects(db, "twice") == [("twice", 1)]
    assert len(runs(db, "twice")) == 1
