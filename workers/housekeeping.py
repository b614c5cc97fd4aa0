"""Worker housekeeping, on a thread of the worker's main process.

Every ``housekeeping_interval``: promote due jobs from the delayed store. Every second:
heart-beat this process's consumers. Every few seconds: recover the in-flight messages of
consumers whose heartbeat stopped (their worker died), putting them back at the front of
their queues. Every step is one atomic Lua script, safe with any number of workers doing it.

Backpressure: every second, also sample each queue's drain rate (the basis of
``QueueFull.retry_after``; :class:`workers.backpressure.DrainMeter`).

Liveness (:mod:`workers.health`): with the heartbeat, in the same pipeline, publish this
process's consumer probes (last successful poll, last delivery) to the worker-health hash.
The probes are stamped by the consumer's fetch path, not here: while a consumer loop is stuck
this thread keeps publishing its *old* ``last_poll``, and logs ``consumer_stuck`` once.
"""

from __future__ import annotations

import math
import random
import threading
import time

import redis
import structlog

from workers import health, keys
from workers.backpressure import DrainMeter
from workers.resources import as_text, make_redis
from workers.scripts import Scripts
from workers.settings import Settings
from workers.transport import ACTIVE_CONSUMERS, PRIORITY_SEP, STATS_KEY_PARTS, _active_lock

log = structlog.get_logger("jobs.housekeeping")

#: Due jobs moved per script call.
PROMOTE_BATCH = 1000


class Housekeeper:
    """Promoter + heartbeat + recovery loop."""

    def __init__(self, settings: Settings) -> None:
        """Use the broker's Redis (the delayed store and in-flight hashes live there)."""
        self.settings = settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: redis.Redis | None = None
        self._scripts: Scripts | None = None
        self._stuck: set[str] = set()  # this process's consumers logged as stuck
        self._last_prune = 0.0

    def start(self) -> None:
        """Start the daemon thread."""
        self._thread = threading.Thread(target=self._loop, name="jobs-housekeeping", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (waits briefly), then delete this process's health records."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            if not self._thread.is_alive():
                self.farewell()

    def farewell(self) -> None:
        """Delete this process's health records: the worker is shutting down, not stuck."""
        records, retired = health.snapshot(time.time())
        if self._client is None:
            return
        try:
            health.forget(self._client, [record.consumer for record in records] + retired)
        except redis.RedisError as exc:
            log.warning("health_records_not_deleted", error=str(exc))

    def connect(self) -> None:
        """Create this housekeeper's own Redis client (on the thread that uses it)."""
        self._client = make_redis(self.settings.effective_broker_url, self.settings)
        self._scripts = Scripts(self._client)

    def _loop(self) -> None:
        self.connect()
        assert self._client is not None
        drain = DrainMeter(self._client)  # backpressure: drain-rate sampling
        last_beat = last_recovery = 0.0
        recovery_every = max(self.settings.consumer_dead_after / 4, 0.5)
        outage_wait = 0.0  # > 0 while Redis is unreachable: jittered exponential backoff
        while not self._stop.wait(outage_wait or self.settings.housekeeping_interval):
            now = time.time()
            try:
                self.promote_due(now)
                if now - last_beat >= 1.0:
                    self.heartbeat(now)
                    last_beat = now
                    drain.sample(now)
                if now - last_recovery >= recovery_every:
                    self.recover_dead_consumers(now)
                    last_recovery = now
                if outage_wait:
                    log.info("housekeeping_redis_back")
                    outage_wait = 0.0
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if not outage_wait:
                    log.warning("housekeeping_redis_unavailable", error=str(exc))
                ceiling = min(max(outage_wait, self.settings.housekeeping_interval) * 2, 5.0)
                outage_wait = random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter
            except Exception:
                log.exception("housekeeping_failed")

    def promote_due(self, now: float) -> int:
        """Move due delayed jobs to their queues; returns how many."""
        assert self._scripts is not None
        total = 0
        while True:
            moved = int(
                self._scripts.promote(
                    keys=[keys.delayed()],
                    args=[repr(now), PROMOTE_BATCH, keys.wake(""), PRIORITY_SEP, *STATS_KEY_PARTS],
                )
            )
            total += moved
            if moved < PROMOTE_BATCH:
                return total

    def heartbeat(self, now: float) -> None:
        """Record that this process's consumers are alive, and publish their probes."""
        assert self._client is not None
        with _active_lock:
            alive = dict.fromkeys(ACTIVE_CONSUMERS, now)
        records, retired = health.snapshot(now)
        if alive or records or retired:
            with self._client.pipeline(transaction=False) as pipe:
                if alive:
                    pipe.zadd(keys.consumers(), alive)
                health.publish(pipe, records, retired)
                pipe.execute()
        self.watch(records, now)
        if now - self._last_prune >= health.PRUNE_EVERY:
            self._last_prune = now
            health.prune(self._client, now)

    def watch(self, records: list[health.HealthRecord], now: float) -> None:
        """Log ``consumer_stuck`` once when one of this process's consumers stops polling."""
        stuck_after = self.settings.health_stuck_after
        for record in records:
            state, reason = health.verdict(
                record, now, now, stuck_after=stuck_after, dead_after=math.inf
            )
            if state is health.Verdict.STUCK and record.consumer not in self._stuck:
                self._stuck.add(record.consumer)
                log.error(
                    "consumer_stuck", consumer=record.consumer, queues=record.queues, reason=reason
                )
            elif state is not health.Verdict.STUCK and record.consumer in self._stuck:
                self._stuck.discard(record.consumer)
                log.info("consumer_unstuck", consumer=record.consumer)

    def recover_dead_consumers(self, now: float) -> int:
        """Requeue the in-flight messages of consumers silent for ``consumer_dead_after``."""
        assert self._client is not None
        assert self._scripts is not None
        cutoff = now - self.settings.consumer_dead_after
        dead = self._client.zrange(keys.consumers(), "-inf", repr(cutoff), byscore=True)
        restored = 0
        for raw_id in dead:
            consumer = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            count = int(
                self._scripts.restore(
                    keys=[keys.inflight(consumer), keys.consumers()],
                    args=[
                        consumer,
                        "",
                        keys.wake(""),
                        PRIORITY_SEP,
                        repr(cutoff),
                        *STATS_KEY_PARTS,
                    ],
                )
            )
            restored += count
            log.warning("consumer_recovered", consumer=consumer, requeued=count)
        # Only consumers the restore removed from the registry: a consumer heart-beaten
        # meanwhile (it was slow, not dead) keeps its record.
        if dead:
            names = [as_text(raw_id) for raw_id in dead]
            scores = self._client.zmscore(keys.consumers(), names)
            gone = [name for name, score in zip(names, scores, strict=True) if score is None]
            health.forget(self._client, gone)
        return restored
