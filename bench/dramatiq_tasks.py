"""Dramatiq's side of the envelope benchmark: a no-op actor with the same side effect as ours.

One ``INCR`` of :data:`bench_common.COUNTER` per message, on the Redis database of
``BENCH_REDIS_URL`` (Dramatiq's own keys live under its ``dramatiq:`` namespace there). Every
worker process appends ``time.time()`` to :data:`bench_common.READY_LIST` once it consumes,
like ours, so drains are timed the same way.
"""

from __future__ import annotations

import os
import time
from typing import Any

import dramatiq
import redis
from bench_common import COUNTER, READY_LIST, REDIS_URL_ENV
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware

#: Dramatiq's queue for the benchmark.
QUEUE = "dq"

REDIS_URL = os.environ.get(REDIS_URL_ENV, "redis://127.0.0.1:6379/12")
counter = redis.Redis.from_url(REDIS_URL)


class ReadyStamp(Middleware):  # type: ignore[misc]
    """Stamp :data:`READY_LIST` when a worker process has booted."""

    def after_worker_boot(self, broker: Any, worker: Any) -> None:  # noqa: ARG002 - hook
        """The process consumes from now on."""
        counter.rpush(READY_LIST, repr(time.time()))


broker = RedisBroker(url=REDIS_URL)
broker.add_middleware(ReadyStamp())
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop(n: int) -> None:  # noqa: ARG001 - mirrors ours
    """Count the run (the same side effect as ours and bare Celery's)."""
    counter.incr(COUNTER)
