"""Redis key builder: the only place the ``jobs:`` prefix appears."""

from __future__ import annotations

PREFIX = "jobs:"


def dedup(key: str) -> str:
    """Enqueue-time dedup marker for an idempotency key (value: the first job's id)."""
    return f"{PREFIX}dedup:{key}"


def claim(key: str) -> str:
    """Execution claim (value: owner token) for an idempotency key."""
    return f"{PREFIX}claim:{key}"


def done(key: str) -> str:
    """Completion marker for an idempotency key."""
    return f"{PREFIX}done:{key}"


def starts(run: str) -> str:
    """How many times one publication (``run``) of a job has started (worker-loss counter)."""
    return f"{PREFIX}starts:{run}"


def delayed() -> str:
    """Sorted set of messages due later (score: due time, unix seconds)."""
    return f"{PREFIX}delayed"


def wake(queue_key: str) -> str:
    """Wake-up tokens for consumers blocked on an empty queue list."""
    return f"{PREFIX}wake:{queue_key}"


def inflight(consumer_id: str) -> str:
    """Hash of messages a consumer has fetched and not yet acknowledged."""
    return f"{PREFIX}inflight:{consumer_id}"


def consumers() -> str:
    """Sorted set of consumer ids by last heartbeat (unix seconds)."""
    return f"{PREFIX}consumers"


def counter(name: str) -> str:
    """A monotonically increasing counter (``duplicates_skipped``, ...)."""
    return f"{PREFIX}counter:{name}"


def rate(name: str) -> str:
    """Rate-limiter state (GCRA theoretical arrival time etc.) of a limit name."""
    return f"{PREFIX}rate:{name}"


def limits() -> str:
    """Hash of run-time rate-limit overrides (limit name -> "N/s[,burst]")."""
    return f"{PREFIX}limits"


def breaker(name: str) -> str:
    """Circuit-breaker state of a destination."""
    return f"{PREFIX}breaker:{name}"


def breakers() -> str:
    """Set of destination names that have a breaker (for listing without SCAN)."""
    return f"{PREFIX}breakers"


def queue_stats(queue: str) -> str:
    """Hash of a queue's measured figures (drain rate, ...)."""
    return f"{PREFIX}queue:{queue}:stats"


def queue_full(queue: str) -> str:
    """Marker set while a queue is over its high watermark (hysteresis until the low one)."""
    return f"{PREFIX}queue:{queue}:full"
