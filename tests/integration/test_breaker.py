"""Circuit breakers per destination, shared in Redis: the script's rules, real workers, jobctl.

The first tests drive the Lua script directly with an explicit clock (milliseconds, no
sleeping); the worker tests run ``tests.breaker.deliver`` against real HTTP receivers on
127.0.0.1 (switchable between 503 and 200, recording every request) with the open time cut to
3 s.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest
from typer.testing import CliRunner

import jobs
from ops.cli import app
from tests.integration.test_execution import dead, effects, runs
from tests.support.worker import wait_for
from tests.tasks_flow_breaker import deliver
from workers import keys
from workers.breakers import Breakers, BreakerState, Result, State, Thresholds
from workers.settings import get_settings

#: Every test runs with one message per job and with envelopes (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("delivery")

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

OPEN_SECONDS = 3.0
ENV = {"JOBS_BREAKER_OPEN_SECONDS": str(OPEN_SECONDS)}  # test task modules: see conftest
#: A call allowed just before the breaker opened may still reach the receiver this late.
GRACE = 0.5
T0 = 1_700_000_000.0  # the explicit clock of the script-level tests (unix seconds)
LEASE = 10.0


# --- receivers ----------------------------------------------------------------------------


@dataclass
class Receiver:
    """A local HTTP receiver answering ``status`` and recording (time, status, body) per POST."""

    status: int = 503
    requests: list[tuple[float, int, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        """Serve on a free port of 127.0.0.1 from a daemon thread."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    status = receiver.status
                    receiver.requests.append((time.time(), status, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()

    @property
    def netloc(self) -> str:
        """``host:port``: the breaker name of this receiver."""
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"{host!s}:{port}"

    @property
    def url(self) -> str:
        """The URL deliveries POST to."""
        return f"http://{self.netloc}/hook"

    def times(self, start: float = 0.0, end: float = float("inf")) -> list[float]:
        """Arrival times of requests in [start, end)."""
        with self.lock:
            return [at for at, _, _ in self.requests if start <= at < end]


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    """Factory of started receivers; each is stopped after the test."""
    started: list[Receiver] = []

    def start(status: int = 503) -> Receiver:
        started.append(Receiver(status=status).start())
        return started[-1]

    yield start
    for one in started:
        one.stop()


def store() -> Breakers:
    """The store as the test process sees it (thresholds do not matter for reading)."""
    return Breakers.from_settings(get_settings())


def state_of(name: str) -> BreakerState | None:
    return store().state(name)


def opened(name: str) -> BreakerState | None:
    """The breaker's state once it is open (wait_for condition)."""
    current = state_of(name)
    return current if current is not None and current.state is State.OPEN else None


def enqueue(target: Receiver, *names: str) -> None:
    for name in names:
        jobs.enqueue(deliver, url=target.url, name=name)


def attempts(db: Any, name: str) -> list[int]:
    return [attempt for attempt, _ in runs(db, name)]


# --- the script's rules, with an explicit clock ----------------------------------------------


def fail(breakers: Breakers, name: str, times: int, *, at: float = T0) -> State:
    state = State.CLOSED
    for _ in range(times):
        permit = breakers.allow(name, lease=LEASE, now=at)
        state = breakers.record(permit, Result.FAILURE, lease=LEASE, now=at)
    return state


def test_five_failures_within_the_window_open_the_breaker_and_four_do_not(clean: Any) -> None:
    """Given the default thresholds, when four calls fail the breaker stays closed, and the
    fifth failure within the window opens it: calls are then refused with the wait until
    half-open (30 s).
    """
    breakers = Breakers(Thresholds())
    assert fail(breakers, "a", 4) is State.CLOSED
    assert breakers.allow("a", lease=LEASE, now=T0 + 1).allowed
    assert fail(breakers, "a", 1, at=T0 + 2) is State.OPEN
    permit = breakers.allow("a", lease=LEASE, now=T0 + 12)
    assert (permit.allowed, permit.state, permit.wait) == (False, State.OPEN, 20.0)
    shown = breakers.state("a", now=T0 + 12)
    assert shown is not None
    assert (shown.state, shown.failures, shown.calls) == (State.OPEN, 5, 5)
    assert shown.opened_at is not None
    assert shown.half_open_at is not None
    assert (shown.half_open_at - shown.opened_at).total_seconds() == 30


def test_failures_older_than_the_window_no_longer_count(clean: Any) -> None:
    """Given four failures, when the fifth comes more than a window (60 s) later, then the
    breaker stays closed and only the recent failure is counted.
    """
    breakers = Breakers(Thresholds())
    fail(breakers, "a", 4)
    assert fail(breakers, "a", 1, at=T0 + 61) is State.CLOSED
    shown = breakers.state("a", now=T0 + 61)
    assert shown is not None
    assert (shown.failures, shown.calls) == (1, 1)


def test_a_high_failure_ratio_over_enough_calls_opens_the_breaker(clean: Any) -> None:
    """Given a failure count threshold out of reach (100), when 5 successes and 4 failures
    complete (9 calls < min_calls 10) the breaker stays closed; the 5th failure makes 10 calls
    at a 50 % failure ratio and opens it. 4 failures in 10 calls (40 %) would not.
    """
    breakers = Breakers(Thresholds(failures=100))
    for _ in range(5):
        breakers.record(breakers.allow("a", lease=LEASE, now=T0), Result.SUCCESS, now=T0)
    assert fail(breakers, "a", 4) is State.CLOSED
    assert fail(breakers, "a", 1) is State.OPEN

    for _ in range(6):
        breakers.record(breakers.allow("b", lease=LEASE, now=T0), Result.SUCCESS, now=T0)
    assert fail(breakers, "b", 4) is State.CLOSED


def test_after_the_open_time_exactly_the_probes_get_through(clean: Any) -> None:
    """Given an open breaker, when the open time has passed, then 3 calls get through as probes
    and the 4th is refused as half-open (a short wait, not the open time).
    """
    breakers = Breakers(Thresholds())
    fail(breakers, "a", 5)
    permits = [breakers.allow("a", lease=LEASE, now=T0 + 30 + i) for i in range(4)]
    assert [(p.allowed, p.probe) for p in permits] == [(True, True)] * 3 + [(False, False)]
    assert permits[3].state is State.HALF_OPEN
    assert 1.0 <= permits[3].park_for(breakers.thresholds) <= 2.0
    shown = breakers.state("a", now=T0 + 33)
    assert shown is not None
    assert (shown.state, shown.probes_in_flight) == (State.HALF_OPEN, 3)


def test_a_probe_success_closes_the_breaker_and_resets_its_counts(clean: Any) -> None:
    """Given a half-open breaker, when a probe succeeds, then it is closed, nothing is counted
    any more, and calls go through without being probes.
    """
    breakers = Breakers(Thresholds())
    fail(breakers, "a", 5)
    probe = breakers.allow("a", lease=LEASE, now=T0 + 30)
    assert breakers.record(probe, Result.SUCCESS, now=T0 + 31) is State.CLOSED
    shown = breakers.state("a", now=T0 + 31)
    assert shown is not None
    assert (shown.state, shown.failures, shown.calls, shown.opened_at) == (
        State.CLOSED,
        0,
        0,
        None,
    )
    after = breakers.allow("a", lease=LEASE, now=T0 + 31)
    assert (after.allowed, after.probe) == (True, False)
    assert fail(breakers, "a", 4, at=T0 + 32) is State.CLOSED


def test_a_probe_failure_opens_the_breaker_again_with_a_fresh_open_time(clean: Any) -> None:
    """Given a half-open breaker, when a probe fails, then it is open again until 30 s after
    that failure, and the other probes' later results cannot change that.
    """
    breakers = Breakers(Thresholds())
    fail(breakers, "a", 5)
    first, second = (breakers.allow("a", lease=LEASE, now=T0 + 30) for _ in range(2))
    assert breakers.record(first, Result.FAILURE, now=T0 + 35) is State.OPEN
    assert breakers.record(second, Result.SUCCESS, now=T0 + 36) is State.OPEN
    refused = breakers.allow("a", lease=LEASE, now=T0 + 40)
    assert (refused.allowed, refused.wait) == (False, 25.0)
    assert breakers.allow("a", lease=LEASE, now=T0 + 65).probe


def test_a_result_of_a_call_allowed_before_the_breaker_opened_cannot_close_it(
    clean: Any,
) -> None:
    """Given a slow call allowed while closed, when the breaker opens and turns half-open
    meanwhile, then that call's late success neither closes it nor frees a probe slot.
    """
    breakers = Breakers(Thresholds(probes=1))
    slow = breakers.allow("a", lease=LEASE, now=T0)
    fail(breakers, "a", 5)
    probe = breakers.allow("a", lease=LEASE, now=T0 + 30)
    assert probe.probe
    assert breakers.record(slow, Result.SUCCESS, now=T0 + 31) is State.HALF_OPEN
    assert not breakers.allow("a", lease=LEASE, now=T0 + 31).allowed


def test_a_probe_slot_that_never_reports_is_handed_out_again_after_its_lease(
    clean: Any,
) -> None:
    """Given every probe slot taken by workers that died, then calls are refused until the
    probe lease (10 s here) has passed, and then probes are let through again.
    """
    breakers = Breakers(Thresholds())
    fail(breakers, "a", 5)
    for _ in range(3):
        assert breakers.allow("a", lease=LEASE, now=T0 + 30).probe
    assert not breakers.allow("a", lease=LEASE, now=T0 + 39).allowed
    assert breakers.allow("a", lease=LEASE, now=T0 + 40).probe


def test_a_neutral_probe_result_gives_its_slot_back_without_deciding(clean: Any) -> None:
    """Given one probe slot, when the probe ends with a neutral result (a permanent error),
    then the breaker stays half-open and the slot goes to the next call.
    """
    breakers = Breakers(Thresholds(probes=1))
    fail(breakers, "a", 5)
    probe = breakers.allow("a", lease=LEASE, now=T0 + 30)
    assert not breakers.allow("a", lease=LEASE, now=T0 + 30).allowed
    assert breakers.record(probe, Result.NEUTRAL, now=T0 + 31) is State.HALF_OPEN
    assert breakers.allow("a", lease=LEASE, now=T0 + 31).probe


def test_breakers_are_listed_from_a_registry_and_expire_when_idle(clean: Any) -> None:
    """Given two destinations with recorded calls, then both are registered in jobs:breakers
    (listing needs no SCAN) and their state expires after window + open time + lease; a name
    whose state expired is dropped from the registry when listed. A closed breaker with no
    calls writes nothing at all.
    """
    _, redis_client = clean
    breakers = Breakers(Thresholds())
    fail(breakers, "a", 5, at=time.time())
    fail(breakers, "b", 1, at=time.time())
    assert breakers.allow("idle", lease=LEASE).allowed
    assert sorted(redis_client.smembers(keys.breakers())) == [b"a", b"b"]
    assert 0 < redis_client.pttl(keys.breaker("a")) <= (60 + 30 + LEASE) * 1000
    redis_client.delete(keys.breaker("b"))  # as if it had expired
    assert [(s.name, s.state) for s in breakers.states()] == [("a", State.OPEN)]
    assert redis_client.smembers(keys.breakers()) == {b"a"}
    assert not redis_client.exists(keys.breaker("idle"))


# --- real workers, real receivers ----------------------------------------------------------


def test_a_failing_destination_opens_gets_no_calls_parks_jobs_without_attempts_and_closes_after_a_probe(  # noqa: E501 - a sentence
    clean: Any, workers: Any, receiver: Callable[..., Receiver]
) -> None:
    """Given a receiver answering 503, when 5 deliveries fail, then its breaker opens; while it
    is open the receiver gets zero calls and new deliveries are parked in the delayed store
    without running (no attempt spent). When the receiver recovers, the first call after the
    open time is a probe, its success closes the breaker, and every parked delivery arrives,
    each run having spent exactly one attempt per call the receiver saw.
    """
    db, redis_client = clean
    down = receiver(status=503)
    workers(concurrency=2, extra_env=ENV)
    early = [f"early-{i}" for i in range(5)]
    late = [f"late-{i}" for i in range(5)]

    enqueue(down, *early)
    first = wait_for(lambda: opened(down.netloc), 20, "the breaker to open")
    assert first.failures >= 5
    assert first.opened_at is not None
    assert first.half_open_at is not None
    opened_at, half_open_at = first.opened_at.timestamp(), first.half_open_at.timestamp()
    assert len(down.times(end=opened_at + GRACE)) >= 5

    enqueue(down, *late)
    wait_for(
        lambda: redis_client.zcard(keys.delayed()) == len(early + late),
        half_open_at - time.time() - 0.3,
        "all 10 deliveries parked in the delayed store before half-open",
    )
    assert all(not runs(db, name) for name in late)
    still = state_of(down.netloc)
    assert still is not None
    assert still.state is State.OPEN
    down.status = 200

    wait_for(lambda: len(effects(db)) == len(early + late), 20, "every parked delivery")
    assert down.times(opened_at + GRACE, half_open_at) == []
    assert min(down.times(opened_at + GRACE)) >= half_open_at
    closed = state_of(down.netloc)
    assert closed is not None
    assert (closed.state, closed.failures) == (State.CLOSED, 0)
    for name in late:
        assert attempts(db, name) == [1], name
    total_runs = 0
    for name in early:
        tried = attempts(db, name)
        assert tried == list(range(1, len(tried) + 1)), (name, tried)
        total_runs += len(tried)
    assert total_runs + len(late) == len(down.times())
    assert dead(db) == []


def test_a_probe_that_fails_opens_the_breaker_again_and_only_the_probes_reach_the_receiver(
    clean: Any, workers: Any, receiver: Callable[..., Receiver]
) -> None:
    """Given an open breaker whose receiver is still down at the half-open time, then at most
    3 probe calls reach it, a probe failure opens the breaker again with a fresh open time,
    and the receiver gets no further calls during that second open period.
    """
    _, _ = clean
    down = receiver(status=503)
    workers(concurrency=2, extra_env=ENV)
    enqueue(down, *(f"job-{i}" for i in range(8)))
    first = wait_for(lambda: opened(down.netloc), 20, "the breaker to open")
    assert first.half_open_at is not None
    half_open_at = first.half_open_at.timestamp()

    def reopened() -> BreakerState | None:
        again = opened(down.netloc)
        return again if again is not None and again.opened_at != first.opened_at else None

    second = wait_for(reopened, OPEN_SECONDS + 10, "the breaker to open again")
    assert second.opened_at is not None
    assert second.half_open_at is not None
    reopened_at = second.opened_at.timestamp()
    assert reopened_at >= half_open_at
    assert 1 <= len(down.times(half_open_at, reopened_at + GRACE)) <= 3
    # Observe the rest of the second open period: silence is the behaviour under test.
    time.sleep(max(0.0, second.half_open_at.timestamp() - 0.2 - time.time()))
    assert down.times(reopened_at + GRACE, second.half_open_at.timestamp()) == []


def test_a_second_destination_is_unaffected_while_the_first_is_open(
    clean: Any, workers: Any, receiver: Callable[..., Receiver]
) -> None:
    """Given two receivers on the same worker, when the first one's breaker is open, then
    deliveries to the second arrive at once (first attempt, before the first one turns
    half-open) while the first receives nothing.
    """
    db, _ = clean
    down, up = receiver(status=503), receiver(status=200)
    workers(concurrency=2, extra_env=ENV)
    enqueue(down, *(f"down-{i}" for i in range(5)))
    first = wait_for(lambda: opened(down.netloc), 20, "the first breaker to open")
    assert first.opened_at is not None
    assert first.half_open_at is not None

    healthy = [f"up-{i}" for i in range(5)]
    enqueue(up, *healthy)
    wait_for(
        lambda: len(effects(db)) == len(healthy),
        first.half_open_at.timestamp() - time.time() - 0.2,
        "every delivery to the healthy receiver while the first breaker is open",
    )
    assert opened(down.netloc) is not None
    assert len(up.times()) == len(healthy)
    assert all(attempts(db, name) == [1] for name in healthy)
    # Observe the rest of the open period: silence is the behaviour under test.
    time.sleep(max(0.0, first.half_open_at.timestamp() - 0.2 - time.time()))
    assert down.times(first.opened_at.timestamp() + GRACE, first.half_open_at.timestamp()) == []
    other = state_of(up.netloc)
    assert other is not None
    assert (other.state, other.failures, other.calls) == (State.CLOSED, 0, len(healthy))


# --- jobctl breakers -----------------------------------------------------------------------

runner = CliRunner()


def open_breaker(name: str) -> None:
    """Open ``name``'s breaker (open time 30 s) by recording 5 failures now."""
    breakers = Breakers(Thresholds())
    for _ in range(5):
        permit = breakers.allow(name, lease=LEASE)
        breakers.record(permit, Result.FAILURE, lease=LEASE)


def test_jobctl_breakers_list_shows_each_destination_as_a_table_and_as_json(clean: Any) -> None:
    """Given one open and one closed breaker, then ``jobctl breakers list --json`` shows each
    with its state, failures/calls in the window and open times (half-open 30 s after opening),
    and the table shows the same rows.
    """
    open_breaker("hooks.example.com")
    breakers = Breakers(Thresholds())
    breakers.record(breakers.allow("api.example.org", lease=LEASE), Result.SUCCESS)

    result = runner.invoke(app, ["breakers", "list", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert [(e["name"], e["state"], e["failures"], e["calls"]) for e in listed] == [
        ("api.example.org", "closed", 0, 1),
        ("hooks.example.com", "open", 5, 5),
    ]
    assert listed[0]["opened_at"] is None
    shown = listed[1]
    gap = datetime.fromisoformat(shown["half_open_at"]) - datetime.fromisoformat(shown["opened_at"])
    assert gap.total_seconds() == 30

    table = runner.invoke(app, ["breakers", "list"])
    assert table.exit_code == 0, table.output
    assert "hooks.example.com" in table.stdout
    assert "open" in table.stdout
    assert "5 / 5" in table.stdout


def test_jobctl_breakers_reset_closes_a_breaker_at_once(
    clean: Any, workers: Any, receiver: Callable[..., Receiver]
) -> None:
    """Given a receiver whose breaker was opened for 30 s, when ``jobctl breakers reset NAME``
    runs, then it is closed at once: a delivery enqueued next arrives within seconds, not
    after the open time. Resetting a name with no breaker exits 1.
    """
    db, _ = clean
    up = receiver(status=200)
    open_breaker(up.netloc)
    workers(concurrency=2, extra_env=ENV)
    assert opened(up.netloc) is not None

    result = runner.invoke(app, ["breakers", "reset", up.netloc])
    assert result.exit_code == 0, result.output
    assert state_of(up.netloc) is None
    assert json.loads(runner.invoke(app, ["breakers", "list", "--json"]).stdout) == []

    jobs.enqueue(deliver, url=up.url, name="after-reset")
    wait_for(lambda: effects(db, "after-reset"), 5, "the delivery right after the reset")
    assert len(up.times()) == 1

    missing = runner.invoke(app, ["breakers", "reset", "nowhere.example"])
    assert missing.exit_code == 1
    assert "no breaker named 'nowhere.example'" in missing.output
