"""Event counters in Redis for the exporter: one hash, one HINCRBY per event, one HGETALL to read.

Every counter is a field of ``keys.counters()`` named ``<event>:<label>``:

- ``dead_lettered:<task>``: dead letters written (DeadLetter policy, poison messages, rows a
  write buffer's flush refused);
- ``rate_limited:<limit>``: jobs parked because their rate limit had no slot;
- ``backpressure_rejected:<queue>``: enqueues refused by a full queue (counted in ``admit.lua``);
- ``breaker_parked:<destination>``: jobs parked because the destination's breaker was open.

One hash rather than a key per counter so a scrape reads every counter in one command with no
SCAN; its size is bounded by the tasks, limits, queues and destinations that ever had an event.
(``duplicates_skipped`` predates it and stays the string key ``keys.counter(...)``.)

Counting never fails a job: an error is swallowed and logged once per process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis
import structlog

from workers import keys, resources
from workers.resources import as_text

if TYPE_CHECKING:
    from collections.abc import Callable

log = structlog.get_logger("jobs.counters")

#: Counter events (the part of a field before the first ``:``).
DEAD_LETTERED = "dead_lettered"
RATE_LIMITED = "rate_limited"
BACKPRESSURE_REJECTED = "backpressure_rejected"
BREAKER_PARKED = "breaker_parked"
EVENTS = (DEAD_LETTERED, RATE_LIMITED, BACKPRESSURE_REJECTED, BREAKER_PARKED)

_warned = False


def field(event: str, label: str) -> str:
    """The hash field of ``event`` for ``label``: ``"dead_lettered:billing.send"``."""
    return f"{event}:{label}"


def incr(event: str, label: str, *, client: Callable[[], redis.Redis] | None = None) -> None:
    """Count one ``event`` for ``label``; never raises (a lost count is logged once)."""
    global _warned  # noqa: PLW0603 - log the first failure of a process only
    try:
        (client or resources.redis_client)().hincrby(keys.counters(), field(event, label), 1)
    except Exception as exc:
        if not _warned:
            _warned = True
            log.warning("counter_not_incremented", event=event, error=type(exc).__name__)


def read(client: redis.Redis) -> dict[str, dict[str, int]]:
    """Every counter: ``{event: {label: value}}`` (one HGETALL). Unknown events are kept too."""
    result: dict[str, dict[str, int]] = {}
    for raw_field, raw_value in client.hgetall(keys.counters()).items():
        event, _, label = as_text(raw_field).partition(":")
        try:
            value = int(as_text(raw_value))
        except ValueError:
            continue
        result.setdefault(event, {})[label] = value
    return result
