"""Cluster-wide rate limits: the limiter scripts, real workers, a real HTTP receiver, the CLI."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from typer.testing import CliRunner

import jobs
from ops.cli import app as jobctl
from tests import tasks, tasks_flow_ratelimit
from tests.support.worker import wait_for
from workers import keys, ratelimits, resources
from workers.errors import Defer
from workers.job import Job
from workers.policies import Execution
from workers.policies.ratelimit import RateLimit
from workers.settings import get_settings

#: Measures rates or time windows: ops/test.sh runs these alone, after the parallel phase.
pytestmark = pytest.mark.serial

#: The tests that take jobs through the limiter run with and without envelopes
#: (tests/conftest.py); the others exercise the limiter and the CLI directly.
both_deliveries = pytest.mark.usefixtures("delivery")

FLOW_ENV: dict[str, str] = {}  # the test task modules are loaded by every worker (conftest)
RECOVERY = 0.05
DECREASE = 0.5


# -- a receiver on 127.0.0.1 that timestamps every request --------------------------------------


@dataclass
class Arrival:
    """One request as the receiver saw it."""

    at: float
    path: str
    attempt: int
    status: int


@dataclass
class Receiver:
    """Records (time, path, attempt) of every POST; answers 429 to chosen arrivals.

    Paths are ``/<key>/<n>``; arrivals are counted per ``/<key>``.
    """

    server: ThreadingHTTPServer
    arrivals: list[Arrival] = field(default_factory=list)
    #: "/<key>" -> {arrival number (1-based) on that key: Retry-After seconds}
    throttle: dict[str, dict[int, int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        """The receiver's URL for ``path``."""
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def on(self, group: str) -> list[Arrival]:
        """Arrivals on ``/<key>`` so far, in order."""
        with self.lock:
            return [a for a in self.arrivals if a.path.startswith(f"{group}/")]

    def record(self, path: str, attempt: int) -> tuple[int, dict[str, str]]:
        """Timestamp one request; returns the status and headers to answer with."""
        group = "/" + path.split("/")[1]
        with self.lock:
            number = sum(1 for a in self.arrivals if a.path.startswith(f"{group}/")) + 1
            retry_after = self.throttle.get(group, {}).get(number)
            status = 429 if retry_after is not None else 200
            self.arrivals.append(Arrival(time.time(), path, attempt, status))
        return status, ({"Retry-After": str(retry_after)} if retry_after is not None else {})


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    holder: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            status, headers = holder[0].record(self.path, int(self.headers["X-Attempt"]))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    holder.append(Receiver(server))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield holder[0]
    server.shutdown()
    server.server_close()
    thread.join(5)


def rate_in(arrivals: list[Arrival], start: float, seconds: float) -> float:
    return sum(1 for a in arrivals if start <= a.at < start + seconds) / seconds


def start_workers(workers: Any, count: int, concurrency: int) -> list[Any]:
    started = [
        workers(concurrency=concurrency, name=f"rl{i}", extra_env=FLOW_ENV, wait=False)
        for i in range(count)
    ]
    for worker in started:
        worker.wait_ready()
    return started


# -- the limiter scripts, directly (fast) -------------------------------------------------------


def test_the_limiter_admits_a_burst_then_reserves_exact_slots_one_interval_apart(
    clean: Any,
) -> None:
    """Given 10/s with burst 2, when five jobs ask at once, then two run now and the others are
    told to wait 100, 200 and 300 ms (their reserved slots); a parked job asking again early
    keeps its slot, and one coming back at its slot runs.
    """
    scripts = resources.scripts()
    rate = ratelimits.parse_rate("10/s", burst=2)

    def ask(job_id: str) -> float:
        return ratelimits.acquire(scripts, "t.x", declared=rate, job_id=job_id, recovery=RECOVERY)

    waits = [ask(f"j{i}") for i in range(5)]
    assert waits[:2] == [0.0, 0.0]
    for wait, expected in zip(waits[2:], (0.1, 0.2, 0.3), strict=True):
        assert expected - 0.02 <= wait <= expected + 0.001
    again = ask("j4")
    assert 0.2 <= again <= waits[4]  # the same reservation, not a new one further away
    time.sleep(waits[2])  # the slot of j2 (measuring a time window)
    assert ask("j2") == 0.0


def test_a_run_time_override_replaces_the_declared_rate_and_a_task_override_covers_its_keys(
    clean: Any,
) -> None:
    """Given a task declaring 1/s, when an override of 1000/s is set for the task, then its
    per-key limit admits 20 jobs at once-ish (no wait beyond a few ms), and after a reset the
    declared 1/s applies again.
    """
    _, client = clean
    scripts = resources.scripts()
    declared = ratelimits.parse_rate("1/s")

    def ask(job_id: str) -> float:
        return ratelimits.acquire(
            scripts, "t.y:host", declared=declared, job_id=job_id, recovery=RECOVERY
        )

    assert ask("a") == 0.0
    assert ask("b") > 0.9
    ratelimits.set_override(client, "t.y", ratelimits.parse_rate("1000/s", burst=20))
    assert [ask(f"o{i}") for i in range(20)] == [0.0] * 20
    ratelimits.reset(client, "t.y")
    ratelimits.reset(client, "t.y:host")
    assert ask("c") == 0.0
    assert ask("d") > 0.9


def test_a_throttle_halves_the_rate_blocks_until_retry_after_and_recovers_additively(
    clean: Any,
) -> None:
    """Given 10/s, when the downstream says 429 with Retry-After 1, then nothing is admitted for
    1 s, the first slot opens at the end of the block, the factor is 0.5 and the listing shows
    the block; the factor then regains 5 % per quiet second.
    """
    _, client = clean
    scripts = resources.scripts()
    rate = ratelimits.parse_rate("10/s")
    assert ratelimits.acquire(scripts, "t.z", declared=rate, job_id="a", recovery=RECOVERY) == 0
    factor, until = ratelimits.throttle(
        scripts, "t.z", retry_after=1, decrease=DECREASE, recovery=RECOVERY
    )
    assert factor == 0.5
    assert 0.95 <= until - time.time() <= 1.05
    first = ratelimits.acquire(scripts, "t.z", declared=rate, job_id="b", recovery=RECOVERY)
    second = ratelimits.acquire(scripts, "t.z", declared=rate, job_id="c", recovery=RECOVERY)
    assert 0.95 <= first <= 1.01
    assert 0.18 <= second - first <= 0.21  # 10/s x 0.5 = one slot per 200 ms
    (info,) = ratelimits.list_limits(client, {"t.z": rate}, recovery=RECOVERY)
    assert info.blocked_until is not None
    assert info.factor == pytest.approx(0.5, abs=0.01)
    assert info.parked == 2
    later = ratelimits.list_limits(client, {"t.z": rate}, recovery=RECOVERY, now=until + 4)
    assert later[0].factor == pytest.approx(0.7, abs=0.01)
    assert later[0].effective_per_second == pytest.approx(7.0, abs=0.1)


def test_a_task_without_a_rate_costs_no_redis_call_per_job_until_an_override_names_it(
    clean: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a task declaring no rate, when 200 of its jobs pass the policy, then Redis is asked
    once (the cached view of overrides) and the limiter never; once an override names the task
    (and the ≤ 1 s view is refreshed), its jobs are limited: the second one is deferred.
    """
    _, client = clean  # the flushed test database
    calls: list[str] = []
    real_client, real_scripts = resources.redis_client, resources.scripts

    def counted_client() -> Any:
        calls.append("client")
        return real_client()

    def counted_scripts() -> Any:
        calls.append("script")
        return real_scripts()

    monkeypatch.setattr(resources, "redis_client", counted_client)
    monkeypatch.setattr(resources, "scripts", counted_scripts)
    policy = RateLimit()
    execution = Execution(app=None, settings=get_settings(), options={}, time_limit=10)  # type: ignore[arg-type]

    def job(n: int) -> Job:
        return Job(id=f"j{n}", task="t.free", key=f"k{n}", queue="default", args=(), kwargs={})

    for n in range(200):
        policy.before(job(n), execution)
    assert calls == ["client"]

    ratelimits.set_override(client, "t.free", ratelimits.parse_rate("1/s"))
    policy.overrides.forget()  # as if the cached view were a second old
    policy.before(job(1000), execution)
    with pytest.raises(Defer) as deferred:
        policy.before(job(1001), execution)
    assert deferred.value.reason == "rate_limited"
    assert 0.9 <= deferred.value.seconds <= 1.0
    assert calls.count("script") == 2


# -- real workers -------------------------------------------------------------------------------


@both_deliveries
def test_three_workers_hold_a_global_limit_per_key_and_a_second_key_keeps_its_own(
    clean: Any, workers: Any, receiver: Receiver
) -> None:
    """Given 3 worker processes (2 children each), key "a" limited to 20/s (declared) and key
    "b" to 10/s (a run-time override), when 300 jobs for "a" and 150 for "b" are enqueued at
    once, then over 10 s the receiver sees 15-22 requests/s on "a" and 7.5-11/s on "b"; and
    every request was the job's first attempt (parking spends no attempt).
    """
    _, client = clean
    ratelimits.set_override(client, "flow.deliver:b", ratelimits.parse_rate("10/s"))
    start_workers(workers, count=3, concurrency=2)
    deliver = tasks_flow_ratelimit.deliver
    calls = [{"url": receiver.url(f"/a/{i}"), "host": "a"} for i in range(300)]
    calls += [{"url": receiver.url(f"/b/{i}"), "host": "b"} for i in range(150)]
    jobs.enqueue_many(deliver, calls)

    def on(host: str) -> list[Arrival]:
        return receiver.on(f"/{host}")

    wait_for(lambda: on("a") and on("b"), 20, "first requests")
    start_a, start_b = on("a")[0].at, on("b")[0].at
    time.sleep(max(0.0, max(start_a, start_b) + 10.2 - time.time()))  # the measured windows
    rate_a, rate_b = rate_in(on("a"), start_a, 10), rate_in(on("b"), start_b, 10)
    assert 15 <= rate_a <= 22, f"key a: {rate_a}/s"
    assert 7.5 <= rate_b <= 11, f"key b: {rate_b}/s"
    print(f"FIGURE 3 workers: key a {rate_a}/s (limit 20/s), key b {rate_b}/s (limit 10/s)")
    with receiver.lock:
        attempts = {a.attempt for a in receiver.arrivals}
    assert attempts == {1}
    assert len(on("a")) < 300, "the limit must still hold jobs back (they are parked)"
    assert client.zcard(keys.delayed()) > 0


@both_deliveries
def test_throttled_jobs_do_not_starve_an_unthrottled_job_on_the_same_worker(
    clean: Any, workers: Any
) -> None:
    """Given one worker (2 children) and 500 jobs of a task limited to 2/s, when an unthrottled
    job is enqueued after them, then it finishes within 6 s (the 500 at 2/s would take 250 s)
    while the throttled jobs wait parked in the delayed store (they hold no worker slot).
    """
    db, client = clean
    start_workers(workers, count=1, concurrency=2)
    jobs.enqueue_many(tasks_flow_ratelimit.throttled_count, [{"n": i} for i in range(500)])
    enqueued = time.monotonic()
    jobs.enqueue(tasks.record, name="prompt")
    wait_for(
        lambda: db.execute("SELECT 1 FROM test_effects WHERE name = 'prompt'").fetchone(),
        6,  # each of the 500 is parked (~5 ms of worker time) before the queue reaches it
        "the unthrottled job to finish",
    )
    elapsed = time.monotonic() - enqueued
    ran = int(client.get(tasks_flow_ratelimit.THROTTLED_COUNTER) or 0)
    print(f"FIGURE starvation: unthrottled job done {elapsed:.2f}s after enqueue")
    assert ran <= 2 * elapsed + 2, f"{ran} throttled jobs ran in {elapsed:.1f}s at 2/s"
    # Parked one by one (in an envelope, by the envelope's run, job after job): they wait in
    # the delayed store, holding no worker slot.
    wait_for(lambda: client.zcard(keys.delayed()) >= 490, 10, "the throttled jobs parked")


@both_deliveries
def test_a_429_with_retry_after_blocks_its_key_for_that_long_and_slows_it_afterwards(
    clean: Any, workers: Any, receiver: Receiver
) -> None:
    """Given key "c" limited to 20/s and a receiver answering its 10th request with 429 and
    Retry-After: 2, when 80 jobs for "c" run, then the receiver gets nothing on "c" for 2 s
    after the 429, and in the 2 s after the block far fewer requests than 20/s (the limit was
    halved and recovers gradually); the throttled job itself is retried (attempt 2).

    One worker child, so no request is already in flight when the 429 arrives.
    """
    _, client = clean
    receiver.throttle["/c"] = {10: 2}
    start_workers(workers, count=1, concurrency=1)
    calls = [{"url": receiver.url(f"/c/{i}"), "host": "c"} for i in range(80)]
    jobs.enqueue_many(tasks_flow_ratelimit.deliver, calls)
    wait_for(lambda: len(receiver.on("/c")) >= 10, 20, "the 429")

    def halved() -> bool:
        # The receiver logs the 429 before the worker has read it and throttled the limit.
        limits = ratelimits.list_limits(client, {}, recovery=RECOVERY)
        return any(i.name == "flow.deliver:c" and i.factor < 0.6 for i in limits)

    wait_for(halved, 5, "the 429 to halve the limit of key c")
    throttled_at = receiver.on("/c")[9].at
    assert receiver.on("/c")[9].status == 429
    time.sleep(max(0.0, throttled_at + 4.1 - time.time()))  # the measured window
    after = [a for a in receiver.on("/c") if a.at > throttled_at]
    assert after, "requests resume after the block"
    assert after[0].at >= throttled_at + 2.0, f"sent {after[0].at - throttled_at:.3f}s after 429"
    resumed = rate_in(after, throttled_at + 2.0, 2.0)
    assert 4 <= resumed <= 15, f"{resumed}/s in the 2 s after the block (20/s unthrottled)"
    print(f"FIGURE 429: next request {after[0].at - throttled_at:.3f}s later; {resumed}/s after")
    # The 429'd job itself spent an attempt (Throttled is a retry) and queues behind the
    # reservations made meanwhile, so it arrives last, as attempt 2.
    wait_for(lambda: 2 in {a.attempt for a in receiver.on("/c")}, 20, "the retried job")


def spread(arrivals: list[Arrival]) -> float:
    return arrivals[-1].at - arrivals[0].at


# It times arrivals against a changed rate; parked jobs of an envelope add the promoter's lag.
@pytest.mark.parametrize("delivery", ["messages"], indirect=True)
def test_jobctl_limits_set_changes_the_rate_of_running_workers_and_reset_restores_it(
    clean: Any, workers: Any, receiver: Receiver, delivery: str
) -> None:
    """Given running workers and a task declaring 4/s, when `jobctl limits set flow.tick 40/s`
    runs, then the next 41 jobs arrive within 2.5 s (at 4/s they need 10 s) without any
    restart; `limits list --json` shows declared, override and effective rate; after
    `limits reset` the declared 4/s applies again; a bad rate is refused naming RATE.
    """
    runner = CliRunner()
    start_workers(workers, count=2, concurrency=2)
    tick = tasks_flow_ratelimit.tick

    def batch(group: str, count: int) -> list[Arrival]:
        jobs.enqueue_many(
            tick, [{"url": receiver.url(f"/{group}/{i}"), "n": i} for i in range(count)]
        )
        return wait_for(
            lambda: (got := receiver.on(f"/{group}")) and len(got) >= count and got,
            30,
            f"{count} requests on /{group}",
        )

    assert spread(batch("declared", 9)) >= 1.75  # 8 intervals of 250 ms

    result = runner.invoke(jobctl, ["limits", "set", "flow.tick", "40/s"])
    assert result.exit_code == 0, result.output
    fast = spread(batch("override", 41))
    assert fast <= 2.5, f"41 jobs took {fast:.2f}s after the override"

    listed = runner.invoke(jobctl, ["limits", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    (row,) = [r for r in json.loads(listed.output) if r["name"] == "flow.tick"]
    assert row["declared"] == "4/s"
    assert row["override"] == "40/s"
    assert row["effective_per_second"] == 40.0

    reset = runner.invoke(jobctl, ["limits", "reset", "flow.tick"])
    assert reset.exit_code == 0, reset.output
    assert spread(batch("restored", 6)) >= 1.15  # 5 intervals of 250 ms again

    bad = runner.invoke(jobctl, ["limits", "set", "flow.tick", "fast"])
    assert bad.exit_code == 2
    assert "RATE" in bad.output
    assert "20/s" in bad.output  # the error says what a rate looks like
