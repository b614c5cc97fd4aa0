"""Loaders for the cache tests, importable by worker processes (dotted names in JOBS_WARMERS).

The counters live in the test Redis DB, so the test sees what every worker process did.
"""

from __future__ import annotations

import time
from typing import Any

from workers import resources

#: Loader calls (all loaders below).
CALLS = "cachetest:calls"
#: Chunk loads running right now, and the most ever seen at once.
INFLIGHT = "cachetest:inflight"
PEAK = "cachetest:peak"
#: How many numbers ``numbers()`` lists.
COUNT = "cachetest:count"


def numbers() -> list[dict[str, Any]]:
    """Key source: ``{"n": 0}`` .. ``{"n": count - 1}`` (count from Redis, default 10,000)."""
    count = int(resources.redis_client().get(COUNT) or 10_000)
    return [{"n": n} for n in range(count)]


def doubled(*, keys: list[dict[str, Any]]) -> list[tuple[dict[str, Any], int]]:
    """Chunk loader: ``n -> 2n``; records how many chunk loads run at once."""
    client = resources.redis_client()
    client.incr(CALLS)
    running = client.incr(INFLIGHT)
    client.zadd(PEAK, {"peak": running}, gt=True)
    try:
        time.sleep(0.02)
        return [(params, params["n"] * 2) for params in keys]
    finally:
        client.decr(INFLIGHT)


def slow_doubled(*, keys: list[dict[str, Any]]) -> dict[str, int]:
    """Chunk loader that takes a while (a run that is still going)."""
    time.sleep(0.5)
    return {f"num:{params['n']}": params["n"] * 2 for params in keys}


def counted(**params: Any) -> dict[str, Any]:
    """A value loader for ``get_or_load``: returns its call number and its params."""
    calls = int(resources.redis_client().incr(CALLS))
    time.sleep(float(params.get("sleep", 0)))
    return {"call": calls, "params": params}


#: Redis list of the unix times chunk loads of ``stamped`` started.
STARTS = "cachetest:starts"


def stamped(*, keys: list[dict[str, Any]]) -> dict[str, int]:
    """Chunk loader that records when it started (rate-limit tests)."""
    resources.redis_client().rpush(STARTS, repr(time.time()))
    return {f"rated:{params['n']}": params["n"] for params in keys}
