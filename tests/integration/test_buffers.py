"""Write buffers against real Redis, PostgreSQL and workers: append, flush, crash, reject."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from typer.testing import CliRunner

import jobs
from jobs import buffers
from tests.support.worker import wait_for
from workers import keys, resources
from workers.errors import InvalidJob
from workers.settings import get_settings

if TYPE_CHECKING:
    from collections.abc import Iterator

EVENTS_COLUMNS = {
    "id": "uuid",
    "user_id": "bigint",
    "event_type": "text",
    "payload": "jsonb",
    "created_at": "timestamptz",
}
EVENTS_BUFFER = {
    "table": "events",
    "columns": EVENTS_COLUMNS,
    "conflict_columns": ["id", "created_at"],
    "defaults": {"payload": {}},
    "generated": {"id": "uuid4", "created_at": "utcnow"},
    "batch_size": 5000,
    "flush_threshold": 5000,
    "claim_timeout": 2,
}
#: The buffers of these tests: the demo's events (short claim timeout), a small one for the
#: threshold, and one over a table with a CHECK constraint.
TEST_BUFFERS = {
    "events": EVENTS_BUFFER,
    "small": {**EVENTS_BUFFER, "batch_size": 100, "flush_threshold": 100},
    "checked": {
        "table": "buffer_test_checked",
        "columns": {"id": "uuid", "qty": "integer"},
        "conflict_columns": ["id"],
        "generated": {"id": "uuid4"},
        "batch_size": 500,
        "claim_timeout": 2,
    },
}
CHECKED_TABLE = """
CREATE TABLE IF NOT EXISTS buffer_test_checked (
    id uuid PRIMARY KEY,
    qty integer NOT NULL CONSTRAINT qty_not_negative CHECK (qty >= 0))
"""


def buffer_env_of() -> dict[str, str]:
    return {"JOBS_BUFFERS": json.dumps(TEST_BUFFERS)}


@pytest.fixture
def buffer_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """JOBS_BUFFERS of these tests, in this process (settings rebuilt) and for workers."""
    env = buffer_env_of()
    monkeypatch.setenv("JOBS_BUFFERS", env["JOBS_BUFFERS"])
    get_settings.cache_clear()
    yield env
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture
def env(clean: Any, buffer_env: dict[str, str]) -> Iterator[tuple[Any, Any]]:
    """Empty events (partitioned by the session set-up) and checked tables, dead letters and
    Redis DB; test buffers configured.
    """
    db, redis_client = clean
    db.execute(CHECKED_TABLE)
    db.execute("TRUNCATE events, buffer_test_checked")
    yield db, redis_client
    db.execute("DROP TABLE IF EXISTS buffer_test_checked")
    resources.engine().dispose()


def events(n: int, *, start: int = 0) -> list[dict[str, Any]]:
    return [{"user_id": start + i, "event_type": "view"} for i in range(n)]


def count(db: Any, table: str = "events") -> int:
    return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608


def distinct_ids(db: Any, table: str = "events") -> int:
    return int(db.execute(f"SELECT count(DISTINCT id) FROM {table}").fetchone()[0])  # noqa: S608


def leftovers(redis_client: Any, name: str = "events") -> tuple[int, int, int]:
    """(rows waiting, claims, claimed batches) of a buffer."""
    processing = sum(1 for _ in redis_client.scan_iter(match=keys.buffer_processing(name, "*")))
    return (
        int(redis_client.llen(keys.buffer(name))),
        int(redis_client.zcard(keys.buffer_claims(name))),
        processing,
    )


def flush_messages(redis_client: Any) -> list[dict[str, Any]]:
    """The kwargs of buffers.flush messages waiting in the buffers queue."""
    found = []
    for raw in redis_client.lrange("buffers", 0, -1):
        message = json.loads(raw)
        if message["headers"]["task"] == "buffers.flush":
            found.append(json.loads(base64.b64decode(message["body"]))[1])
    return found


def enqueue_flush(name: str = "events", countdown: float | None = None) -> None:
    jobs.enqueue(
        buffers.flush_buffer,
        buffer=name,
        key=f"test-flush:{uuid.uuid4().hex}",
        countdown=countdown,
    )


def test_100k_rows_appended_by_extend_are_flushed_exactly_once(env: Any, workers: Any) -> None:
    """Given a worker on the buffers queue, when 100,000 rows are appended with one extend, then
    the threshold enqueues a flush and exactly 100,000 distinct rows land in events; nothing is
    left in Redis.
    """
    db, redis_client = env
    workers(queues="buffers", extra_env=buffer_env_of())
    started = time.perf_counter()
    length = buffers.WriteBuffer("events").extend(events(100_000))
    produced = time.perf_counter() - started
    assert length == 100_000
    wait_for(lambda: count(db) >= 100_000, 90, "100,000 rows in events", interval=0.2)
    flushed = time.perf_counter() - started
    assert count(db) == 100_000
    assert distinct_ids(db) == 100_000
    wait_for(lambda: leftovers(redis_client) == (0, 0, 0), 10, "buffer, claims and lists empty")
    print(f"FIGURE extend 100k: {produced:.2f}s; appended+flushed: {flushed:.2f}s")


@pytest.mark.parametrize("point", ["buffer_after_claim", "buffer_after_commit"])
def test_a_worker_killed_between_claim_and_drop_loses_and_duplicates_nothing(
    env: Any, workers: Any, point: str
) -> None:
    """Given 12,000 buffered rows and a worker that SIGKILLs itself right after claiming its first
    batch (or right after committing it), when the whole worker is killed and a fresh one
    flushes after the claim deadline, then the orphaned batch is pushed back and every row is
    in events exactly once.
    """
    db, redis_client = env
    crashing = workers(
        queues="buffers",
        name="crash",
        extra_env={**buffer_env_of(), "JOBS_FAILPOINT": point, "JOBS_FAILPOINT_LIMIT": "1"},
    )
    buffers.WriteBuffer("events").extend(events(12_000))
    wait_for(lambda: redis_client.get(keys.counter(f"failpoint:{point}")), 30, f"failpoint {point}")
    crashing.kill_all()
    assert redis_client.zcard(keys.buffer_claims("events")) >= 1  # the orphan is still claimed
    expected_before = 5000 if point == "buffer_after_commit" else 0
    assert count(db) >= expected_before
    fresh = workers(queues="buffers", name="fresh", extra_env=buffer_env_of())
    enqueue_flush(countdown=2.5)  # after the orphan's claim deadline (claim_timeout 2 s)
    wait_for(lambda: count(db) >= 12_000, 30, "12,000 rows", interval=0.2)
    wait_for(lambda: leftovers(redis_client) == (0, 0, 0), 10, "nothing left in Redis")
    assert count(db) == 12_000
    assert distinct_ids(db) == 12_000
    assert "buffer_claims_reclaimed" in fresh.log()
    if point == "buffer_after_commit":
        assert "duplicates=5000" in fresh.log()  # the committed batch was written again: no-op


def test_rows_flushed_twice_are_written_once(env: Any) -> None:
    """Given 300 rows already flushed, when the very same rows (same keys) are buffered and
    flushed again together with 100 new ones, then only the new ones are written and the rest
    count as duplicates.
    """
    db, _ = env
    rows = [{**row, "id": str(uuid.uuid4()), "created_at": "2026-11-23T10:00:00+00:00"}
            for row in events(400)]  # fmt: skip
    buffers.WriteBuffer("events").extend(rows[:300])
    assert buffers.drain("events").written == 300
    buffers.WriteBuffer("events").extend(rows)
    result = buffers.drain("events")
    assert (result.written, result.duplicates, result.rejected) == (100, 300, 0)
    assert count(db) == distinct_ids(db) == 400


def test_orphaned_claims_are_pushed_back_and_written_by_the_next_flush(env: Any) -> None:
    """Given a batch claimed by a flush that never finished (its deadline passed), when the next
    flush runs, then it reclaims those rows first (order kept) and writes all of them once.
    """
    db, redis_client = env
    spec = get_settings().buffers["small"]
    buffers.WriteBuffer("small").extend(events(250))
    orphan = buffers.claim("small", spec, max_age=-1, now=time.time() - 60)
    assert len(orphan.rows) == 100
    assert leftovers(redis_client, "small") == (150, 1, 1)
    result = buffers.drain("small")
    assert result.reclaimed == 100
    assert result.written == 250
    assert count(db) == 250
    assert leftovers(redis_client, "small") == (0, 0, 0)


def test_a_live_claim_is_not_taken_away_before_its_deadline(env: Any) -> None:
    """Given a batch claimed a moment ago by a running flush, when another flush runs, then it
    leaves that claim alone and writes only the unclaimed rows.
    """
    _, redis_client = env
    spec = get_settings().buffers["small"]
    buffers.WriteBuffer("small").extend(events(150))
    buffers.claim("small", spec, max_age=-1)
    result = buffers.drain("small")
    assert (result.reclaimed, result.written) == (0, 50)
    assert leftovers(redis_client, "small") == (0, 1, 1)


def test_rows_the_database_refuses_are_dead_lettered_alone_and_replay_writes_them(
    env: Any, workers: Any
) -> None:
    """Given 1,000 rows of which two violate a CHECK constraint, when flushed, then 998 are
    written and each bad row is one dead letter (task buffers.write_row, reason row_rejected,
    kwargs {buffer, row}); when the constraint is lifted and the dead letters are replayed
    with jobctl, then both rows are written and the table holds 1,000 rows.
    """
    db, _ = env
    rows = [{"qty": -1 if n in {123, 777} else n} for n in range(1000)]
    buffers.WriteBuffer("checked").extend(rows)
    result = buffers.drain("checked")
    assert (result.written, result.rejected, result.remaining) == (998, 2, 0)
    assert count(db, "buffer_test_checked") == 998
    dead = db.execute(
        "SELECT task_name, reason, queue, exc_type, kwargs FROM dead_letters ORDER BY id"
    ).fetchall()
    assert [(t, r, q, e) for t, r, q, e, _ in dead] == [
        ("buffers.write_row", "row_rejected", "buffers", "CheckViolation")
    ] * 2
    assert sorted(k["row"]["qty"] for *_, k in dead) == [-1, -1]
    assert all(set(k) == {"buffer", "row"} and k["buffer"] == "checked" for *_, k in dead)
    assert all(set(k["row"]) == {"id", "qty"} for *_, k in dead)

    db.execute("ALTER TABLE buffer_test_checked DROP CONSTRAINT qty_not_negative")
    workers(queues="buffers", extra_env=buffer_env_of())
    from ops.cli import app  # noqa: PLC0415

    replayed = CliRunner().invoke(app, ["dlq", "replay", "--task", "buffers.write_row"])
    assert replayed.exit_code == 0, replayed.output
    wait_for(lambda: count(db, "buffer_test_checked") == 1000, 20, "replayed rows written")
    assert distinct_ids(db, "buffer_test_checked") == 1000


def test_a_row_neither_table_nor_dead_letter_store_can_hold_is_kept_as_raw_bytes(env: Any) -> None:
    """Given a row whose text holds a NUL — valid JSON, refused by PostgreSQL text and jsonb —
    when flushed, then the other rows are written and the row is dead-lettered with the
    database's error and its bytes as raw_message (so it never blocks the buffer); inserting it
    directly (what a replay would run) raises RowRejected again.
    """
    db, redis_client = env
    buffers.WriteBuffer("events").extend([*events(10), {"user_id": 1, "event_type": "bad\x00"}])
    result = buffers.drain("events")
    assert (result.written, result.rejected) == (10, 1)
    reason, exc_type, kwargs, raw = db.execute(
        "SELECT reason, exc_type, kwargs, raw_message FROM dead_letters"
    ).fetchone()
    assert (reason, exc_type, kwargs) == (
        "row_rejected",
        "UntranslatableCharacter",
        {"buffer": "events"},
    )
    row = json.loads(base64.b64decode(raw))
    assert row["event_type"] == "bad\x00"
    row.pop("_at")
    with pytest.raises(buffers.RowRejected, match="events refused the row"):
        buffers.insert_row("events", row)
    assert count(db) == 10
    assert leftovers(redis_client) == (0, 0, 0)


def test_an_invalid_append_is_refused_naming_the_column_and_stores_nothing(env: Any) -> None:
    """Given a batch whose third row has a string user_id, when extended, then InvalidJob names
    the buffer, row 2 and the column, and no row of the batch is buffered.
    """
    _, redis_client = env
    rows = [*events(2), {"user_id": "three", "event_type": "view"}]
    with pytest.raises(InvalidJob, match=r"'events': row 2, column 'user_id': expected an int"):
        buffers.WriteBuffer("events").extend(rows)
    assert redis_client.llen(keys.buffer("events")) == 0


def test_reaching_the_threshold_enqueues_exactly_one_flush_for_a_burst(env: Any) -> None:
    """Given a buffer with threshold 100 and no worker, when 99 rows are appended nothing is
    enqueued; when a burst of appends crosses the threshold, then exactly one buffers.flush job
    is queued; once a flush has started, the next crossing enqueues one more.
    """
    _, redis_client = env
    buffer = buffers.WriteBuffer("small")
    buffer.extend(events(99))
    assert flush_messages(redis_client) == []
    threads = [threading.Thread(target=buffer.append, args=(row,)) for row in events(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    buffer.extend(events(500))
    assert flush_messages(redis_client) == [{"buffer": "small"}]
    buffers.drain("small", max_age=-1)
    buffer.extend(events(100))
    assert flush_messages(redis_client) == [{"buffer": "small"}] * 2


def test_a_partial_batch_waits_for_max_age_but_full_batches_are_written(env: Any) -> None:
    """Given a buffer holding 1.5 batches of fresh rows, when flushed with max_age 60 s, then the
    full batch is written and the fresh partial one waits; a flush with max_age 0 writes it.
    """
    db, _ = env
    buffers.WriteBuffer("small").extend(events(150))
    first = buffers.drain("small", max_age=60)
    assert (first.written, first.remaining) == (100, 50)
    second = buffers.drain("small", max_age=0)
    assert (second.written, second.remaining) == (50, 0)
    assert count(db) == 150


def test_buffer_stats_report_length_and_the_age_of_the_oldest_row(env: Any) -> None:
    """Given an empty buffer, then stats are (0, 0); given rows appended, then the length and
    the age of the oldest waiting row (from its append time) are reported.
    """
    assert buffers.buffer_stats("events") == (0, 0.0)
    appended = time.time()
    buffers.WriteBuffer("events").extend(events(3))
    buffers.WriteBuffer("events").append({"user_id": 9, "event_type": "signup"})
    length, age = buffers.buffer_stats("events", now=appended + 30)
    assert length == 4
    assert 29 <= age <= 31


def test_concurrent_flushes_write_every_row_once(env: Any) -> None:
    """Given 20,000 buffered rows, when four flushes run at once, then every row is written by
    exactly one of them.
    """
    db, redis_client = env
    buffers.WriteBuffer("events").extend(events(20_000))
    results: list[buffers.FlushResult] = []
    threads = [
        threading.Thread(target=lambda: results.append(buffers.drain("events"))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r.written for r in results) == 20_000
    assert sum(r.duplicates for r in results) == 0
    assert count(db) == 20_000
    assert leftovers(redis_client) == (0, 0, 0)


def test_a_warm_shutdown_flushes_what_is_buffered(env: Any, workers: Any) -> None:
    """Given a worker on the buffers queue and 10 rows below every threshold (no flush job),
    when the worker is stopped with SIGTERM, then its final flush writes the 10 rows.
    """
    db, redis_client = env
    worker = workers(queues="buffers", extra_env=buffer_env_of())
    buffers.WriteBuffer("events").extend(events(10))
    assert count(db) == 0
    worker.stop(timeout=20)
    assert count(db) == 10
    assert leftovers(redis_client) == (0, 0, 0)
    assert "buffer_shutdown_flush" in worker.log()


def test_a_worker_not_consuming_buffers_does_not_flush_on_shutdown(env: Any, workers: Any) -> None:
    """Given a worker on the default queue only, when it stops, then buffered rows stay."""
    db, _ = env
    worker = workers(queues="default", extra_env=buffer_env_of())
    buffers.WriteBuffer("events").extend(events(5))
    worker.stop(timeout=20)
    assert count(db) == 0
    assert buffers.buffer_stats("events").length == 5
