"""The baseline of the throughput benchmark: a bare Celery app on kombu's stock Redis transport.

Same worker-relevant settings as ours (late acks, reject on worker lost, prefetch multiplier 1,
JSON only, no results), a no-op task with the same side effect (one ``INCR``) and a stamp task
like ours (one ``HSET``). The Redis URL comes from ``BENCH_REDIS_URL``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import redis
from bench_common import BARE_QUEUE, COUNTER, READY_LIST, REDIS_URL_ENV, STARTED
from celery import Celery, signals

REDIS_URL = os.environ.get(REDIS_URL_ENV, "redis://127.0.0.1:6379/12")

app = Celery("bare", broker=REDIS_URL)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    result_backend=None,
    task_default_queue=BARE_QUEUE,
    worker_send_task_events=False,
    task_send_sent_event=False,
    worker_hijack_root_logger=False,
    enable_utc=True,
)

_lock = threading.Lock()
_client: tuple[int, redis.Redis] | None = None


def counter_client() -> redis.Redis:
    """This process's Redis client (created lazily, again after fork), like ours."""
    global _client  # noqa: PLW0603 - a per-process cache, as in workers.resources
    with _lock:
        if _client is None or _client[0] != os.getpid():
            _client = (os.getpid(), redis.Redis.from_url(REDIS_URL))
        return _client[1]


@app.task(name="bench.bare_noop")
def noop(*, n: int) -> None:  # noqa: ARG001 - mirrors our task's signature
    """Do nothing but count the run."""
    counter_client().incr(COUNTER)


@app.task(name="bench.bare_stamp")
def stamp(*, n: int) -> None:
    """Record when job ``n`` started and count the run (the same side effects as ours)."""
    started = repr(time.time())
    with counter_client().pipeline(transaction=False) as pipe:
        pipe.hset(STARTED, str(n), started)
        pipe.incr(COUNTER)
        pipe.execute()


@signals.worker_ready.connect
def _mark_ready(**_: Any) -> None:
    """Tell the driver when this worker process starts consuming."""
    counter_client().rpush(READY_LIST, repr(time.time()))
