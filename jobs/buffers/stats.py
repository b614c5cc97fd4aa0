"""A write buffer's backlog for the exporter: its length and the age of its oldest row."""

from __future__ import annotations

import time
from typing import NamedTuple

from jobs.buffers.rows import appended_at
from workers import keys, resources


class BufferStats(NamedTuple):
    """A buffer's backlog, for the exporter (rows claimed by running flushes not included)."""

    length: int
    oldest_age: float  # seconds since the oldest waiting row was appended (0 when empty)


def buffer_stats(name: str, *, now: float | None = None) -> BufferStats:
    """``(length, oldest_age_seconds)`` of buffer ``name``: LLEN + LINDEX 0, O(1)."""
    with resources.redis_client().pipeline(transaction=False) as pipe:
        pipe.llen(keys.buffer(name))
        pipe.lindex(keys.buffer(name), 0)
        length, head = pipe.execute()
    at = appended_at(head)
    age = max(0.0, (now if now is not None else time.time()) - at) if at is not None else 0.0
    return BufferStats(int(length), age)
