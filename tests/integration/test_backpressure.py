"""Backpressure at enqueue: bounded queues, hysteresis, retry_after, on_full, zero SQL.

Watermarks are small here (high 200, low 50 on "default"), set for this process (settings
cache cleared, restored afterwards) and for every worker started.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool

import jobs
from jobs.http import queue_full_response
from tests import tasks
from tests.support.worker import wait_for
from workers import keys, resources
from workers.backpressure import DEFAULT_RETRY_AFTER, estimate_retry_after
from workers.envelopes import ENVELOPED_FIELD
from workers.errors import BatchQueueFull, QueueFull
from workers.settings import get_settings

#: Every test runs with one message per job and with envelopes (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("delivery")

HIGH, LOW = 200, 50
LIST_KEYS = ("default", "default\x06\x163", "default\x06\x166", "default\x06\x169")
FULL_MARKER = "jobs:queue:default:full"
STATS = "jobs:queue:default:stats"


def configure(monkeypatch: pytest.MonkeyPatch, **knobs: float) -> dict[str, str]:
    """Set JOBS_QUEUES for this process (fresh settings); the same env for workers."""
    env = {
        "JOBS_QUEUES": json.dumps(
            {"default": {"high_watermark": HIGH, "low_watermark": LOW, **knobs}}
        )
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    return env


@pytest.fixture
def small_queues(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Watermarks 200/50 on "default"; yields the env to give workers."""
    yield configure(monkeypatch)
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture
def aged_queues(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Watermarks 200/50 and a max age of 1 s on "default"."""
    yield configure(monkeypatch, max_age=1.0)
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture
def large_queues(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Watermarks 1,200/300 on "default" (more than two admit.lua chunks)."""
    yield configure(monkeypatch, high_watermark=1200, low_watermark=300)
    monkeypatch.undo()
    get_settings.cache_clear()


def depth(client: Any) -> int:
    """Waiting jobs on "default", summed over its priority sub-queues (envelopes count jobs)."""
    with client.pipeline(transaction=False) as pipe:
        for key in LIST_KEYS:
            pipe.llen(key)
        pipe.hget(keys.queue_stats("default"), ENVELOPED_FIELD)
        *lengths, enveloped = pipe.execute()
    return sum(lengths) + int(enveloped or 0)


def empty(client: Any) -> None:
    """Every waiting job of "default" is gone (as if fetched)."""
    client.delete(*LIST_KEYS)
    client.hdel(keys.queue_stats("default"), ENVELOPED_FIELD)


#: For tests that drain a queue one job at a time with RPOP/LTRIM: one message per job only.
messages_only = pytest.mark.parametrize("delivery", ["messages"], indirect=True)


_numbers = itertools.count(1_000_000)


def fill(count: int, priority: int | None = None) -> list[jobs.JobRef]:
    """Enqueue ``count`` distinct no-op jobs (accepted: callers stay under the watermark)."""
    calls = [{"n": next(_numbers)} for _ in range(count)]
    return jobs.enqueue_many(tasks.noop, calls, priority=priority)


def effects_count(db: Any) -> int:
    return int(db.execute("SELECT count(*) FROM test_effects").fetchone()[0])


def test_over_the_high_watermark_enqueue_raises_queue_full_and_publishes_nothing(
    clean: Any, small_queues: Any, delivery: str
) -> None:
    """Given "default" filled to its high watermark across two priority sub-queues, when a job
    is enqueued (now, later, or via apply_async), then QueueFull names the queue, depth and
    limit with a positive retry_after, and no message, delayed entry or dedup marker appears.
    """
    _, client = clean
    fill(100)
    fill(100, priority=9)
    assert depth(client) == HIGH
    assert client.llen("default\x06\x169") == (100 if delivery == "messages" else 1)

    with pytest.raises(QueueFull) as caught:
        jobs.enqueue(tasks.noop, n=1, key="refused-1")
    exc = caught.value
    assert (exc.queue, exc.depth, exc.limit) == ("default", HIGH, HIGH)
    assert exc.retry_after == DEFAULT_RETRY_AFTER  # no worker has measured a drain rate
    with pytest.raises(QueueFull):
        jobs.enqueue(tasks.noop, n=2, key="refused-2", countdown=30)
    with pytest.raises(QueueFull):
        tasks.noop.apply_async(kwargs={"n": 3}, key="refused-3")

    assert depth(client) == HIGH
    assert client.zcard("jobs:delayed") == 0
    assert not client.exists("jobs:dedup:refused-1", "jobs:dedup:refused-2", "jobs:dedup:refused-3")
    assert client.exists(FULL_MARKER)
    status, headers, _ = queue_full_response(exc)
    assert (status, dict(headers)["Retry-After"]) == (503, "5")


@messages_only
def test_a_full_queue_stays_closed_until_it_drains_below_the_low_watermark(
    clean: Any, small_queues: Any
) -> None:
    """Given a queue that hit its high watermark, when it drains to 100 (between the
    watermarks) enqueue is still refused; below 50 it is accepted again and the marker is gone.
    """
    _, client = clean
    fill(HIGH)
    with pytest.raises(QueueFull):
        jobs.enqueue(tasks.noop, n=1)
    for _ in range(HIGH - 100):
        client.rpop("default")
    with pytest.raises(QueueFull) as caught:
        jobs.enqueue(tasks.noop, n=1)
    assert caught.value.depth == 100
    for _ in range(100 - (LOW - 1)):
        client.rpop("default")
    ref = jobs.enqueue(tasks.noop, n=1)
    assert not ref.deduplicated
    assert depth(client) == LOW
    assert not client.exists(FULL_MARKER)
    fill(HIGH - LOW)  # open again: accepted up to the high watermark
    assert depth(client) == HIGH


@messages_only
def test_enqueue_many_admits_up_to_the_watermark_and_names_the_rest(
    clean: Any, small_queues: Any
) -> None:
    """Given 195 waiting jobs, when a batch of 10 is enqueued, then the first 5 are admitted
    and BatchQueueFull carries their refs and the refused positions; resubmitting the whole
    batch once there is room admits the rest and deduplicates the first 5.
    """
    _, client = clean
    fill(HIGH - 5)
    batch = [{"n": i} for i in range(10)]
    with pytest.raises(BatchQueueFull) as caught:
        jobs.enqueue_many(tasks.noop, batch)
    exc = caught.value
    assert isinstance(exc, QueueFull)
    assert len(exc.accepted) == 5
    assert exc.refused == [5, 6, 7, 8, 9]
    assert "5 of 10 jobs of the batch accepted" in str(exc)
    assert depth(client) == HIGH

    client.delete(*LIST_KEYS[1:])
    client.ltrim("default", 0, 9)  # keep the 10 newest: the batch's first 5 among them
    refs = jobs.enqueue_many(tasks.noop, batch)
    assert [ref.deduplicated for ref in refs] == [True] * 5 + [False] * 5
    assert [ref.id for ref in refs[:5]] == [ref.id for ref in exc.accepted]


def test_a_batch_larger_than_one_script_call_is_decided_job_by_job_across_chunks(
    clean: Any, large_queues: Any, delivery: str
) -> None:
    """Given a high watermark of 1,200 and an empty queue, when a batch of 1,500 is enqueued
    (three admit.lua calls of 500), then exactly the first 1,200 are admitted, in order,
    the rest refused by position; a batch with a countdown goes to the delayed store, one
    entry per job, and leaves the queue's depth alone.
    """
    _, client = clean
    with pytest.raises(BatchQueueFull) as caught:
        jobs.enqueue_many(tasks.noop, [{"n": i} for i in range(1500)])
    assert len(caught.value.accepted) == 1200
    assert caught.value.refused == list(range(1200, 1500))
    assert depth(client) == 1200
    # A wake token per message published (64 kept): per job, or per envelope of 100.
    per_message = delivery == "messages"
    assert client.llen("jobs:wake:default") == (64 if per_message else 12)

    empty(client)
    client.delete(FULL_MARKER)
    refs = jobs.enqueue_many(tasks.noop, [{"n": 10_000 + i} for i in range(600)], countdown=60)
    assert len(refs) == 600
    assert not any(ref.deduplicated for ref in refs)
    assert client.zcard("jobs:delayed") == (600 if per_message else 6)
    assert depth(client) == 0


def test_a_queue_whose_oldest_job_is_too_old_refuses_until_it_is_fetched(
    clean: Any, aged_queues: Any
) -> None:
    """Given max_age 1 s and one waiting job, when it has waited over 1 s, then enqueue is
    refused (far below the high watermark) with a note naming the age; once it is fetched,
    enqueue is accepted again.
    """
    _, client = clean
    jobs.enqueue(tasks.noop, n=0)

    def refused() -> QueueFull | None:
        try:
            jobs.enqueue(tasks.noop, n=next(_numbers))
        except QueueFull as exc:
            return exc
        return None

    exc = wait_for(refused, 5, "an age refusal", interval=0.1)
    assert exc.depth < HIGH
    assert any("max age 1.0s" in note for note in exc.__notes__)
    empty(client)  # every waiting job is fetched
    assert not jobs.enqueue(tasks.noop, n=1).deduplicated


def test_the_whole_enqueue_path_issues_no_sql_and_opens_no_database_connection(
    clean: Any, small_queues: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given statement, pool and connect listeners on every SQLAlchemy engine (and psycopg's
    connect made to fail), when jobs are accepted, refused, and refused in a batch, then no
    statement ran, no connection was checked out or made, and Postgres saw no new session.
    """
    db, _ = clean
    sessions = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    before = db.execute(sessions).fetchone()[0]
    seen: list[str] = []

    def on_statement(*args: Any) -> None:
        seen.append(f"statement: {args[2]}")

    def on_pool(*_: Any) -> None:
        seen.append("pool checkout/connect")

    def no_connect(*_: Any, **__: Any) -> None:
        seen.append("psycopg.connect")
        raise AssertionError("the enqueue path connected to PostgreSQL")

    listeners: list[tuple[Any, str, Callable[..., None]]] = [
        (Engine, "before_cursor_execute", on_statement),
        (resources.engine(), "before_cursor_execute", on_statement),
        (Pool, "checkout", on_pool),
        (Pool, "connect", on_pool),
    ]
    for target, name, listener in listeners:
        event.listen(target, name, listener)
    monkeypatch.setattr(psycopg, "connect", no_connect)
    monkeypatch.setattr(psycopg.Connection, "connect", no_connect)
    try:
        jobs.enqueue(tasks.noop, n=1)
        fill(HIGH - 3)
        with pytest.raises(BatchQueueFull):
            fill(5)
        for i in range(50):
            with pytest.raises(QueueFull):
                jobs.enqueue(tasks.noop, n=10 + i)
        with pytest.raises(QueueFull):
            jobs.enqueue(tasks.noop, n=99, on_full="wait", wait_max=0.2)
    finally:
        for target, name, listener in listeners:
            event.remove(target, name, listener)
    assert seen == []
    assert db.execute(sessions).fetchone()[0] == before


@dataclass
class Producers:
    """Producer threads hammering "default" with single and batched enqueues."""

    threads: int = 3
    batch: int = 20
    accepted: int = 0
    refused: int = 0
    retry_afters: set[float] = field(default_factory=set)
    errors: list[BaseException] = field(default_factory=list)
    max_depth: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, seconds: float, client: Any) -> None:
        """Hammer for ``seconds`` while sampling the depth; then stop every thread."""
        self._stop.clear()
        workers = [threading.Thread(target=self._single) for _ in range(self.threads)]
        workers.append(threading.Thread(target=self._batches))
        for thread in workers:
            thread.start()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.max_depth = max(self.max_depth, depth(client))
            time.sleep(0.005)
        self._stop.set()
        for thread in workers:
            thread.join(timeout=10)
        assert not any(thread.is_alive() for thread in workers)

    def _count(self, accepted: int, refused: int, exc: QueueFull | None) -> None:
        with self._lock:
            self.accepted += accepted
            self.refused += refused
            if exc is not None:
                self.retry_afters.add(exc.retry_after)

    def _single(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    jobs.enqueue(tasks.noop, n=next(_numbers))
                    self._count(1, 0, None)
                except QueueFull as exc:
                    self._count(0, 1, exc)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.errors.append(exc)

    def _batches(self) -> None:
        try:
            while not self._stop.is_set():
                calls = [{"n": next(_numbers)} for _ in range(self.batch)]
                try:
                    self._count(len(jobs.enqueue_many(tasks.noop, calls)), 0, None)
                except BatchQueueFull as exc:
                    self._count(len(exc.accepted), len(exc.refused), exc)
        except BaseException as exc:
            self.errors.append(exc)


def test_depth_stays_bounded_while_producers_hammer_and_reopens_once_workers_drain(
    clean: Any, small_queues: dict[str, str], workers: Any
) -> None:
    """Given four producer threads (one batching) hammering "default" for 3 s with no worker,
    then the depth never exceeds the high watermark, exactly 200 jobs got in, the rest were
    refused with a positive retry_after, and no SQL ran. When two workers drain it below the
    low watermark, enqueue succeeds again; hammering on while they drain keeps the depth
    bounded, and every accepted job runs.
    """
    db, client = clean
    statements: list[Any] = []

    def on_statement(*args: Any) -> None:
        statements.append(args[2])

    event.listen(Engine, "before_cursor_execute", on_statement)
    try:
        producers = Producers()
        producers.run(3.0, client)
    finally:
        event.remove(Engine, "before_cursor_execute", on_statement)
    assert producers.errors == []
    assert statements == []
    assert producers.max_depth <= HIGH
    assert depth(client) == HIGH
    assert producers.accepted == HIGH
    assert producers.refused > 100
    assert producers.retry_afters
    assert min(producers.retry_afters) > 0

    for name in ("a", "b"):
        workers(name=name, extra_env=small_queues)
    wait_for(lambda: depth(client) < LOW, 30, "workers to drain below the low watermark")
    assert not jobs.enqueue(tasks.noop, n=next(_numbers)).deduplicated
    accepted_before = producers.accepted
    producers.run(3.0, client)
    assert producers.errors == []
    assert producers.max_depth <= HIGH
    assert producers.accepted > accepted_before

    total = producers.accepted + 1
    wait_for(lambda: effects_count(db) >= total, 40, f"{total} jobs to run")
    assert depth(client) == 0
    assert effects_count(db) == total


@pytest.mark.serial  # measures a time window: run alone
# With envelopes the drain rate is measured at fetch, 100 jobs at a time (coarse by design):
# the bounds below are for one job per message.
@messages_only
def test_retry_after_reflects_the_drain_rate_workers_measured(
    clean: Any, small_queues: dict[str, str], workers: Any
) -> None:
    """Given a worker that drained a backlog of 50 ms jobs (so its housekeeping measured a
    drain rate), when the queue is full again, then retry_after is (depth - low) / that rate,
    not the default.
    """
    _, client = clean
    calls = [{"name": f"slow-{i}", "sleep": 0.05} for i in range(HIGH)]
    jobs.enqueue_many(tasks.record, calls)
    worker = workers(extra_env=small_queues, concurrency=2)
    rate = float(
        wait_for(
            lambda: depth(client) < HIGH - 60 and client.hget(STATS, "drain_rate"),
            30,
            "a measured drain rate",
        )
    )
    assert 2 < rate < 200, rate  # two processes of 50 ms jobs: at most ~40/s
    assert int(client.hget(STATS, "fetched")) >= 60
    worker.stop()
    fill(HIGH - depth(client))
    with pytest.raises(QueueFull) as caught:
        jobs.enqueue(tasks.noop, n=next(_numbers))
    stored = float(client.hget(STATS, "drain_rate"))
    sampled_at = float(client.hget(STATS, "sampled_at"))
    expected = estimate_retry_after(HIGH - LOW, stored, sampled_at, time.time())
    assert caught.value.retry_after == pytest.approx(expected)
    assert caught.value.retry_after != DEFAULT_RETRY_AFTER


def test_on_full_wait_raises_after_the_bounded_wait_when_nothing_drains(
    clean: Any, small_queues: Any
) -> None:
    """Given a full queue and no worker, when enqueue waits up to 1 s (or apply_async 0.3 s),
    then QueueFull is raised after about that long and nothing was published.
    """
    _, client = clean
    fill(HIGH)
    started = time.monotonic()
    with pytest.raises(QueueFull):
        jobs.enqueue(tasks.noop, n=1, key="waited", on_full="wait", wait_max=1.0)
    assert 1.0 <= time.monotonic() - started < 2.5
    started = time.monotonic()
    with pytest.raises(QueueFull):
        tasks.noop.apply_async(kwargs={"n": 2}, on_full="wait", wait_max=0.3)
    assert 0.3 <= time.monotonic() - started < 1.5
    assert depth(client) == HIGH
    assert not client.exists("jobs:dedup:waited")


def test_on_full_wait_succeeds_once_a_worker_frees_room(
    clean: Any, small_queues: dict[str, str], workers: Any
) -> None:
    """Given 195 waiting jobs, when a batch of 10 and a single job are enqueued with
    on_full="wait" and a worker starts, then both calls return once it has drained below the
    low watermark: all 11 admitted (none deduplicated: only refused jobs are retried), and
    every job runs.
    """
    db, client = clean
    fill(HIGH - 5)
    single: list[Any] = []

    def enqueue_single() -> None:
        try:
            single.append(jobs.enqueue(tasks.noop, n=-1, on_full="wait", wait_max=30))
        except BaseException as exc:
            single.append(exc)

    thread = threading.Thread(target=enqueue_single)
    thread.start()
    workers(extra_env=small_queues, wait=False)
    started = time.monotonic()
    refs = jobs.enqueue_many(
        tasks.noop, [{"n": -100 - i} for i in range(10)], on_full="wait", wait_max=30
    )
    thread.join(timeout=35)
    assert time.monotonic() - started > 0.5  # it did have to wait for the worker
    assert len(refs) == 10
    assert len({ref.id for ref in refs}) == 10
    assert not any(ref.deduplicated for ref in refs)
    assert len(single) == 1
    assert isinstance(single[0], jobs.JobRef), single
    wait_for(lambda: effects_count(db) == HIGH - 5 + 11, 30, "every job to run")
    assert depth(client) == 0
