"""Cache warming against real Redis, PostgreSQL and worker processes."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

import jobs
from jobs import cache
from ops.services import libpq_url
from tests import tasks_cache
from tests.support.worker import wait_for
from workers import keys


@pytest.fixture
def registered() -> Iterator[list[str]]:
    """Names of warmers a test registers in code; unregistered afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        cache.unregister_warmer(name)


def test_100_concurrent_cold_callers_run_the_loader_once(redis_client: Any) -> None:
    """Given a cold key and a loader taking 0.3 s, when 100 threads call get_or_load at the
    same moment, then the loader runs once and every caller gets its value.
    """
    calls: list[str] = []
    guard = threading.Lock()

    def load_report(*, day: str) -> dict[str, Any]:
        with guard:
            calls.append(day)
        time.sleep(0.3)
        return {"day": day, "loads": len(calls)}

    start = threading.Barrier(100)

    def read(_: int) -> Any:
        start.wait()
        return cache.get_or_load("report:daily", load_report, ttl=60, params={"day": "d1"})

    with ThreadPoolExecutor(100) as pool:
        results = list(pool.map(read, range(100)))
    assert calls == ["d1"]
    assert results == [{"day": "d1", "loads": 1}] * 100
    assert redis_client.exists(keys.cache_lock("report:daily")) == 0


def test_a_loader_error_caches_nothing_and_frees_the_key(redis_client: Any) -> None:
    """Given a loader that fails once, when get_or_load is called twice, then the first call
    raises the loader's error, nothing is cached, and the second call loads (lock released).
    """
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("source down")
        return "ok"

    with pytest.raises(RuntimeError, match="source down"):
        cache.get_or_load("flaky", flaky, ttl=60)
    assert cache.get("flaky") is None
    assert cache.get_or_load("flaky", flaky, ttl=60, wait=0.5) == "ok"
    assert len(attempts) == 2


def test_an_older_slow_load_never_overwrites_a_newer_value(
    redis_client: Any, registered: list[str]
) -> None:
    """Given a chunk load that started first but is slow, when a later load of the same key
    stores its value meanwhile, then the slow load's value is refused when it finishes: the
    key keeps the newer value and version.
    """
    old_started, release_old = threading.Event(), threading.Event()
    calls: list[int] = []

    def loader(*, keys: list[dict[str, Any]]) -> dict[str, str]:
        calls.append(1)
        if len(calls) == 1:
            old_started.set()
            release_old.wait(10)
            return {"slow:1": "old"}
        return {"slow:1": "new"}

    warmer = cache.register_warmer(
        "slow", key_source=lambda: [{"n": 1}], loader=loader, key_template="slow:{n}"
    )
    registered.append("slow")
    written: list[int] = []
    older = threading.Thread(target=lambda: written.append(cache.load_chunk(warmer, [{"n": 1}])))
    older.start()
    assert old_started.wait(10)
    assert cache.load_chunk(warmer, [{"n": 1}]) == 1
    newer = cache.get("slow:1")
    release_old.set()
    older.join(10)
    assert written == [0]
    assert newer is not None
    assert cache.get("slow:1") == newer
    assert newer.value == "new"
    assert newer.fresh


def test_a_second_warm_while_one_runs_is_skipped_and_a_rerun_resumes(
    redis_client: Any, registered: list[str]
) -> None:
    """Given a warm run of 5 keys in chunks of 2 (3 chunk jobs queued, no worker), when warm
    is called again, then it is skipped; the same run called again resumes with its chunk jobs
    deduplicated; once its 3 chunks finish, the next warm runs.
    """
    cache.register_warmer(
        "tiny",
        key_source=lambda: [{"n": n} for n in range(5)],
        loader=lambda **_: {},
        key_template="tiny:{n}",
        chunk_size=2,
    )
    registered.append("tiny")
    first = cache.warm_cache("tiny")
    assert (first.skipped, first.keys, first.chunks) == (False, 5, 3)
    assert redis_client.llen("cache") == 3
    second = cache.warm_cache("tiny")
    assert second.skipped
    assert redis_client.get(keys.counter("cache_warm_skipped")) == b"1"
    resumed = cache.warm_cache("tiny", run=first.run)
    assert resumed.resumed
    assert redis_client.llen("cache") == 3  # its chunk jobs came back deduplicated
    assert [cache.finish_chunk("tiny", first.run, n) for n in range(3)] == [False, False, True]
    assert not cache.warm_cache("tiny").skipped


def test_a_warmer_over_10000_keys_respects_its_concurrency_limit(
    redis_client: Any, workers: Any
) -> None:
    """Given a warmer of 10,000 keys in chunks of 100 with max_concurrency 2, when a worker
    with 4 processes runs its warm job, then every key is stored with its value, the loader
    ran once per chunk, and at most 2 chunk loads ran at once (and 2 did: the limit, not a
    lack of workers, bounded it).
    """
    warmer = {
        "key_source": "tests.tasks_cache:numbers",
        "loader": "tests.tasks_cache:doubled",
        "key_template": "num:{n}",
        "ttl": 300,
        "chunk_size": 100,
        "max_concurrency": 2,
    }
    env = {"JOBS_WARMERS": json.dumps({"numbers": warmer}), "JOBS_CACHE_SLOT_WAIT": "0.1"}
    workers(queues="cache", concurrency=4, extra_env=env)
    started = time.monotonic()
    jobs.enqueue(cache.warm, warmer="numbers", key=f"warm-{uuid.uuid4().hex}")

    def run_over() -> bool:
        calls = int(redis_client.get(tasks_cache.CALLS) or 0)
        return calls >= 100 and not redis_client.exists(keys.cache_run("numbers"))

    wait_for(run_over, 120, "the warm run to finish", interval=0.2)
    elapsed = time.monotonic() - started
    with redis_client.pipeline(transaction=False) as pipe:
        for n in range(10_000):
            pipe.hget(keys.cache_value(f"num:{n}"), "d")
        values = pipe.execute()
    assert [json.loads(v) if v else None for v in values] == [2 * n for n in range(10_000)]
    assert int(redis_client.get(tasks_cache.CALLS)) == 100
    assert redis_client.zscore(tasks_cache.PEAK, "peak") == 2
    print(f"FIGURE cache warm of 10,000 keys (100 chunks, max 2 at once): {elapsed:.1f}s")


def test_chunk_jobs_start_no_faster_than_the_warmers_rate(redis_client: Any, workers: Any) -> None:
    """Given a warmer of 12 one-key chunks limited to 10 chunk starts per second, when two
    worker processes run it, then every chunk is loaded and the starts span at least the
    ~1.1 s the limit implies (parked chunks spend no attempt: nothing is dead-lettered).
    """
    redis_client.set(tasks_cache.COUNT, 12)
    warmer = {
        "key_source": "tests.tasks_cache:numbers",
        "loader": "tests.tasks_cache:stamped",
        "key_template": "rated:{n}",
        "chunk_size": 1,
        "max_concurrency": 4,
        "rate": "10/s",
    }
    workers(queues="cache", concurrency=2, extra_env={"JOBS_WARMERS": json.dumps({"r": warmer})})
    jobs.enqueue(cache.warm, warmer="r", key=f"warm-{uuid.uuid4().hex}")
    wait_for(lambda: redis_client.llen(tasks_cache.STARTS) >= 12, 60, "12 chunk loads")
    starts = sorted(float(at) for at in redis_client.lrange(tasks_cache.STARTS, 0, -1))
    assert len(starts) == 12
    assert starts[-1] - starts[0] >= 1.1 * 0.9, starts
    assert all(cache.get(f"rated:{n}") is not None for n in range(12))


def test_get_or_load_serves_stale_while_one_refresh_job_reloads(
    redis_client: Any, workers: Any
) -> None:
    """Given a value past its TTL but inside its stale window, when 20 readers ask at once,
    then each gets the stale value without waiting, one cache.refresh job reloads it (the
    loader runs once more, not 20 times), and readers get the fresh value afterwards.
    """
    workers(queues="cache", concurrency=2)
    params = {"report": "weekly"}

    def read() -> Any:
        return cache.get_or_load(
            "swr:weekly", tasks_cache.counted, ttl=1, stale_while_revalidate=60, params=params
        )

    first = read()
    assert first == {"call": 1, "params": params}
    wait_for(lambda: not cache.get("swr:weekly").fresh, 5, "the value to go stale")  # type: ignore[union-attr]
    with ThreadPoolExecutor(20) as pool:
        started = time.monotonic()
        results = list(pool.map(lambda _: read(), range(20)))
        waited = time.monotonic() - started
    # Readers get the stale value without waiting; one that comes after the refresh job
    # has already stored the new value gets that instead (the job is fast).
    assert first in results
    assert all(result == first or result["call"] == 2 for result in results), results
    assert waited < 1.0

    def refreshed() -> Any:
        cached = cache.get("swr:weekly")
        return cached if cached is not None and cached.value["call"] == 2 else None

    wait_for(refreshed, 30, "the refresh job")
    assert int(redis_client.get(tasks_cache.CALLS)) == 2
    assert read()["call"] >= 2


def test_get_or_load_refuses_a_loader_a_refresh_job_could_not_import() -> None:
    """Given a lambda loader, when get_or_load is asked for a stale-while-revalidate window,
    then it refuses at once (InvalidJob naming the loader): a worker could not run it.
    """
    with pytest.raises(jobs.InvalidJob, match="not importable") as caught:
        cache.get_or_load("k", lambda: 1, ttl=10, stale_while_revalidate=5)
    assert caught.value.field == "loader"


def test_the_demo_warmer_loads_mv_daily_stats_days(redis_client: Any, database_url: str) -> None:
    """Given events of today in the partitioned ``events`` table and a refreshed
    ``mv_daily_stats``, when the demo warmer lists and loads its keys, then today's key
    ``stats:daily:<day>`` holds that day's row of the view.
    """
    from jobs.partitions import ensure_all  # noqa: PLC0415 - the partitions family

    ensure_all()
    user = 9_000_000 + uuid.uuid4().int % 1_000_000
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO events (id, user_id, event_type, payload) VALUES "
            "(gen_random_uuid(), %s, 'signup', '{}'), "
            "(gen_random_uuid(), %s, 'purchase', '{\"amount\": 12.5}')",
            (user, user),
        )
        conn.execute("REFRESH MATERIALIZED VIEW mv_daily_stats")
        row = conn.execute(
            "SELECT day::text, total_events, purchases, signups FROM mv_daily_stats "
            "WHERE day = (now() AT TIME ZONE 'UTC')::date"
        ).fetchone()
    assert row is not None
    day = datetime.now(UTC).date().isoformat()
    warmer = cache.get_warmer("daily_stats")
    listed = cache.list_keys(warmer)
    assert {"day": day} in listed
    assert cache.load_chunk(warmer, listed) == len(listed)
    cached = cache.get(f"stats:daily:{day}")
    assert cached is not None
    assert cached.fresh
    assert (cached.value["day"], cached.value["total_events"]) == (row[0], row[1])
    assert (cached.value["purchases"], cached.value["signups"]) == (row[2], row[3])
