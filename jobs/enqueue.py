"""Typed producer facade over :mod:`workers.admission`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workers import admission
from workers.admission import Call, JobRef
from workers.backpressure import OnFull
from workers.errors import BatchQueueFull

if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import datetime

    from workers.task import JobTask

__all__ = ["BatchQueueFull", "Call", "JobRef", "OnFull", "enqueue", "enqueue_many"]


def enqueue(
    task: JobTask,
    *args: Any,
    key: str | None = None,
    queue: str | None = None,
    priority: int | None = None,
    countdown: float | None = None,
    eta: datetime | None = None,
    on_full: OnFull = "raise",
    wait_max: float | None = None,
    **kwargs: Any,
) -> JobRef:
    """Enqueue one job; returns its :class:`JobRef`.

    ``key`` is the idempotency key (default: task name + canonical JSON of the arguments). A
    second enqueue of the same key within the dedup window publishes nothing and returns the
    first job's id with ``deduplicated=True``. Raises ``InvalidJob`` (naming the argument) for
    arguments that are not JSON-native or do not fit the task, ``BrokerUnavailable`` within
    about a second when Redis does not answer.

    Backpressure: when the queue is over its high watermark (until it drains below the low
    one), or its oldest waiting job is older than its ``max_age``, the job is refused with
    ``QueueFull(queue, depth, limit, retry_after)`` — before any database work, in the same
    single Redis round trip. ``on_full="raise"`` (default) raises at once; ``on_full="wait"``
    retries with jittered backoff for up to ``wait_max`` seconds (default: the
    ``JOBS_ENQUEUE_WAIT_MAX`` setting), then raises. Web producers: ``jobs.http``.
    """
    return admission.enqueue(
        task,
        args,
        kwargs,
        key=key,
        queue=queue,
        priority=priority,
        countdown=countdown,
        eta=eta,
        on_full=on_full,
        wait_max=wait_max,
    )


def enqueue_many(
    task: JobTask,
    calls: Iterable[Call | dict[str, Any]],
    *,
    queue: str | None = None,
    priority: int | None = None,
    countdown: float | None = None,
    on_full: OnFull = "raise",
    wait_max: float | None = None,
) -> list[JobRef]:
    """Enqueue a batch (one Redis round trip); items are kwargs dicts or :class:`Call`.

    Each job is admitted or refused on its own, in order; if any is refused (after the bounded
    wait with ``on_full="wait"``), :class:`BatchQueueFull` (a ``QueueFull``) is raised with
    ``accepted`` (the admitted jobs' refs) and ``refused`` (positions in the batch).
    Resubmitting the whole batch is safe: admitted jobs come back deduplicated.
    """
    return admission.enqueue_many(
        task,
        calls,
        queue=queue,
        priority=priority,
        countdown=countdown,
        on_full=on_full,
        wait_max=wait_max,
    )
