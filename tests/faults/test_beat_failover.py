"""Two beats on a throwaway Redis, the leader SIGKILLed again and again: no tick twice.

Two ``jobctl beat`` processes run a 1 s / 2 s test schedule of ``beattest.tick`` (it records
each run with its tick key) and a worker runs the ticks. Every few seconds (minutes in the slow
variant) the current leader is SIGKILLed and a fresh standby started, so two beats always
run. Each failover must complete within the lease (``JOBS_BEAT_LEASE`` + one standby poll),
and over the whole run no tick key runs twice and no entry fires twice within a period.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from ops.services import RedisProcess
from scheduler.leader import leader_info
from tests.integration.test_beat import LEASE, PERIODS, POLL, BeatProcess, beat_test_env, fire_times
from tests.support.worker import Worker, wait_for

#: ``tests.tasks_beat.TICKS``.
TICKS = "beattest:ticks"
#: Scheduling slack (s) on a busy 2-core machine: a tick this late is still on time.
SLACK = 1.0
#: Longest acceptable failover: the lease runs out, then the standby's next poll takes it.
FAILOVER_LIMIT = LEASE + POLL + SLACK


def beat_env(worker_env: dict[str, str], redis_url: str) -> dict[str, str]:
    """Environment of beats and worker: the test schedule, on the throwaway Redis."""
    return {**beat_test_env(worker_env), "JOBS_REDIS_URL": redis_url}


def standing_by(beat: BeatProcess) -> bool:
    """Whether the beat has loaded its schedule (from then on it polls for the lease)."""
    return b"beat_schedule_loaded" in beat.log_path.read_bytes()


def ticks_run(client: redis.Redis) -> list[tuple[str, str]]:
    """(entry, tick key) of every tick the worker ran, in order."""
    records = [json.loads(raw) for raw in client.lrange(TICKS, 0, -1)]
    return [(record["entry"], record["key"]) for record in records]


def check_entry(entry: str, keys_seen: list[str], period: float, kills: int) -> list[float]:
    """No key twice, no two fires within half a period, at most one long gap per kill, each
    no longer than a failover; returns the gaps between consecutive fires.
    """
    duplicates = [key for key, count in Counter(keys_seen).items() if count > 1]
    assert duplicates == [], f"{entry}: ticks ran twice: {duplicates}"
    times = fire_times(keys_seen)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps, f"{entry}: too few ticks: {keys_seen}"
    assert min(gaps) >= period * 0.5, f"{entry}: two fires within one period: {min(gaps)}"
    long_gaps = [gap for gap in gaps if gap > period + SLACK]
    assert len(long_gaps) <= kills, f"{entry}: ticks missed outside the failovers: {long_gaps}"
    assert all(gap <= period + FAILOVER_LIMIT for gap in long_gaps), long_gaps
    return gaps


def run_failovers(
    worker_env: dict[str, str],
    tmp_path: Path,
    throwaway_redis: RedisProcess,
    *,
    duration: float,
    kills: int,
) -> None:
    """Two beats for ``duration`` s; SIGKILL the leader ``kills`` times, evenly spread."""
    env = beat_env(worker_env, throwaway_redis.url)
    client = redis.Redis.from_url(throwaway_redis.url)
    beats: list[BeatProcess] = []

    def start_beat() -> BeatProcess:
        beat = BeatProcess(env, tmp_path / f"beat-{len(beats)}.log")
        beats.append(beat)
        return beat

    takeovers: list[float] = []
    worker = Worker(env, tmp_path, concurrency=1, name="ticks")
    try:
        running = {beat.pid: beat for beat in (start_beat(), start_beat())}
        worker.start()  # while the beats start
        wait_for(lambda: leader_info(client), 30, "a beat leader", interval=0.1)
        wait_for(lambda: all(map(standing_by, running.values())), 30, "both beats", interval=0.1)
        started = time.monotonic()
        for number in range(1, kills + 1):
            time.sleep(max(0.0, started + number * duration / (kills + 1) - time.monotonic()))
            current = leader_info(client)
            assert current is not None
            assert current.pid in running, (current, [b.log() for b in running.values()])
            killed_at = time.monotonic()
            running.pop(current.pid).kill()
            [survivor] = running.values()

            def new_leader(survivor_pid: int = survivor.pid) -> Any:
                info = leader_info(client)
                return info if info is not None and info.pid == survivor_pid else None

            took_over = wait_for(new_leader, LEASE + 15, "the standby taking over", interval=0.05)
            takeovers.append(time.monotonic() - killed_at)
            assert took_over.fence == current.fence + 1
            replacement = start_beat()
            running[replacement.pid] = replacement
            # Two beats again only once the new one polls (its start-up is not a failover).
            wait_for(lambda b=replacement: standing_by(b), 30, "the new standby", interval=0.1)
        time.sleep(max(0.0, started + duration - time.monotonic()))
        for beat in beats:
            beat.stop()
        wait_for(lambda: client.llen("default") == 0, 30, "the worker to run every tick")
        time.sleep(0.5)  # the last tick's record
        seen = ticks_run(client)
        assert worker.alive(), worker.log()
    finally:
        for beat in beats:
            beat.stop()
        worker.stop()
        client.close()
    assert max(takeovers) <= FAILOVER_LIMIT, takeovers
    counts = {}
    for entry, period in PERIODS.items():
        keys_seen = [key for name, key in seen if name == entry]
        check_entry(entry, keys_seen, period, kills)
        lost = kills * FAILOVER_LIMIT / period
        assert len(keys_seen) >= duration / period - lost - 2, (entry, len(keys_seen))
        counts[entry] = len(keys_seen)
    print(
        f"FIGURE beat_failover: 2 beats for {duration:.0f}s, leader SIGKILLed {kills}x: "
        f"takeover max {max(takeovers):.2f}s (mean {sum(takeovers) / len(takeovers):.2f}s; "
        f"lease {LEASE:.0f}s + poll {POLL}s); {sum(counts.values())} ticks "
        f"({', '.join(f'{e} {n}' for e, n in counts.items())}), 0 run twice"
    )


# CI runs tests/integration/test_beat.py's leader kill instead (the same guarantee, one kill).
@pytest.mark.slow
def test_two_beats_with_the_leader_killed_twice_in_14_seconds_fire_no_tick_twice(
    worker_env: dict[str, str], tmp_path: Path, throwaway_redis: RedisProcess
) -> None:
    """Given two beat processes and a worker on a throwaway Redis, when the leader is
    SIGKILLed twice in 14 s (a fresh standby started after each kill), then each standby
    takes over within lease + poll, with the next fencing number, and no tick key ran twice.
    """
    run_failovers(worker_env, tmp_path, throwaway_redis, duration=14, kills=2)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_beats_for_10_minutes_with_the_leader_killed_4_times_fire_no_tick_twice(
    worker_env: dict[str, str], tmp_path: Path, throwaway_redis: RedisProcess
) -> None:
    """As the 14 s variant, for 10 minutes with the leader SIGKILLed 4 times."""
    run_failovers(worker_env, tmp_path, throwaway_redis, duration=600, kills=4)
