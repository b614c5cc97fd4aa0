"""Backpressure at enqueue: bounded queues, ``QueueFull`` with a measured ``retry_after``.

The decision runs inside ``admit.lua``, fused with dedup and publish (one Redis round trip, no
database work): a queue's depth is the sum of its priority sub-queues; at or above the high
watermark the job is refused and the queue's *full* marker is set; while the marker exists,
jobs are refused until the depth is below the low watermark (hysteresis), then the marker is
cleared. With ``max_age`` configured, a job is also refused while the oldest waiting job has
waited longer than that. A refused job publishes nothing and sets no dedup marker.

This module holds what surrounds the script:

- :func:`limits_for`: the per-queue figures the script needs (cached per settings object);
- :func:`refusal`: a refusal reply turned into :class:`~workers.errors.QueueFull`, with
  ``retry_after`` estimated from the queue's measured drain rate (:func:`estimate_retry_after`);
- :func:`wait_pause`: the jittered pause between attempts of ``on_full="wait"``;
- :class:`DrainMeter`: run once a second by worker housekeeping; turns the per-queue
  ``fetched`` counter that ``fetch.lua`` increments into an EWMA drain rate (jobs/s), stored
  with its sampling time in ``jobs:queue:<queue>:stats``;
- :class:`BatchQueueFull`: what ``enqueue_many`` raises when part of a batch was refused.

On RabbitMQ, admission does not bound queues (use RabbitMQ's ``x-max-length`` with
``x-overflow: reject-publish`` there).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from workers import keys, publisher
from workers.envelopes import ENVELOPED_FIELD, waiting_jobs
from workers.errors import QueueFull
from workers.queues import QUEUE_NAMES

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    import redis

    from workers.settings import Settings

#: What an enqueue does when the queue is full: raise at once, or wait (bounded) for room.
OnFull = Literal["raise", "wait"]
ON_FULL_CHOICES: tuple[OnFull, ...] = ("raise", "wait")

#: Bounds of ``QueueFull.retry_after`` (seconds).
MIN_RETRY_AFTER = 1.0
MAX_RETRY_AFTER = 300.0
#: ``retry_after`` when no fresh drain rate is known (no worker has measured one lately).
DEFAULT_RETRY_AFTER = 5.0
#: A drain rate sampled longer ago than this (s) is not trusted: no worker is measuring.
RATE_STALE_AFTER = 30.0
#: Time constant (s) of the drain-rate EWMA: a new rate carries ~63 % weight after this long.
DRAIN_RATE_TAU = 5.0
#: Seconds the full marker outlives the last refusal (so a queue nobody enqueues to again
#: does not look full forever).
FULL_MARKER_TTL = 300
#: ``on_full="wait"``: pauses between attempts grow from ``WAIT_BASE`` to ``WAIT_CAP`` (s).
WAIT_BASE = 0.05
WAIT_CAP = 1.0

#: Stats-hash fields: fetch.lua's counter; the measured rate and when it was sampled.
FETCHED = "fetched"
DRAIN_RATE = "drain_rate"
SAMPLED_AT = "sampled_at"


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """One queue's backpressure figures and keys, as ``admit.lua`` takes them."""

    queue: str
    high: int
    low: int
    max_age: float | None
    full_key: str
    stats_key: str
    list_keys: tuple[str, ...]


_limits: dict[str, tuple[Settings, QueueLimits]] = {}


def list_keys(queue: str) -> tuple[str, ...]:
    """The Redis lists holding ``queue``'s waiting jobs, one per priority step."""
    return tuple(publisher.list_key(queue, step) for step in publisher.PRIORITY_STEPS)


def limits_for(queue: str, settings: Settings) -> QueueLimits:
    """``queue``'s limits under ``settings`` (cached until the settings object changes)."""
    hit = _limits.get(queue)
    if hit is not None and hit[0] is settings:
        return hit[1]
    high, low, max_age = settings.queue_knobs(queue)
    limits = QueueLimits(
        queue=queue,
        high=high,
        low=low,
        max_age=max_age,
        full_key=keys.queue_full(queue),
        stats_key=keys.queue_stats(queue),
        list_keys=list_keys(queue),
    )
    _limits[queue] = (settings, limits)
    return limits


def estimate_retry_after(
    backlog: float, rate: float | None, sampled_at: float | None, now: float
) -> float:
    """Seconds until ``backlog`` jobs are drained at ``rate`` jobs/s, clamped to the bounds.

    Without a fresh rate (never measured, or sampled more than ``RATE_STALE_AFTER`` ago) this
    is ``DEFAULT_RETRY_AFTER``; a measured rate of zero (nothing drains) gives the maximum.
    """
    if rate is None or sampled_at is None or now - sampled_at > RATE_STALE_AFTER:
        return DEFAULT_RETRY_AFTER
    if rate <= 0:
        return MAX_RETRY_AFTER
    return min(max(backlog / rate, MIN_RETRY_AFTER), MAX_RETRY_AFTER)


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value.decode() if isinstance(value, bytes) else value)
    except ValueError:
        return None


def refusal(limits: QueueLimits, reply: Sequence[Any], now: float) -> QueueFull:
    """The :class:`QueueFull` for an ``admit.lua`` refusal reply.

    ``reply`` is ``[reason, depth, drain_rate, sampled_at, age]``. For ``full`` the backlog
    to drain is ``depth - low`` (room opens below the low watermark); for ``age`` it is the
    whole depth (after that, every job now waiting has been fetched).
    """
    reason = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
    depth = int(reply[1])
    rate, sampled_at, age = (_number(value) for value in reply[2:5])
    backlog = depth - limits.low if reason == "full" else depth
    retry_after = estimate_retry_after(backlog, rate, sampled_at, now)
    exc = QueueFull(limits.queue, depth, limits.high, retry_after)
    if reason == "age" and age is not None:
        exc.add_note(f"the oldest waiting job has waited {age:.1f}s (max age {limits.max_age}s)")
    return exc


def wait_pause(attempt: int, remaining: float, rng: random.Random | None = None) -> float:
    """Pause (s) before attempt ``attempt + 1`` of a waiting enqueue, never past the deadline.

    Exponential from ``WAIT_BASE`` to ``WAIT_CAP`` with jitter in the upper half, so waiting
    producers neither hammer Redis nor wake in lock step.
    """
    ceiling = min(WAIT_CAP, WAIT_BASE * 2.0**attempt)
    return max(min((rng or random).uniform(ceiling / 2, ceiling), remaining), 0.0)


def ewma(previous: float | None, sample: float, elapsed: float, tau: float) -> float:
    """Exponentially weighted moving average for irregular sampling intervals."""
    if previous is None:
        return sample
    alpha = 1.0 - math.exp(-elapsed / tau)
    return previous + alpha * (sample - previous)


class DrainMeter:
    """Measures each queue's drain rate (jobs fetched per second, EWMA) for ``retry_after``.

    ``fetch.lua`` counts fetches per queue (cluster-wide, in the queue's stats hash); every
    worker's housekeeping calls :meth:`sample` about once a second. Each meter keeps its own
    previous reading, so any number of workers may sample: they all compute the same
    cluster-wide rate. The rate is only updated while the queue has a backlog or jobs were
    fetched, so an idle queue keeps its last measured capacity rather than decaying to zero;
    a backlog that nothing fetches does decay it to zero (then ``retry_after`` is maximal).
    """

    def __init__(self, client: redis.Redis, queues: Iterable[str] = QUEUE_NAMES) -> None:
        """Sample ``queues`` on ``client`` (the broker's Redis)."""
        self._client = client
        self._queues = tuple(queues)
        self._last: dict[str, tuple[float, int]] = {}
        self._rates: dict[str, float] = {}

    def sample(self, now: float) -> dict[str, float]:
        """Read counters and depths (one round trip), update and store the rates; returns them."""
        with self._client.pipeline(transaction=False) as pipe:
            for queue in self._queues:
                pipe.hmget(
                    keys.queue_stats(queue), [FETCHED, DRAIN_RATE, SAMPLED_AT, ENVELOPED_FIELD]
                )
                for key in list_keys(queue):
                    pipe.llen(key)
            replies = pipe.execute()
        step = 1 + len(publisher.PRIORITY_STEPS)
        rates: dict[str, float] = {}
        for index, queue in enumerate(self._queues):
            stats = replies[index * step]
            listed = sum(int(n) for n in replies[index * step + 1 : (index + 1) * step])
            depth = waiting_jobs(listed, stats[3])
            rate = self._update(queue, now, fetched=int(stats[0] or 0), depth=depth, stored=stats)
            if rate is not None:
                rates[queue] = rate
        if rates:
            with self._client.pipeline(transaction=False) as pipe:
                for queue, rate in rates.items():
                    pipe.hset(
                        keys.queue_stats(queue),
                        mapping={DRAIN_RATE: repr(round(rate, 3)), SAMPLED_AT: repr(now)},
                    )
                pipe.execute()
        return rates

    def _update(
        self, queue: str, now: float, *, fetched: int, depth: int, stored: Sequence[Any]
    ) -> float | None:
        """Fold one reading of ``queue`` into its rate; ``None`` while no rate is known.

        ``stored`` is the stats hash's ``[fetched, drain_rate, sampled_at]``.
        """
        previous = self._last.get(queue)
        self._last[queue] = (now, fetched)
        if queue not in self._rates:  # adopt a fresh rate another worker measured
            rate, sampled_at = _number(stored[1]), _number(stored[2])
            if rate is not None and sampled_at and now - sampled_at <= RATE_STALE_AFTER:
                self._rates[queue] = rate
        if previous is not None and now > previous[0]:
            delta = max(fetched - previous[1], 0)  # a flushed counter restarts at zero
            if delta or depth:
                elapsed = now - previous[0]
                self._rates[queue] = ewma(
                    self._rates.get(queue), delta / elapsed, elapsed, DRAIN_RATE_TAU
                )
        return self._rates.get(queue)
