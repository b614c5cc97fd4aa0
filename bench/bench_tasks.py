"""Our side of the worker benchmarks: no-op and stamp jobs run through ``JobTask``'s policy chain.

Loaded by the worker through ``JOBS_EXTRA_TASK_MODULES='["bench_tasks"]'`` with ``bench/`` on
``PYTHONPATH``; the driver imports it the same way to enqueue. Importing it also connects the
``worker_ready`` stamp every benchmark worker gives (see :data:`bench_common.READY_LIST`).
"""

from __future__ import annotations

import time
from typing import Any

from bench_common import COUNTER, OURS_QUEUE, READY_LIST, STARTED
from celery import signals

from workers import resources
from workers.task import job


@job(name="bench.noop", queue=OURS_QUEUE)
def noop(*, n: int) -> None:  # noqa: ARG001 - mirrors our task's signature
    """Do nothing but count the run (the same side effect as the bare task)."""
    resources.redis_client().incr(COUNTER)


#: A rate no worker on these machines gets near (~1,500 jobs/s per worker): never binds.
NOT_BINDING = "100000/s"


@job(name="bench.noop_limited", queue=OURS_QUEUE, rate=NOT_BINDING)
def noop_limited(*, n: int) -> None:  # noqa: ARG001 - the argument makes each job's key unique
    """The same side effect as :func:`noop`, behind a rate limit that never binds."""
    resources.redis_client().incr(COUNTER)


@job(name="bench.stamp", queue=OURS_QUEUE)
def stamp(*, n: int) -> None:
    """Record when job ``n`` started (end-to-end latency: enqueue -> start) and count the run."""
    started = repr(time.time())
    with resources.redis_client().pipeline(transaction=False) as pipe:
        pipe.hset(STARTED, str(n), started)
        pipe.incr(COUNTER)
        pipe.execute()


@signals.worker_ready.connect
def _mark_ready(**_: Any) -> None:
    """Tell the driver when this worker process starts consuming."""
    resources.redis_client().rpush(READY_LIST, repr(time.time()))
