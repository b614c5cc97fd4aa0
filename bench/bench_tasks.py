"""Our side of the throughput benchmark: a no-op job run through ``JobTask``'s policy chain.

Loaded by the worker through ``JOBS_EXTRA_TASK_MODULES='["bench_tasks"]'`` with ``bench/`` on
``PYTHONPATH``; the driver imports it the same way to enqueue.
"""

from __future__ import annotations

import time
from typing import Any

from bench_common import COUNTER, OURS_QUEUE, READY_KEY
from celery import signals

from workers import resources
from workers.task import job


@job(name="bench.noop", queue=OURS_QUEUE)
def noop(*, n: int) -> None:  # noqa: ARG001 - the argument only makes each job's key unique
    """Do nothing but count the run (the same side effect as the bare task)."""
    resources.redis_client().incr(COUNTER)


@signals.worker_ready.connect
def _mark_ready(**_: Any) -> None:
    """Tell the driver when this worker starts consuming."""
    resources.redis_client().set(READY_KEY, repr(time.time()))
