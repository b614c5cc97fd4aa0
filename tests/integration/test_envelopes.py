"""Envelopes: one broker message carrying many jobs, each run through its own policy chain."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

import jobs
from tests import tasks
from tests.integration.test_execution import dead, effects
from tests.support.worker import wait_for
from workers import keys
from workers.envelopes import ENVELOPE_TASK


def messages(redis_client: Any, queue: str = "default") -> list[dict[str, Any]]:
    """The messages waiting in ``queue`` (decoded), oldest first."""
    return [json.loads(raw) for raw in reversed(redis_client.lrange(queue, 0, -1))]


def hits(db: Any, prefix: str) -> dict[str, int]:
    """Side-effect hits per job name starting with ``prefix``."""
    rows = db.execute(
        "SELECT name, hits FROM test_effects WHERE name LIKE %s", (prefix + "%",)
    ).fetchall()
    return {row[0]: row[1] for row in rows}


def test_enqueue_many_packs_jobs_into_envelopes_bounded_by_count(
    clean: Any,
) -> None:
    """Given envelope_size 100, when 250 jobs are enqueued as a batch, then the queue holds 3
    messages of ``jobs.envelope`` carrying 100, 100 and 50 jobs, each job with its own id and
    key, and the queue's depth (backpressure, status) counts 250 jobs.
    """
    _, redis_client = clean
    refs = jobs.enqueue_many(tasks.record, [{"name": f"pack-{n}"} for n in range(250)])
    waiting = messages(redis_client)
    assert [m["headers"]["task"] for m in waiting] == [ENVELOPE_TASK] * 3
    bodies = [json.loads(m["body"]) for m in waiting]
    assert [len(body[1]["jobs"]) for body in bodies] == [100, 100, 50]
    assert [m["headers"]["jobs_count"] for m in waiting] == ["100", "100", "50"]
    carried = [fragment for body in bodies for fragment in body[1]["jobs"]]
    assert [f["id"] for f in carried] == [ref.id for ref in refs]
    assert [f["kwargs"]["name"] for f in carried] == [f"pack-{n}" for n in range(250)]
    assert {body[1]["task"] for body in bodies} == {"tests.record"}
    assert "'tests.record'" in waiting[0]["headers"]["kwargsrepr"]
    assert "<100 jobs>" in waiting[0]["headers"]["kwargsrepr"]
    assert int(redis_client.hget(keys.queue_stats("default"), "enveloped")) == 247


def test_an_envelope_of_100_with_one_permanent_failure_settles_99_done_and_1_dead_letter(
    clean: Any, workers: Any
) -> None:
    """Given an envelope of 100 jobs where job 37 fails permanently, when a worker runs it, then
    99 side effects exist once each, job 37 alone is dead-lettered (with its own key and
    arguments), and the envelope is acknowledged: nothing waits or is in flight.
    """
    db, redis_client = clean
    calls = [{"name": f"env-{n}", "permanent": n == 37} for n in range(100)]
    refs = jobs.enqueue_many(tasks.record, calls)
    assert len(messages(redis_client)) == 1
    worker = workers(concurrency=1)
    try:
        wait_for(lambda: len(hits(db, "env-")) == 99 and dead(db), 60, "envelope settled")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{worker.log()}") from None
    assert set(hits(db, "env-")) == {f"env-{n}" for n in range(100) if n != 37}
    assert set(hits(db, "env-").values()) == {1}
    (letter,) = dead(db)
    assert letter[0] == "tests.record"
    assert letter[1] == "permanent_error"
    assert letter[4] == refs[37].key
    assert letter[5]["name"] == "env-37"
    wait_for(
        lambda: not redis_client.keys("jobs:inflight:*") and redis_client.llen("default") == 0,
        10,
        "envelope acknowledged",
    )
    assert redis_client.keys("jobs:envelope:*") == []  # progress record deleted when done


def test_a_job_that_kills_its_worker_is_dead_lettered_alone_after_three_deaths(
    clean: Any, workers: Any
) -> None:
    """Given an envelope of 10 jobs whose 4th SIGKILLs its pool process, then the envelope is
    redelivered and resumes at that job; after 3 deaths only that job is dead-lettered
    (worker_lost_exhausted), the 9 others ran exactly once each.
    """
    db, _ = clean
    refs = jobs.enqueue_many(
        tasks.kill_self_or_record,
        [{"name": f"lethal-{n}", "lethal": n == 3} for n in range(10)],
    )
    worker = workers(concurrency=1)
    try:
        wait_for(lambda: dead(db) and len(hits(db, "lethal-")) == 9, 90, "envelope settled")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{worker.log()}") from None
    (letter,) = dead(db)
    assert letter[:2] == ("tests.kill_self_or_record", "worker_lost_exhausted")
    assert letter[4] == refs[3].key
    assert set(hits(db, "lethal-").values()) == {1}
    runs = db.execute("SELECT count(*) FROM test_runs WHERE name = 'lethal-3'").fetchone()[0]
    assert runs == 3
    assert effects(db, "lethal-3") == []


def test_status_metrics_and_backpressure_count_jobs_in_envelopes_not_messages(
    clean: Any, workers: Any
) -> None:
    """Given 250 jobs waiting in 3 envelopes, then ``jobctl status``, the exporter's
    ``jobs_queue_depth`` and admission's depth all say 250; once a worker ran them, 0, and the
    queue's ``fetched`` counter (behind the drain rate) counted 250 jobs.
    """
    from ops.cli.status import read_queues  # noqa: PLC0415
    from ops.exporter import JobsCollector  # noqa: PLC0415

    db, redis_client = clean
    jobs.enqueue_many(tasks.record, [{"name": f"seen-{n}"} for n in range(250)])
    assert redis_client.llen("default") == 3

    def status_depth() -> int:
        (row,) = [r for r in read_queues(redis_client, time.time()) if r.queue == "default"]
        return row.depth

    def exporter_depth() -> float:
        collector = JobsCollector()
        try:
            samples = {
                (sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for metric in collector.collect()
                for sample in metric.samples
            }
        finally:
            collector.close()
        return samples[("jobs_queue_depth", (("queue", "default"),))]

    assert status_depth() == 250
    assert exporter_depth() == 250
    workers(concurrency=2)
    wait_for(lambda: len(hits(db, "seen-")) == 250, 60, "every job ran")
    assert status_depth() == 0
    assert exporter_depth() == 0
    assert int(redis_client.hget(keys.queue_stats("default"), "fetched")) == 250


def test_an_envelope_redelivered_after_its_worker_was_sigkilled_skips_what_was_done(
    clean: Any, workers: Any
) -> None:
    """Given an envelope of 40 jobs of 50 ms each, when its whole worker (main process and
    pool) is SIGKILLed in the middle, then a new worker resumes it: every job's side effect
    exists exactly once, nothing is dead-lettered, and the jobs run before the kill did not
    run again (at most the one running when the worker died).
    """
    db, redis_client = clean
    jobs.enqueue_many(tasks.record, [{"name": f"mid-{n}", "sleep": 0.05} for n in range(40)])
    short_lease = {"JOBS_TASKS": json.dumps({"tests.record": {"time_limit": 3}})}
    first = workers(concurrency=1, extra_env=short_lease)
    wait_for(lambda: len(hits(db, "mid-")) >= 15, 30, "15 jobs done")
    first.kill_all()
    done_before = len(hits(db, "mid-"))
    assert 15 <= done_before < 40
    workers(concurrency=1, extra_env=short_lease)
    wait_for(lambda: len(hits(db, "mid-")) == 40, 60, "every job done")
    assert set(hits(db, "mid-").values()) == {1}  # 0 side effects twice
    runs = dict(
        db.execute(
            "SELECT name, count(*) FROM test_runs WHERE name LIKE 'mid-%' GROUP BY name"
        ).fetchall()
    )
    assert sum(1 for count in runs.values() if count > 1) <= 1
    assert dead(db) == []
    wait_for(lambda: redis_client.keys("jobs:envelope:*") == [], 10, "marker deleted")


def test_a_job_over_its_own_soft_time_limit_fails_alone_and_the_envelope_goes_on(
    clean: Any, workers: Any
) -> None:
    """Given tests.record limited to 2 s per job and an envelope of 5 jobs whose 3rd sleeps
    10 s, then that job gets its soft time limit (SoftTimeLimitExceeded after 1.8 s, not the
    envelope's limit) and is retried, then dead-lettered after its 3 attempts with the error
    named; the 4 others are done once each, the 4th and 5th within seconds of the 3rd's limit.
    """
    db, _ = clean
    calls = [{"name": f"soft-{n}", "sleep": 10 if n == 2 else 0} for n in range(5)]
    started = time.monotonic()
    jobs.enqueue_many(tasks.record, calls)
    limited = {"JOBS_TASKS": json.dumps({"tests.record": {"time_limit": 2}})}
    workers(concurrency=1, extra_env=limited)
    wait_for(lambda: len(hits(db, "soft-")) == 4, 30, "the other jobs done")
    assert time.monotonic() - started < 8
    assert set(hits(db, "soft-")) == {"soft-0", "soft-1", "soft-3", "soft-4"}
    wait_for(lambda: dead(db), 60, "the slow job dead-lettered after its attempts")
    (letter,) = dead(db)
    assert (letter[0], letter[2], letter[3]) == ("tests.record", 3, "SoftTimeLimitExceeded")
    assert letter[5]["name"] == "soft-2"
    assert set(hits(db, "soft-").values()) == {1}


def test_a_stock_celery_worker_consumes_the_single_job_messages_we_publish(
    clean: Any, worker_env: dict[str, str], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a stock Celery app (kombu's own Redis transport, none of our code) registering
    ``tests.record``, when we enqueue one job and a batch of a task without envelopes, then the
    stock worker runs each message with its kwargs, our job id and ``jobs`` header, and the
    kwargsrepr Flower shows.
    """
    from tests.stock_app import RAN  # noqa: PLC0415
    from tests.support.worker import Worker  # noqa: PLC0415
    from workers.task import JobTask  # noqa: PLC0415

    _, redis_client = clean
    monkeypatch.setattr(JobTask, "envelope_size", lambda self: 1)  # noqa: ARG005 - opted out
    refs = [jobs.enqueue(tasks.record, name="stock-0")]
    refs += jobs.enqueue_many(tasks.record, [{"name": f"stock-{n}"} for n in range(1, 4)])
    assert redis_client.llen("default") == 4
    stock = Worker(worker_env, tmp_path, name="stock")
    stock.app = "tests.stock_app"
    stock.start()
    try:
        wait_for(lambda: redis_client.llen(RAN) == 4, 30, "the stock worker ran 4 messages")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stock.log()}") from None
    finally:
        stock.stop()
    ran = [json.loads(raw) for raw in redis_client.lrange(RAN, 0, -1)]
    assert sorted(r["kwargs"]["name"] for r in ran) == [f"stock-{n}" for n in range(4)]
    assert {r["id"] for r in ran} == {ref.id for ref in refs}
    assert {r["jobs"]["key"] for r in ran} == {ref.key for ref in refs}
    assert any("stock-0" in r["kwargsrepr"] for r in ran)


def test_a_queue_purged_behind_our_back_does_not_keep_counting_its_envelopes(
    clean: Any,
) -> None:
    """Given 250 jobs in envelopes, when the queue's list is deleted by something else (e.g.
    ``celery purge``), then the next admission finds the queue empty, not 247 jobs deep, and
    clears the stale envelope count.
    """
    from ops.cli.status import read_queues  # noqa: PLC0415

    _, redis_client = clean
    jobs.enqueue_many(tasks.record, [{"name": f"purged-{n}"} for n in range(250)])
    redis_client.delete("default")
    (row,) = [r for r in read_queues(redis_client, time.time()) if r.queue == "default"]
    assert row.depth == 0
    jobs.enqueue(tasks.record, name="after-purge")
    assert redis_client.hget(keys.queue_stats("default"), "enveloped") is None
    (row,) = [r for r in read_queues(redis_client, time.time()) if r.queue == "default"]
    assert row.depth == 1
