"""Many workers reconnecting after a Redis restart spread their attempts (no thundering herd).

kombu retries a lost broker connection after 2, 4, 6, ... s — the same schedule in every
worker, so workers that lost Redis together would come back together. ``JobsConsumer``
adds ``uniform(0, interval)`` (capped at 10 s) before each retry (``workers/consumer.py``).

With an outage of ``OUTAGE`` s every worker's second attempt (2 + U(0, 2) s after the loss)
still fails, and its third lands at 6 + U(0, 2) + U(0, 4) s: spread over ~6 s, i.e. ~12
buckets of 500 ms. A simulation of that schedule gives the limits below (chance of a false
alarm ≈ 1e-3 for 6 workers, < 1e-4 for 20); without jitter every worker reconnects in the
same bucket (100 %).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
import redis

from ops.services import RedisProcess
from tests.support.worker import Worker, wait_for

#: Measures rates or time windows: ops/test.sh runs these alone, after the parallel phase.
pytestmark = pytest.mark.serial

#: Seconds Redis stays down (killed, then restarted on the same port).
OUTAGE = 4.5
#: Histogram bucket (seconds).
BUCKET = 0.5
#: How often the restarted server's connection counter is sampled (seconds).
SAMPLE_EVERY = 0.1


def log_events(worker: Worker) -> list[tuple[float, str]]:
    """(unix time, event) of every JSON log line of the worker."""
    found = []
    for line in worker.log_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "timestamp" in entry:
            moment = datetime.fromisoformat(entry["timestamp"]).timestamp()
            found.append((moment, str(entry.get("event", ""))))
    return found


def reconnected_at(worker: Worker, since: float) -> float | None:
    """When the worker's consumer connected to the broker again after ``since``."""
    times = [t for t, event in log_events(worker) if t > since and event.startswith("Connected to")]
    return min(times) if times else None


def failed_attempts(worker: Worker, since: float) -> list[float]:
    """When the worker's consumer failed to connect after ``since`` (one log line each)."""
    return [t for t, event in log_events(worker) if t > since and "Cannot connect to" in event]


def histogram(times: list[float], origin: float, buckets: int) -> list[int]:
    """Counts per ``BUCKET`` seconds from ``origin``."""
    counts = Counter(min(max(int((t - origin) // BUCKET), 0), buckets - 1) for t in times)
    return [counts.get(index, 0) for index in range(buckets)]


class ConnectionSampler:
    """Samples ``INFO stats total_connections_received`` every ``SAMPLE_EVERY`` seconds."""

    def __init__(self, url: str) -> None:
        """Sample the server at ``url`` from :meth:`start` until :meth:`stop`."""
        self.client = redis.Redis.from_url(url, socket_timeout=2)
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = int(self.client.info("stats")["total_connections_received"])
            self.samples.append((time.time(), total))
            self._stop.wait(SAMPLE_EVERY)

    def start(self) -> ConnectionSampler:
        """Start sampling."""
        self._thread.start()
        return self

    def stop(self) -> list[float]:
        """Stop; returns one time per new connection (each at the sample that counted it)."""
        self._stop.set()
        self._thread.join(5)
        self.client.close()
        times: list[float] = []
        for (_, before), (moment, after) in zip(self.samples, self.samples[1:], strict=False):
            times.extend([moment] * (after - before))
        return times


@pytest.mark.parametrize(
    ("count", "limit"),
    [
        pytest.param(6, 4 / 6, id="6-workers"),
        pytest.param(20, 0.5, id="20-workers", marks=pytest.mark.slow),
    ],
)
def test_workers_reconnecting_after_a_redis_restart_spread_their_attempts_over_time(
    worker_env: dict[str, str],
    tmp_path: Path,
    throwaway_redis: RedisProcess,
    count: int,
    limit: float,
) -> None:
    """Given ``count`` idle workers (solo pool) on one Redis, when Redis is SIGKILLed and
    restarted 4.5 s later, then every worker reconnects, and their reconnections are spread
    over time: no 500 ms bucket holds more than ``limit`` of them (without the jitter all
    would land in one bucket); the restarted server's new connections are reported alike.
    """
    env = {**worker_env, "JOBS_REDIS_URL": throwaway_redis.url, "JOBS_ENV": "production"}
    pool = [
        Worker(env, tmp_path, pool="solo", concurrency=1, name=f"storm-{index}")
        for index in range(count)
    ]
    try:
        for worker in pool:
            worker.start(wait=False)
        for worker in pool:
            worker.wait_ready()
        killed = time.time()
        throwaway_redis.kill()
        time.sleep(OUTAGE)  # the fault itself: Redis stays down this long
        throwaway_redis.start()
        restarted = time.time()
        sampler = ConnectionSampler(throwaway_redis.url).start()
        try:
            wait_for(
                lambda: all(reconnected_at(worker, killed) for worker in pool),
                40,
                "every worker reconnected",
                interval=0.25,
            )
            time.sleep(1.0)  # the connections a worker opens right after its consumer's
        finally:
            connections = sampler.stop()
        for worker in pool:
            assert worker.alive(), worker.log()
    finally:
        for worker in pool:
            worker.kill_all()  # their shutdown is not under test
    reconnects = [t for worker in pool if (t := reconnected_at(worker, killed)) is not None]
    failures = [len(failed_attempts(worker, killed)) for worker in pool]
    buckets = int((max(reconnects) - restarted) // BUCKET) + 1
    per_bucket = histogram(reconnects, restarted, buckets)
    server_side = histogram(connections, restarted, buckets)
    share = max(per_bucket) / count
    print(
        f"\nFIGURE reconnect_storm_{count}: {count} workers, Redis down {OUTAGE} s then "
        f"restarted: worker reconnects per 500 ms from the restart {per_bucket} (largest bucket "
        f"{share:.0%}, limit {limit:.0%}; first→last {max(reconnects) - min(reconnects):.1f} s); "
        f"failed attempts during the outage {sum(failures)} ({min(failures)} to {max(failures)} "
        f"per worker); new server connections per 500 ms {server_side}"
    )
    assert len(reconnects) == count
    assert share <= limit + 1e-9
