"""Queue pause/resume across the cluster.

A paused queue is a member of the Redis set ``keys.paused_queues()``. ``fetch.lua`` reads that
set in the same script that pops, so no consumer pops from a paused queue (any of its priority
sub-queues) once the pause is written: workers already running stop at their next fetch and
workers started later honour it from their first. Nothing else changes:

- enqueue still accepts (admission does not look at the set), so backpressure applies as the
  queue grows: over its high watermark producers get ``QueueFull``;
- jobs already fetched (in flight) finish normally;
- housekeeping still promotes due delayed jobs into the queue, where they wait;
- on resume, wake tokens are pushed so idle consumers fetch at once (not after their next
  ``brpop_timeout``).

``keys.paused_since()`` remembers when each queue was paused, for operators.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from workers import keys
from workers.errors import InvalidJob
from workers.queues import QUEUE_NAMES
from workers.transport import WAKE_TOKENS

if TYPE_CHECKING:
    import redis


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def check_queue(queue: str) -> str:
    """``queue`` if the system has it, else :class:`InvalidJob` naming the known queues."""
    if queue not in QUEUE_NAMES:
        raise InvalidJob(f"unknown queue {queue!r}; known: {list(QUEUE_NAMES)}", field="queue")
    return queue


def pause(client: redis.Redis, queue: str, *, now: float | None = None) -> bool:
    """Stop every consumer from fetching ``queue``; True if it was not paused already.

    Takes effect at each consumer's next fetch (within about a second for idle ones).
    """
    check_queue(queue)
    with client.pipeline(transaction=True) as pipe:
        pipe.sadd(keys.paused_queues(), queue)
        pipe.hsetnx(keys.paused_since(), queue, repr(time.time() if now is None else now))
        added, _ = pipe.execute()
    return bool(added)


def resume(client: redis.Redis, queue: str) -> bool:
    """Let consumers fetch ``queue`` again (waking idle ones); True if it was paused.

    Any name may be resumed, so a stray member of the set can always be removed.
    """
    wake = keys.wake(queue)
    with client.pipeline(transaction=True) as pipe:
        pipe.srem(keys.paused_queues(), queue)
        pipe.hdel(keys.paused_since(), queue)
        pipe.lpush(wake, *["1"] * WAKE_TOKENS)
        pipe.ltrim(wake, 0, WAKE_TOKENS - 1)
        removed, *_ = pipe.execute()
    return bool(removed)


def paused(client: redis.Redis) -> dict[str, float | None]:
    """Paused queue -> unix time it was paused (``None`` when not recorded)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.smembers(keys.paused_queues())
        pipe.hgetall(keys.paused_since())
        members, since = pipe.execute()
    when = {_text(name): float(_text(at)) for name, at in since.items()}
    return {name: when.get(name) for name in sorted(_text(member) for member in members)}
