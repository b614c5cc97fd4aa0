"""Exactly one active beat: lease, fencing, state in Redis, ticks through admission.

In-process schedulers (real Redis) prove the mechanics step by step; beat processes
(``jobctl beat`` subprocesses) prove them end to end, including a SIGKILLed leader.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.tasks  # noqa: F401 - registers tests.record (in-process schedules enqueue it)
from scheduler import leader
from scheduler.leader import LeaderScheduler, last_runs, last_tick, leader_info, tick_key
from tests.conftest import TEST_TASK_MODULES
from tests.support.worker import REPO, wait_for
from workers import keys
from workers.app import app
from workers.errors import QueueFull
from workers.settings import Settings

#: Measures rates or time windows: ops/test.sh runs these alone, after the parallel phase.
pytestmark = pytest.mark.serial

#: A fast schedule: one entry every second, one every two.
PERIODS = {"tick1": 1.0, "tick2": 2.0}
#: ``tests.tasks_beat.TICKS`` (not imported: beattest.tick is registered only in the
#: subprocesses, so this process's catalogue stays the test catalogue).
TICKS = "beattest:ticks"
LEASE = 3.0
POLL = 0.25
#: Scheduling slack (s) on a busy 2-core machine: a tick this late is still on time.
SLACK = 0.9


def schedule() -> dict[str, dict[str, Any]]:
    """The fast schedule for in-process schedulers (jobs only enqueued: no worker runs them)."""
    return {
        name: {"task": "tests.record", "schedule": period, "kwargs": {"name": name}}
        for name, period in PERIODS.items()
    }


def scheduler(identity: str, entries: dict[str, dict[str, Any]] | None = None) -> LeaderScheduler:
    settings = Settings(beat_lease=LEASE, beat_standby_poll=POLL, beat_families=())
    return LeaderScheduler(app, settings=settings, entries=entries or schedule(), identity=identity)


def queued(redis_client: Any, queue: str = "default") -> list[tuple[str, str]]:
    """(entry, idempotency key) of every job waiting in ``queue``, oldest first."""
    found = []
    for raw in reversed(redis_client.lrange(queue, 0, -1)):
        message = json.loads(raw)
        _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        entry = kwargs.get("entry") or kwargs["name"]
        found.append((entry, message["headers"]["jobs"]["key"]))
    return found


def test_one_of_two_schedulers_leads_and_only_it_fires(redis_client: Any) -> None:
    """Given two schedulers on one Redis, when both tick, then the first takes the lease and
    fires each never-run entry once (tick key ``beat:<entry>:first``), the second stands by
    (sleeps its poll interval, fires nothing), and the leader, fence and last tick are visible.
    """
    first, second = scheduler("host:1:a"), scheduler("host:2:b")
    first.tick()
    assert second.tick() == POLL
    assert sorted(queued(redis_client)) == [
        ("tick1", tick_key("tick1", None)),
        ("tick2", tick_key("tick2", None)),
    ]
    info = leader_info()
    assert info is not None
    assert (info.identity, info.fence, info.pid) == ("host:1:a", 1, 1)
    assert 0 < info.expires_in <= LEASE
    assert last_tick() == pytest.approx(time.time(), abs=2)
    assert set(last_runs()) == {"tick1", "tick2"}
    assert first.tick() > 0  # nothing due yet: it sleeps until the next one
    assert len(queued(redis_client)) == 2


def test_a_deposed_leader_fires_nothing_and_the_new_one_continues_its_runs(
    redis_client: Any,
) -> None:
    """Given a leader whose lease ran out while it was paused, when a standby takes over and
    then the old leader wakes up, then the standby gets the next fencing number, the old
    leader notices at its next step and fires nothing, and the new leader continues from the
    recorded last runs (nothing fires again before its period).
    """
    old, new = scheduler("host:1:old"), scheduler("host:2:new")
    old.tick()
    redis_client.delete(keys.beat_leader())  # the lease expired during a pause
    new.tick()
    assert len(queued(redis_client)) == 2  # the new leader found both entries already run
    assert old.tick() == POLL
    assert old.leadership.held is None
    info = leader_info()
    assert info is not None
    assert (info.identity, info.fence) == ("host:2:new", 2)
    assert len(queued(redis_client)) == 2


def test_a_tick_published_by_a_leader_that_died_before_recording_it_is_not_run_twice(
    redis_client: Any,
) -> None:
    """Given a leader that published a due tick and died before recording it, when the next
    leader fires the same tick, then it carries the same idempotency key and admission
    deduplicates it: one job in the queue.
    """
    first, second = scheduler("host:1:a"), scheduler("host:2:b")
    first.tick()
    past = repr(time.time() - 5)
    redis_client.hset(keys.beat_runs(), mapping={"tick1": past, "tick2": past})
    redis_client.delete("default")
    runs = first.leadership.read()
    assert runs is not None
    first._maybe_fire("tick1", first.data["tick1"], runs["tick1"], {})  # published, unrecorded
    redis_client.delete(keys.beat_leader())  # ... and died
    second.tick()
    assert sorted(queued(redis_client)) == [
        ("tick1", tick_key("tick1", past)),
        ("tick2", tick_key("tick2", past)),
    ]


def test_after_downtime_a_missed_entry_fires_once_not_in_a_burst(redis_client: Any) -> None:
    """Given an entry of 1 s whose last run was 100 s ago (beat was down), when the leader
    ticks twice, then the entry fires once and its last run is now.
    """
    beat = scheduler("host:1:a", {"tick1": schedule()["tick1"]})
    redis_client.hset(keys.beat_runs(), "tick1", repr(time.time() - 100))
    beat.tick()
    beat.tick()
    assert [entry for entry, _ in queued(redis_client)] == ["tick1"]
    assert last_runs()["tick1"] == pytest.approx(time.time(), abs=2)


def test_a_full_queue_postpones_the_entry_without_crashing_beat(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given admission refusing a tick with QueueFull (retry after 2 s), when the leader
    ticks, then it does not raise, records no run for that entry, and does not try it again
    before the retry-after; once the queue accepts, the tick fires.
    """
    beat = scheduler("host:1:a", {"tick1": schedule()["tick1"]})
    calls: list[str] = []

    def refuse(*args: Any, key: str, **kwargs: Any) -> Any:
        calls.append(key)
        raise QueueFull("default", 10, 5, 2.0)

    with monkeypatch.context() as patch:
        patch.setattr(leader.admission, "enqueue", refuse)
        assert beat.tick() > 0
        beat.tick()
    assert calls == [tick_key("tick1", None)]
    assert "tick1" not in last_runs()
    beat._not_before.clear()  # the retry-after has passed
    beat.tick()
    assert [entry for entry, _ in queued(redis_client)] == ["tick1"]


def test_a_graceful_stop_hands_the_lease_over_at_once(redis_client: Any) -> None:
    """Given a leader and a standby, when the leader closes (SIGTERM path), then the lease is
    released and the standby leads at its next step, without waiting for the lease to expire.
    """
    first, second = scheduler("host:1:a"), scheduler("host:2:b")
    first.tick()
    first.close()
    assert leader_info() is None
    second.tick()
    info = leader_info()
    assert info is not None
    assert info.identity == "host:2:b"


def test_an_entry_for_an_unknown_task_fails_beat_at_start() -> None:
    """Given an entry naming a task nobody registered, when the scheduler starts, then it
    refuses with a ConfigurationError naming the entry (not at the first tick).
    """
    from workers.errors import ConfigurationError  # noqa: PLC0415

    with pytest.raises(ConfigurationError, match="'nope'"):
        scheduler("h:1:a", {"nope": {"task": "no.such.task", "schedule": 1.0}})
    with pytest.raises(ConfigurationError, match="'bad'"):
        scheduler("h:1:a", {"bad": {"task": "tests.record", "schedule": 1.0, "kwargs": {}}})


# -- beat processes -----------------------------------------------------------------------------


class BeatProcess:
    """``jobctl beat`` in its own process group (``jobctl`` execs ``celery beat``)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        """Start it now (output to ``log_path``)."""
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from ops.cli import main; main()", "beat", "-l", "INFO"],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        """The process id (``jobctl`` execs ``celery beat`` in the same process)."""
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL its process group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM (releases the lease), then SIGKILL of whatever is left."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
        self.kill()

    def log(self) -> str:
        """The end of its output (for assertion messages)."""
        return self.log_path.read_text(errors="replace")[-4000:]


def beat_test_env(worker_env: dict[str, str]) -> dict[str, str]:
    """Environment of beats on the fast test schedule (``beattest.tick``, short lease)."""
    return {
        **worker_env,
        "JOBS_EXTRA_TASK_MODULES": json.dumps([*TEST_TASK_MODULES, "tests.tasks_beat"]),
        "JOBS_BEAT_FAMILIES": "[]",
        "JOBS_BEAT_SCHEDULE": json.dumps(
            {
                name: {"task": "beattest.tick", "every": period, "kwargs": {"entry": name}}
                for name, period in PERIODS.items()
            }
        ),
        "JOBS_BEAT_LEASE": str(LEASE),
        "JOBS_BEAT_STANDBY_POLL": str(POLL),
    }


@pytest.fixture
def beats(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """Factory of beat processes on the fast test schedule; all stopped after the test."""
    env = beat_test_env(worker_env)
    started: list[BeatProcess] = []

    def start() -> BeatProcess:
        beat = BeatProcess(env, tmp_path / f"beat-{len(started)}.log")
        started.append(beat)
        return beat

    yield start
    for beat in started:
        beat.stop()


def fire_times(keys_seen: list[str]) -> list[float]:
    """The fire times a sequence of tick keys reveals (each key names the previous fire)."""
    return sorted(float(key.rsplit(":", 1)[1]) for key in keys_seen if not key.endswith(":first"))


def check_periods(entry: str, keys_seen: list[str], period: float, *, failover_gap: float) -> None:
    """Each tick key once; consecutive fires one period apart (one longer gap: the failover)."""
    assert len(keys_seen) == len(set(keys_seen)), f"{entry}: a tick ran twice: {keys_seen}"
    times = fire_times(keys_seen)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps, f"{entry}: too few ticks: {keys_seen}"
    assert min(gaps) >= period * 0.5, f"{entry}: two fires within one period: {gaps}"
    long_gaps = [gap for gap in gaps if gap > period + SLACK]
    assert len(long_gaps) <= 1, f"{entry}: ticks missed outside the failover: {gaps}"
    assert all(gap <= failover_gap for gap in long_gaps), f"{entry}: failover too slow: {gaps}"


def run_two_beats_with_a_leader_kill(
    beats: Any, redis_client: Any, *, before: float, after: float, ticks: Any
) -> None:
    """Two beats; ``before`` s, SIGKILL the leader, ``after`` s; check takeover and periods."""
    first, second = beats(), beats()
    by_pid = {first.pid: first, second.pid: second}
    current = wait_for(leader_info, 30, "a beat leader", interval=0.1)
    assert current.pid in by_pid, (current, first.log(), second.log())
    time.sleep(before)
    killed_at = time.monotonic()
    by_pid[current.pid].kill()
    survivor = next(beat for pid, beat in by_pid.items() if pid != current.pid)

    def new_leader() -> Any:
        info = leader_info()
        return info if info is not None and info.pid == survivor.pid else None

    took_over = wait_for(new_leader, LEASE + 10, "the standby taking over", interval=0.05)
    takeover = time.monotonic() - killed_at
    assert takeover <= LEASE + POLL + SLACK, (takeover, survivor.log())
    assert took_over.fence == current.fence + 1
    time.sleep(after)
    seen = ticks()
    for entry, period in PERIODS.items():
        keys_seen = [key for name, key in seen if name == entry]
        check_periods(entry, keys_seen, period, failover_gap=period + LEASE + POLL + SLACK)
        assert len(keys_seen) >= (before + after) / period - 2, (entry, len(keys_seen))
    print(f"FIGURE beat takeover after SIGKILL: {takeover:.2f}s (lease {LEASE}s, poll {POLL}s)")


def test_two_beat_processes_fire_each_entry_once_per_period_across_a_leader_kill(
    beats: Any, redis_client: Any
) -> None:
    """Given two ``jobctl beat`` processes on a 1 s / 2 s schedule, when they run ~4 s, the
    leader is SIGKILLed, and the survivor runs ~4 s more, then the survivor leads within the
    lease (+ poll) with the next fencing number, every tick was enqueued once (unique keys),
    fires were one period apart except the one failover gap, and no period fired twice.
    """
    run_two_beats_with_a_leader_kill(
        beats, redis_client, before=4, after=4, ticks=lambda: queued(redis_client)
    )


@pytest.mark.slow
def test_two_beats_for_thirty_seconds_with_a_worker_run_each_tick_once(
    beats: Any, redis_client: Any, workers: Any
) -> None:
    """Given two beat processes and a worker for ~30 s with the leader SIGKILLed halfway, then
    the worker ran each tick once (unique keys, one record per key) and the fire times are
    one period apart, with a single failover gap within the lease.
    """
    extra = {"JOBS_EXTRA_TASK_MODULES": json.dumps([*TEST_TASK_MODULES, "tests.tasks_beat"])}
    workers(extra_env=extra)

    def ran() -> list[tuple[str, str]]:
        records = [json.loads(raw) for raw in redis_client.lrange(TICKS, 0, -1)]
        return [(record["entry"], record["key"]) for record in records]

    run_two_beats_with_a_leader_kill(beats, redis_client, before=15, after=12, ticks=ran)
    wait_for(lambda: redis_client.llen("default") == 0, 10, "the worker to drain the ticks")
