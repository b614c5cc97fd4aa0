"""Admission: validate → dedup → publish. Behind ``jobs.enqueue`` and ``JobTask.apply_async``.

On Redis, dedup and publish are one Lua script (``admit.lua``): a producer that dies midway
leaves neither a lost job nor a dedup marker without a job. ``enqueue_many`` sends a whole batch
in one pipeline (one round trip). Flow-control checks (backpressure) slot in before dedup.
"""

from __future__ import annotations

import inspect
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import redis

from workers import keys, publisher, resources
from workers.canonical import check_json, derive_key
from workers.errors import BrokerUnavailable, InvalidJob
from workers.job import Job
from workers.queues import PRIORITY_RANGE, QUEUE_NAMES
from workers.settings import get_settings

if TYPE_CHECKING:
    from collections.abc import Iterable

    from workers.task import JobTask


@dataclass(frozen=True, slots=True)
class JobRef:
    """What enqueue returns: the job id (the first job's id when deduplicated)."""

    id: str
    key: str
    queue: str
    deduplicated: bool = False


@dataclass(frozen=True, slots=True)
class Call:
    """One job of an ``enqueue_many`` batch."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    key: str | None = None


_checked_broker = False


def _ensure_safe_broker() -> None:
    global _checked_broker  # noqa: PLW0603 - checked once per process
    if not _checked_broker:
        settings = get_settings()
        if settings.broker_is_redis:
            try:
                resources.check_broker_safety(resources.redis_client(), settings)
            except publisher.REDIS_ERRORS as exc:
                raise BrokerUnavailable(f"broker unavailable: {exc}") from exc
        _checked_broker = True


def prepare(
    task: JobTask,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    key: str | None,
    queue: str | None,
    priority: int | None,
) -> Job:
    """Validate one job and build it; errors name the offending argument or option."""
    if not getattr(task, "policy_options", None) and not hasattr(task, "resolved_options"):
        raise InvalidJob(f"{task!r} is not a job (declare it with @job)", field="task")
    for index, value in enumerate(args):
        check_json(value, f"args[{index}]")
    for name, value in kwargs.items():
        check_json(value, f"argument {name!r}")
    try:
        inspect.signature(task.run).bind(*args, **kwargs)
    except TypeError as exc:
        raise InvalidJob(f"arguments do not match {task.name}: {exc}", field="args") from None
    queue = queue or task.queue or "default"
    if queue not in QUEUE_NAMES:
        raise InvalidJob(f"unknown queue {queue!r}; known: {list(QUEUE_NAMES)}", field="queue")
    priority = task.default_priority if priority is None else priority
    if priority is not None and priority not in PRIORITY_RANGE:
        raise InvalidJob("priority must be an integer from 0 (highest) to 9", field="priority")
    if key is not None and (not isinstance(key, str) or not key or len(key) > 512):  # noqa: PLR2004
        raise InvalidJob("key must be a non-empty string of at most 512 characters", field="key")
    return Job(
        id=str(uuid.uuid4()),
        task=task.name,
        key=key or derive_key(task.name, args, kwargs),
        queue=queue,
        args=args,
        kwargs=kwargs,
        priority=priority,
    )


def delay_of(countdown: float | None, eta: datetime | None) -> float:
    """Seconds from now until the job is due (0 = now)."""
    if countdown is not None and eta is not None:
        raise InvalidJob("give countdown or eta, not both", field="countdown")
    if countdown is not None:
        if countdown < 0:
            raise InvalidJob("countdown must be >= 0", field="countdown")
        return float(countdown)
    if eta is not None:
        if eta.tzinfo is None:
            raise InvalidJob("eta must be timezone-aware (UTC)", field="eta")
        return max((eta - datetime.now(UTC)).total_seconds(), 0.0)
    return 0.0


def enqueue(
    task: JobTask,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    key: str | None = None,
    queue: str | None = None,
    priority: int | None = None,
    countdown: float | None = None,
    eta: datetime | None = None,
) -> JobRef:
    """Admit one job. Raises :class:`InvalidJob` or :class:`BrokerUnavailable`."""
    job = prepare(task, args, kwargs, key=key, queue=queue, priority=priority)
    return _admit(task, [job], delay_of(countdown, eta))[0]


def enqueue_many(
    task: JobTask,
    calls: Iterable[Call | dict[str, Any]],
    *,
    queue: str | None = None,
    priority: int | None = None,
    countdown: float | None = None,
) -> list[JobRef]:
    """Admit a batch in one round trip; each job is deduplicated on its own key."""
    jobs = []
    for call in calls:
        spec = call if isinstance(call, Call) else Call(kwargs=dict(call))
        jobs.append(
            prepare(task, spec.args, spec.kwargs, key=spec.key, queue=queue, priority=priority)
        )
    return _admit(task, jobs, delay_of(countdown, None))


def _admit(task: JobTask, jobs: list[Job], delay: float) -> list[JobRef]:
    if not jobs:
        return []
    _ensure_safe_broker()
    settings = get_settings()
    window_ms = int(settings.dedup_window * 1000)
    if not settings.broker_is_redis:
        return [_admit_via_celery(task, job, window_ms, delay) for job in jobs]
    due = repr(time.time() + delay) if delay > 0 else "0"
    admit = resources.scripts().admit
    try:
        with resources.redis_client().pipeline(transaction=False) as pipe:
            for job in jobs:
                target = publisher.list_key(job.queue, job.priority)
                admit(
                    keys=[keys.dedup(job.key), keys.delayed() if delay > 0 else target],
                    args=[
                        job.id,
                        window_ms,
                        json.dumps(publisher.envelope(job, time_limit=task.time_limit)),
                        due,
                        target,
                        keys.wake(job.queue),
                    ],
                    client=pipe,
                )
            replies = pipe.execute()
    except publisher.REDIS_ERRORS as exc:
        raise BrokerUnavailable(f"broker unavailable, job not enqueued: {exc}") from exc
    return [
        JobRef(id=_text(reply), key=job.key, queue=job.queue, deduplicated=True)
        if reply
        else JobRef(id=job.id, key=job.key, queue=job.queue)
        for job, reply in zip(jobs, replies, strict=True)
    ]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _admit_via_celery(task: JobTask, job: Job, window_ms: int, delay: float) -> JobRef:
    client = resources.redis_client()
    try:
        if not client.set(keys.dedup(job.key), job.id, nx=True, px=window_ms):
            existing = client.get(keys.dedup(job.key))
            if existing:
                return JobRef(id=_text(existing), key=job.key, queue=job.queue, deduplicated=True)
        try:
            publisher.publish(task.app, [job], delay=delay)
        except BrokerUnavailable:
            client.delete(keys.dedup(job.key))
            raise
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BrokerUnavailable(f"Redis unavailable, job not enqueued: {exc}") from exc
    return JobRef(id=job.id, key=job.key, queue=job.queue)
