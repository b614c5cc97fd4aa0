"""The Prometheus exporter against real Redis, PostgreSQL and a worker: every metric, exactly.

The scenario is scripted with the runtime's own APIs (admission, the policies, the breaker
store, write buffers, the dead-letter store, the beat lease); the collector is scraped with a
fixed clock, directly and once over HTTP, and every sample is compared with its expected value.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import jobs
from jobs.buffers import WriteBuffer, appended_at
from ops.exporter import METRIC_NAMES, JobsCollector, serve
from scheduler.leader import Leadership
from tests.support.worker import wait_for
from tests.tasks import record
from workers import counters, deadletters, keys, resources
from workers.app import app as celery_app
from workers.breakers import Breakers, BreakerState, Result
from workers.errors import Defer, PermanentError, QueueFull
from workers.health import HealthRecord
from workers.job import HEADER, Job
from workers.policies import Execution
from workers.policies.breaker import Breaker
from workers.policies.ratelimit import RateLimit
from workers.queues import QUEUE_NAMES
from workers.settings import get_settings

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from prometheus_client.core import Metric

#: The scenario's clock: a whole second, a little ahead of real time (ages come out exact).
NOW = float(int(time.time()) + 100)


@pytest.fixture(autouse=True)
def _fresh_now() -> None:
    """The scenario's clock: 100 s after the test starts (not after collection, which may be
    minutes earlier in a full run), so every real timestamp the scenario writes is before it.
    """
    global NOW  # noqa: PLW0603 - the scenario helpers read the module's clock
    NOW = float(int(time.time()) + 100)


DESTINATION = "api.example.test"
WORKER_ID = "host-a:1234:c0ffee"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples_of(metrics: Iterable[Metric]) -> Samples:
    """``{(sample name, sorted labels): value}`` of a scrape."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in metrics
        for sample in metric.samples
    }


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (name, tuple(sorted(labels.items())))


def without_timing(samples: Samples) -> Samples:
    return {k: v for k, v in samples.items() if k[0] != "jobs_exporter_scrape_seconds"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape_http(collector: JobsCollector) -> Samples:
    port = free_port()
    server = serve("127.0.0.1", port, collector)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    return samples_of(text_string_to_metric_families(text))


def execution(**options: Any) -> Execution:
    return Execution(app=celery_app, settings=get_settings(), options=options, time_limit=10.0)


def a_job(name: str) -> Job:
    return Job(
        id=str(uuid.uuid4()),
        task=record.name,
        key=f"exporter-test:{name}",
        queue="default",
        args=(),
        kwargs={"name": name},
    )


def oldest_ready_at(redis_client: Any, queue: str) -> float:
    """The smallest ``ready_at`` among the oldest entries of ``queue``'s priority lists."""
    found = []
    for list_key in (queue, *(f"{queue}\x06\x16{step}" for step in (3, 6, 9))):
        raw = redis_client.lindex(list_key, -1)
        if raw is not None:
            found.append(json.loads(raw)["headers"][HEADER]["ready_at"])
    return min(found)


def dead_letter(task: str, exc: BaseException) -> int:
    """Store a dead letter the way the DeadLetter policy does, counter included."""
    try:
        raise exc
    except type(exc) as caught:
        entry = deadletters.from_exception(
            caught,
            job_id=str(uuid.uuid4()),
            task_name=task,
            queue="default",
            reason="permanent_error",
        )
    entry_id = deadletters.write(resources.engine(), entry)
    counters.incr(counters.DEAD_LETTERED, task)
    return entry_id


@pytest.fixture
def scenario_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The ``cache`` queue bounded at 2 jobs (to see a backpressure refusal)."""
    monkeypatch.setenv("JOBS_QUEUES", json.dumps({"cache": {"high_watermark": 2}}))
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture
def domain(db: Any) -> Iterator[Any]:
    """No events and no view state before; the rows the scenario adds removed after."""
    db.execute("TRUNCATE events")
    db.execute("DELETE FROM view_refresh_state")
    yield db
    db.execute("TRUNCATE events")
    db.execute("DELETE FROM view_refresh_state")


def script_jobs() -> BreakerState:
    """Queued, delayed, refused, dead-lettered, rate-limited and breaker-parked jobs."""
    redis_client = resources.redis_client()
    # Queues: 3 + 1 (priority 5: another sub-queue) in default, 2 in webhooks (paused), and
    # the bounded cache queue: 2 admitted, the third refused.
    for n in range(3):
        jobs.enqueue(record, name=f"d{n}")
    jobs.enqueue(record, name="d-low", priority=5)
    for n in range(2):
        jobs.enqueue(record, name=f"w{n}", queue="webhooks")
    redis_client.sadd(keys.paused_queues(), "webhooks")
    for n in range(2):
        jobs.enqueue(record, name=f"c{n}", queue="cache")
    with pytest.raises(QueueFull):
        jobs.enqueue(record, name="c-refused", queue="cache")
    # Delayed: one due in an hour, one already due (nobody promotes: no worker runs).
    jobs.enqueue(record, name="later", countdown=3600)
    jobs.enqueue(record, name="due", countdown=0.001)
    # Dead letters: two of one failure, one of another, one replayed (not counted as dead).
    dead_letter("tests.record", PermanentError("no such order"))
    dead_letter("tests.record", PermanentError("no such order"))
    dead_letter("webhooks.deliver", ValueError("bad payload"))
    replayed = dead_letter("cache.load", KeyError("gone"))
    deadletters.mark_replayed(resources.engine(), replayed, queue="cache", by="test")
    # Rate limit: the second job of a 1/h limit is parked (counted).
    limited = execution(rate="1/h")
    RateLimit().before(a_job("rl-1"), limited)
    with pytest.raises(Defer):
        RateLimit().before(a_job("rl-2"), limited)
    # Breaker: opened through the store's API, then a job for it is parked (counted).
    store = Breakers.from_settings(get_settings())
    for _ in range(get_settings().breaker_failures):
        store.record(store.allow(DESTINATION, lease=10), Result.FAILURE, lease=10)
    with pytest.raises(Defer):
        Breaker().before(a_job("br"), execution(breaker_key=lambda _job: DESTINATION))
    opened = store.state(DESTINATION)
    assert opened is not None
    assert opened.opened_at is not None
    return opened


def script_state(db: Any, redis_client: Any) -> None:
    """Buffered rows, view state, a DEFAULT-partition row, beat, consumers, liveness."""
    # Write buffer: 3 rows waiting.
    WriteBuffer("events").extend([{"user_id": n, "event_type": "view"} for n in range(3)])
    # View refreshed 42 s before NOW; one event outside every partition (DEFAULT).
    db.execute(
        "INSERT INTO view_refresh_state (view, last_success_at) VALUES (%s, %s)",
        ("mv_daily_stats", datetime.fromtimestamp(NOW - 42, UTC)),
    )
    db.execute(
        "INSERT INTO events (id, user_id, event_type, created_at) "
        "VALUES (gen_random_uuid(), 1, 'view', '2001-01-01T00:00:00Z')"
    )
    # Beat: a leader that ticked.
    beat = Leadership("beat-host:4321:feedbeef", lease=12)
    assert beat.acquire()
    assert beat.read() is not None
    # Consumers: one alive holding 2 messages, one silent for long (not alive), 1 message.
    redis_client.zadd(keys.consumers(), {"consumer-a": NOW, "consumer-b": NOW - 1000})
    redis_client.hset(keys.inflight("consumer-a"), mapping={"t1": "default\n{}", "t2": "x\n{}"})
    redis_client.hset(keys.inflight("consumer-b"), "t3", "default\n{}")
    # Worker liveness: the record a worker's housekeeping publishes (every slot busy).
    busy = HealthRecord(
        consumer=WORKER_ID,
        hostname="host-a",
        pid=1234,
        queues=("default",),
        started_at=NOW - 60,
        last_poll=NOW - 5,
        last_delivery=None,
        inflight=1,
        prefetch=1,
        updated_at=NOW,
    )
    redis_client.hset(keys.worker_health(), WORKER_ID, busy.to_json())
    # Drain rates measured by workers: a fresh one, and a stale one (no worker measures it).
    redis_client.hset(
        keys.queue_stats("maintenance"), mapping={"drain_rate": "12.5", "sampled_at": NOW - 1}
    )
    redis_client.hset(
        keys.queue_stats("buffers"), mapping={"drain_rate": "3.0", "sampled_at": NOW - 999}
    )
    # Duplicates skipped (the idempotency policy's counter).
    redis_client.set(keys.counter("duplicates_skipped"), 4)


def test_after_a_scripted_scenario_every_metric_has_its_exact_value(
    clean: Any, scenario_env: None, domain: Any
) -> None:
    """Given jobs queued in several queues (one paused, one full), delayed jobs, dead letters,
    a rate-limited and a breaker-parked job, an open breaker, buffered rows, a stale view, a
    row in the DEFAULT partition, a beat leader, consumers with in-flight messages and a
    worker's liveness record,
    When the exporter is scraped (directly, then over HTTP),
    Then every sample has exactly the expected value, both ways, and every source is up.
    """
    db, redis_client = clean
    opened = script_jobs()
    script_state(db, redis_client)
    collector = JobsCollector(clock=lambda: NOW)
    direct = samples_of(collector.collect())
    over_http = scrape_http(collector)
    collector.close()

    top = dict(
        db.execute(
            "SELECT task_name || ' ' || fingerprint, count(*) FROM dead_letters "
            "WHERE status = 'dead' GROUP BY 1"
        ).fetchall()
    )
    assert sorted(top.values()) == [1, 2]
    assert all(" PermanentError@" in k or " ValueError@" in k for k in top)
    tick = float(redis_client.get(keys.beat_last_tick()))
    buffer_head = appended_at(redis_client.lindex(keys.buffer("events"), 0))
    assert buffer_head is not None
    expected: Samples = {
        key("jobs_queue_depth", queue="default"): 4,
        key("jobs_queue_depth", queue="webhooks"): 2,
        key("jobs_queue_depth", queue="cache"): 2,
        key("jobs_queue_depth", queue="maintenance"): 0,
        key("jobs_queue_depth", queue="buffers"): 0,
        key("jobs_queue_oldest_age_seconds", queue="default"): NOW
        - oldest_ready_at(redis_client, "default"),
        key("jobs_queue_oldest_age_seconds", queue="webhooks"): NOW
        - oldest_ready_at(redis_client, "webhooks"),
        key("jobs_queue_oldest_age_seconds", queue="cache"): NOW
        - oldest_ready_at(redis_client, "cache"),
        key("jobs_queue_oldest_age_seconds", queue="maintenance"): 0,
        key("jobs_queue_oldest_age_seconds", queue="buffers"): 0,
        **{key("jobs_queue_paused", queue=q): float(q == "webhooks") for q in QUEUE_NAMES},
        key("jobs_queue_drain_rate", queue="maintenance"): 12.5,
        key("jobs_queue_drain_rate", queue="buffers"): 0,
        key("jobs_delayed_jobs"): 2,
        key("jobs_delayed_due_jobs"): 1,
        key("jobs_inflight_jobs"): 3,
        key("jobs_workers_alive"): 1,
        key("jobs_worker_last_consume_timestamp_seconds", worker=WORKER_ID): NOW - 5,
        key("jobs_worker_last_delivery_timestamp_seconds", worker=WORKER_ID): 0,
        key("jobs_worker_saturated", worker=WORKER_ID): 1,
        **{
            key("jobs_dead_letters", task=k.split(" ")[0], fingerprint=k.split(" ", 1)[1]): n
            for k, n in top.items()
        },
        key("jobs_dead_letter_rows"): 3,
        key("jobs_dead_lettered_total", task="tests.record"): 2,
        key("jobs_dead_lettered_total", task="webhooks.deliver"): 1,
        key("jobs_dead_lettered_total", task="cache.load"): 1,
        key("jobs_rate_limited_total", limit="tests.record"): 1,
        key("jobs_backpressure_rejected_total", queue="cache"): 1,
        key("jobs_breaker_parked_total", destination=DESTINATION): 1,
        key("jobs_duplicates_skipped_total"): 4,
        key("jobs_breaker_state", destination=DESTINATION): 2,
        key("jobs_breaker_open_seconds", destination=DESTINATION): NOW
        - opened.opened_at.timestamp(),
        key("jobs_buffer_rows", buffer="events"): 3,
        key("jobs_buffer_oldest_age_seconds", buffer="events"): NOW - buffer_head,
        key("jobs_view_staleness_seconds", view="mv_daily_stats"): 42,
        key("jobs_view_refresh_interval_seconds", view="mv_daily_stats"): 300,
        key("jobs_future_partitions", table="events"): 3,
        key("jobs_default_partition_rows", table="events"): 1,
        key("jobs_beat_last_tick_timestamp_seconds"): tick,
        key("jobs_beat_leader_info", identity="beat-host:4321:feedbeef"): 1,
        **{
            key("jobs_exporter_source_up", source=source): 1
            for source in (
                "queues",
                "delayed",
                "consumers",
                "workers",
                "counters",
                "breakers",
                "beat",
                "buffers",
                "dead_letters",
                "views",
                "partitions",
            )
        },
    }
    assert without_timing(direct) == expected
    assert without_timing(over_http) == expected
    assert 0 < direct[key("jobs_exporter_scrape_seconds")] < 10
    assert {name for name, _ in direct} <= METRIC_NAMES


class CommandCounter:
    """Counts the Redis commands this process sends (every client shares the packer class)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Start counting (until ``monkeypatch`` undoes it)."""
        self.names: list[str] = []
        client = resources.redis_client()
        connection = client.connection_pool.get_connection()
        packer_class = type(connection._command_packer)
        client.connection_pool.release(connection)
        original = packer_class.pack

        def pack(packer: Any, *args: Any) -> Any:
            self.names.append(str(args[0]).upper())
            return original(packer, *args)

        monkeypatch.setattr(packer_class, "pack", pack)

    def during(self, action: Any) -> list[str]:
        """The commands sent while ``action()`` ran."""
        self.names.clear()
        action()
        return list(self.names)


@pytest.mark.parametrize("delivery", ["messages"], indirect=True)  # 10,000 messages
def test_a_scrape_costs_the_same_redis_commands_for_10_or_10000_waiting_jobs(
    clean: Any, monkeypatch: pytest.MonkeyPatch, delivery: str
) -> None:
    """Given 10 waiting jobs, then 10,000 (plus delayed jobs, a breaker and buffered rows),
    When the exporter is scraped,
    Then both scrapes send the same Redis commands, and none of them is KEYS or a SCAN.
    """
    _, redis_client = clean
    jobs.enqueue_many(record, [{"name": f"a{n}"} for n in range(10)])
    jobs.enqueue_many(record, [{"name": f"later{n}"} for n in range(5)], countdown=3600)
    store = Breakers.from_settings(get_settings())
    store.record(store.allow(DESTINATION, lease=10), Result.FAILURE, lease=10)
    WriteBuffer("events").extend([{"user_id": 1, "event_type": "view"}] * 10)
    collector = JobsCollector()
    collector.collect()  # warm up: scripts loaded, connections made
    counter = CommandCounter(monkeypatch)
    few = counter.during(collector.collect)
    jobs.enqueue_many(record, [{"name": f"b{n}"} for n in range(9_990)])
    assert redis_client.llen("default") == 10_000
    many = counter.during(collector.collect)
    collector.close()

    assert few
    assert sorted(many) == sorted(few)
    forbidden = {"KEYS", "SCAN", "HSCAN", "SSCAN", "ZSCAN", "LRANGE"}
    assert not forbidden & set(many), many


def test_a_source_that_fails_is_reported_down_and_the_scrape_still_succeeds(
    clean: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given PostgreSQL unreachable (then Redis unreachable),
    When the exporter is scraped,
    Then the sources on that backend report ``jobs_exporter_source_up`` 0 and leave their
    metrics out, while the other backend's sources report as usual.
    """
    _, redis_client = clean
    jobs.enqueue(record, name="one")
    monkeypatch.setenv("JOBS_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:9/none")
    get_settings.cache_clear()
    collector = JobsCollector()
    try:
        db_down = samples_of(collector.collect())
    finally:
        collector.close()
        monkeypatch.undo()
        get_settings.cache_clear()
    for source in ("dead_letters", "views", "partitions"):
        assert db_down[key("jobs_exporter_source_up", source=source)] == 0
    assert db_down[key("jobs_exporter_source_up", source="queues")] == 1
    assert db_down[key("jobs_queue_depth", queue="default")] == 1
    assert not any(name == "jobs_view_staleness_seconds" for name, _ in db_down)

    monkeypatch.setenv("JOBS_REDIS_URL", "redis://127.0.0.1:9/0")
    get_settings.cache_clear()
    resources.engine().dispose()
    resources.dispose()
    collector = JobsCollector()
    try:
        started = time.monotonic()
        redis_down = samples_of(collector.collect())
        elapsed = time.monotonic() - started
    finally:
        collector.close()
        monkeypatch.undo()
        get_settings.cache_clear()
        resources.engine().dispose()  # close its connections, then forget it
        resources.dispose()
    for source in ("queues", "delayed", "consumers", "counters", "breakers", "beat", "buffers"):
        assert redis_down[key("jobs_exporter_source_up", source=source)] == 0
    assert redis_down[key("jobs_exporter_source_up", source="dead_letters")] == 1
    assert not any(name == "jobs_queue_depth" for name, _ in redis_down)
    assert elapsed < 5
    assert redis_client.ping()


def test_jobs_dead_lettered_by_a_real_worker_are_counted_by_task(clean: Any, workers: Any) -> None:
    """Given a worker, a job that fails permanently and an undecodable message,
    When both are dead-lettered (the policy and the consumer's poison path),
    Then ``jobs_dead_lettered_total`` counts one for the task and one for the unknown task
    ``?``, and ``jobs_dead_letters`` shows both rows.
    """
    db, redis_client = clean
    workers(queues="maintenance", concurrency=1)
    jobs.enqueue(record, name="doomed", permanent=True, queue="maintenance")
    redis_client.lpush("maintenance", b"\x00\xff not an envelope")
    wait_for(
        lambda: db.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 2,
        30,
        "two dead letters",
    )
    wait_for(
        lambda: len(counters.read(redis_client).get(counters.DEAD_LETTERED, {})) == 2,
        10,
        "both counted",
    )
    collector = JobsCollector()
    found = samples_of(collector.collect())
    collector.close()
    assert found[key("jobs_dead_lettered_total", task="tests.record")] == 1
    assert found[key("jobs_dead_lettered_total", task="?")] == 1
    assert found[key("jobs_dead_letter_rows")] == 2
    by_task: dict[str, float] = {}
    for (name, labels), value in found.items():
        if name == "jobs_dead_letters":
            task = dict(labels)["task"]
            by_task[task] = by_task.get(task, 0) + value
    assert by_task == {"tests.record": 1, "?": 1}
    assert found[key("jobs_workers_alive")] >= 1


def test_jobctl_exporter_serves_metrics_on_loopback_and_stops_on_sigterm(
    clean: Any, worker_env: dict[str, str]
) -> None:
    """Given ``jobctl exporter --port P`` started as a subprocess,
    When /metrics is fetched and the process gets SIGTERM,
    Then it answered with the jobs metrics (queue depth included) on 127.0.0.1, and it exits 0.
    """
    jobs.enqueue(record, name="waiting")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", "from ops.cli import main; main()", "exporter", "--port", str(port)],
        env=worker_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def scrape() -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as got:
                    return str(got.read().decode())
            except OSError:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                return None

        text = wait_for(scrape, 30, "the exporter to answer")
        found = samples_of(text_string_to_metric_families(text))
        assert found[key("jobs_queue_depth", queue="default")] == 1
        assert found[key("jobs_exporter_source_up", source="queues")] == 1
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, output
    assert f"http://127.0.0.1:{port}/metrics" in output
