"""The producer side of a write buffer: validated, pipelined appends and flush requests.

Usage::

    from jobs.buffers import WriteBuffer
    WriteBuffer("events").append({"user_id": 42, "event_type": "view"})
    WriteBuffer("events").extend(rows)  # one Redis round trip per call
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import redis
import structlog

from jobs.buffers.names import FLUSH_TASK
from jobs.buffers.registry import buffer_spec, compiled
from jobs.enqueue import enqueue
from workers import keys, resources
from workers.errors import BrokerUnavailable, JobsError
from workers.registries import BufferSpec
from workers.settings import Settings

log = structlog.get_logger("jobs.buffers")

#: Rows per RPUSH command of an append.
PUSH_CHUNK = 10_000
#: Rows per Redis transaction of an append (a larger input is sent in several transactions).
TRANSACTION_ROWS = 100_000


class WriteBuffer:
    """The producer side of a write buffer: ``WriteBuffer("events").extend(rows)``."""

    def __init__(self, name: str, *, settings: Settings | None = None) -> None:
        """Bind to buffer ``name`` of ``JOBS_BUFFERS`` (:class:`InvalidJob` if unknown)."""
        self.name = name
        self.spec = buffer_spec(name, settings)
        self._codec = compiled(name, self.spec).codec

    def append(self, row: Mapping[str, Any]) -> int:
        """Buffer one row; returns the buffer's length after it. See :meth:`extend`."""
        return self.extend((row,))

    def extend(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Buffer ``rows`` (validated first: nothing is stored if any row is invalid).

        One Redis round trip (a MULTI/EXEC transaction: all rows or none) for up to
        100,000 rows; a larger input is sent in transactions of that size, so a Redis failure
        midway may leave its first transactions stored (give rows an explicit key column if a
        retry must not add them twice). When the buffer reaches ``flush_threshold`` one flush
        job is enqueued (a burst of appends enqueues one). Returns the buffer's length.

        Raises :class:`InvalidJob` (naming the buffer, row index and column) and
        :class:`BrokerUnavailable` (Redis down or refusing writes: the rows were not stored).
        """
        items = self._codec.encode(rows)
        client = resources.redis_client()
        target = keys.buffer(self.name)
        flag = keys.buffer_flush_requested(self.name)
        length, requested = 0, True
        try:
            if not items:
                return int(client.llen(target))
            for start in range(0, len(items), TRANSACTION_ROWS):
                part = items[start : start + TRANSACTION_ROWS]
                with client.pipeline(transaction=True) as pipe:
                    for offset in range(0, len(part), PUSH_CHUNK):
                        pipe.rpush(target, *part[offset : offset + PUSH_CHUNK])
                    pipe.exists(flag)
                    replies = pipe.execute()
                length, requested = int(replies[-2]), bool(replies[-1])
        except redis.RedisError as exc:
            raise BrokerUnavailable(
                f"write buffer {self.name!r}: rows not buffered: {type(exc).__name__}: {exc}"
            ) from exc
        if length >= self.spec.flush_threshold and not requested:
            request_flush(self.name, self.spec)
        return length


def request_flush(name: str, spec: BufferSpec) -> str | None:
    """Enqueue one flush of ``name`` unless one is already requested; returns its job id.

    A marker (``SET NX``, expiring after ``claim_timeout``) deduplicates a burst of requests;
    the flush clears it when it starts. Failing to enqueue is logged, never raised: the rows are
    stored and the scheduled flush writes them.
    """
    # Imported here: the tasks module imports the flush, which requests flushes through us.
    from jobs.buffers.tasks import flush_buffer  # noqa: PLC0415

    client = resources.redis_client()
    flag = keys.buffer_flush_requested(name)
    token = uuid.uuid4().hex
    try:
        if not client.set(flag, token, nx=True, ex=max(1, math.ceil(spec.claim_timeout))):
            return None
        ref = enqueue(flush_buffer, buffer=name, key=f"{FLUSH_TASK}:{name}:{token}")
    except (JobsError, redis.RedisError) as exc:
        log.warning("buffer_flush_request_failed", buffer=name, error=type(exc).__name__)
        try:
            if client.get(flag) == token.encode():
                client.delete(flag)
        except redis.RedisError:
            pass  # the marker expires on its own
        return None
    log.info("buffer_flush_requested", buffer=name, job_id=ref.id)
    return ref.id
