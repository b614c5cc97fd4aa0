"""Typed producer facade over :mod:`workers.admission`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workers import admission
from workers.admission import Call, JobRef

if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import datetime

    from workers.task import JobTask

__all__ = ["Call", "JobRef", "enqueue", "enqueue_many"]


def enqueue(
    task: JobTask,
    *args: Any,
    key: str | None = None,
    queue: str | None = None,
    priority: int | None = None,
    countdown: float | None = None,
    eta: datetime | None = None,
    **kwargs: Any,
) -> JobRef:
    """Enqueue one job; returns its :class:`JobRef`.

    ``key`` is the idempotency key (default: task name + canonical JSON of the arguments). A
    second enqueue of the same key within the dedup window publishes nothing and returns the
    first job's id with ``deduplicated=True``. Raises ``InvalidJob`` (naming the argument) for
    arguments that are not JSON-native or do not fit the task, ``BrokerUnavailable`` within
    about a second when Redis does not answer.
    """
    return admission.enqueue(
        task, args, kwargs, key=key, queue=queue, priority=priority, countdown=countdown, eta=eta
    )


def enqueue_many(
    task: JobTask,
    calls: Iterable[Call | dict[str, Any]],
    *,
    queue: str | None = None,
    priority: int | None = None,
    countdown: float | None = None,
) -> list[JobRef]:
    """Enqueue a batch (one Redis round trip); items are kwargs dicts or :class:`Call`."""
    return admission.enqueue_many(task, calls, queue=queue, priority=priority, countdown=countdown)
