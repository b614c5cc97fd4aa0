"""Admission: validate → backpressure → dedup → publish; behind ``jobs.enqueue`` and apply_async.

On Redis, backpressure, dedup and publish are one Lua script (``admit.lua``, one round trip, no
database work): a producer that dies midway leaves neither a lost job nor a dedup marker
without a job, and a job refused because its queue is full (:class:`QueueFull`) publishes
nothing and sets no dedup marker. ``enqueue_many`` sends a batch in one call per 500 jobs (one
round trip); each job is decided on its own (see :func:`enqueue_many`). ``on_full="wait"``
retries refused jobs with jittered backoff for a bounded time (:mod:`workers.backpressure`).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import redis

from workers import backpressure, counters, envelopes, keys, publisher, resources
from workers.backpressure import OnFull
from workers.canonical import check_json, derive_key
from workers.errors import BatchQueueFull, BrokerUnavailable, InvalidJob, QueueFull
from workers.job import HEADER, Job
from workers.policies.arguments import bind_arguments
from workers.queues import PRIORITY_RANGE, QUEUE_NAMES
from workers.resources import as_text
from workers.settings import get_settings

if TYPE_CHECKING:
    from collections.abc import Iterable

    from workers.settings import Settings
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
        bind_arguments(task.run, args, kwargs)
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
    job_id = str(uuid.uuid4())
    return Job(
        id=job_id,
        run=job_id,  # a first publication's run is its id (a retry gets a new one)
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


def check_on_full(on_full: str, wait_max: float | None) -> None:
    """Validate the ``on_full`` / ``wait_max`` options (errors name the option)."""
    if on_full not in backpressure.ON_FULL_CHOICES:
        raise InvalidJob(
            f"on_full must be one of {list(backpressure.ON_FULL_CHOICES)}, not {on_full!r}",
            field="on_full",
        )
    if wait_max is not None:
        if on_full != "wait":
            raise InvalidJob('wait_max applies only with on_full="wait"', field="wait_max")
        if not wait_max > 0:
            raise InvalidJob("wait_max must be > 0 seconds", field="wait_max")


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
    on_full: OnFull = "raise",
    wait_max: float | None = None,
) -> JobRef:
    """Admit one job.

    Raises :class:`InvalidJob`, :class:`BrokerUnavailable`, or :class:`QueueFull` when the
    queue is over its high watermark (or its oldest job over its max age): at once with
    ``on_full="raise"``; with ``on_full="wait"`` after retrying for up to ``wait_max`` seconds
    (default: the ``enqueue_wait_max`` setting). Delayed jobs (``countdown``/``eta``) are
    refused by a full queue too: they add work to the same queue.
    """
    check_on_full(on_full, wait_max)
    job = prepare(task, args, kwargs, key=key, queue=queue, priority=priority)
    return _admit(task, [job], delay_of(countdown, eta), on_full, wait_max, batch=False)[0]


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
    """Admit a batch in one round trip; each job is deduplicated on its own key.

    Each job is decided on its own, in batch order, so a batch that crosses the high
    watermark is admitted up to it and refused after it. If any job is refused (after the
    bounded wait with ``on_full="wait"``, which retries only the refused ones), nothing is
    returned: :class:`~workers.backpressure.BatchQueueFull` (a :class:`QueueFull`) is raised,
    carrying ``accepted`` (refs of the admitted jobs) and ``refused`` (positions in the batch).
    Resubmitting the whole batch later is safe: admitted jobs come back deduplicated.
    """
    check_on_full(on_full, wait_max)
    jobs = []
    for call in calls:
        spec = call if isinstance(call, Call) else Call(kwargs=dict(call))
        jobs.append(
            prepare(task, spec.args, spec.kwargs, key=spec.key, queue=queue, priority=priority)
        )
    return _admit(
        task,
        jobs,
        delay_of(countdown, None),
        on_full,
        wait_max,
        batch=True,
        envelope_size=task.envelope_size(),
    )


def _admit(
    task: JobTask,
    jobs: list[Job],
    delay: float,
    on_full: OnFull,
    wait_max: float | None,
    *,
    batch: bool,
    envelope_size: int = 1,
) -> list[JobRef]:
    """Admit ``jobs`` (one pipeline per attempt); with ``wait``, retry only the refused ones."""
    if not jobs:
        return []
    _ensure_safe_broker()
    settings = get_settings()
    window_ms = int(settings.dedup_window * 1000)
    if not settings.broker_is_redis:
        return [_admit_via_celery(task, job, window_ms, delay) for job in jobs]
    refs: list[JobRef | None] = [None] * len(jobs)
    pending = list(range(len(jobs)))
    deadline: float | None = None
    attempt = 0
    while True:
        now = time.time()
        batch_jobs = [jobs[i] for i in pending]
        replies = _admit_redis(
            task, batch_jobs, delay, window_ms=window_ms, now=now, envelope_size=envelope_size
        )
        refused, full = _decide(jobs, pending, replies, refs=refs, settings=settings, now=now)
        if full is None:
            return [ref for ref in refs if ref is not None]
        if on_full == "wait":
            if deadline is None:
                deadline = time.monotonic() + (wait_max or settings.enqueue_wait_max)
            remaining = deadline - time.monotonic()
            if remaining > 0:
                time.sleep(backpressure.wait_pause(attempt, remaining))
                attempt += 1
                pending = refused
                continue
        if not batch:
            raise full
        raise BatchQueueFull(full, [ref for ref in refs if ref is not None], refused)


def _decide(
    jobs: list[Job],
    pending: list[int],
    replies: list[Any],
    *,
    refs: list[JobRef | None],
    settings: Settings,
    now: float,
) -> tuple[list[int], QueueFull | None]:
    """Fill ``refs`` for admitted jobs; the positions refused and the last refusal, if any."""
    refused: list[int] = []
    full: QueueFull | None = None
    for index, reply in zip(pending, replies, strict=True):
        job = jobs[index]
        if isinstance(reply, list):
            full = backpressure.refusal(backpressure.limits_for(job.queue, settings), reply, now)
            refused.append(index)
        elif reply:
            refs[index] = JobRef(id=as_text(reply), key=job.key, queue=job.queue, deduplicated=True)
        else:
            refs[index] = JobRef(id=job.id, key=job.key, queue=job.queue)
    return refused, full


#: Jobs per ``admit.lua`` call: one call must not block Redis for more than a few ms.
ADMIT_CHUNK = 500


def _admit_redis(
    task: JobTask,
    jobs: list[Job],
    delay: float,
    *,
    window_ms: int,
    now: float,
    envelope_size: int = 1,
) -> list[Any]:
    """Run ``admit.lua`` over ``jobs`` in chunks; the raw replies, in order.

    Every batch is for one queue and priority (``enqueue_many`` takes them per batch). The
    queue's arguments go once per call and each job adds three (dedup key, id, message):
    packing ~24 arguments per job was most of a batch's producer time. With
    ``envelope_size`` > 1 each call is one envelope (:mod:`workers.envelopes`).
    """
    settings = get_settings()
    first = jobs[0]
    if any((job.queue, job.priority) != (first.queue, first.priority) for job in jobs):
        raise ValueError("one admit.lua call admits jobs of one queue and priority")
    limits = backpressure.limits_for(first.queue, settings)
    target = publisher.list_key(first.queue, first.priority)
    queue_keys: list[Any] = [
        keys.delayed() if delay > 0 else target,
        limits.full_key,
        limits.stats_key,
        *limits.list_keys,
    ]
    queue_args: list[Any] = [
        window_ms,
        repr(now + delay) if delay > 0 else "0",
        target,
        keys.wake(first.queue),
        limits.high,
        limits.low,
        repr(limits.max_age) if limits.max_age else "0",
        repr(now),
        backpressure.FULL_MARKER_TTL,
        keys.counters(),
        counters.field(counters.BACKPRESSURE_REJECTED, first.queue),
    ]
    if envelope_size > 1:
        calls = _envelope_calls(task, jobs, queue_args, ready_at=now + delay, size=envelope_size)
    else:
        calls = _message_calls(task, jobs, queue_args, ready_at=now + delay)
    admit = resources.scripts().admit
    try:
        if len(calls) == 1:  # a pipeline would add a SCRIPT EXISTS round trip
            replies = [admit(keys=queue_keys, args=calls[0])]
        else:
            with resources.redis_client().pipeline(transaction=False) as pipe:
                for args in calls:
                    admit(keys=queue_keys, args=args, client=pipe)
                replies = pipe.execute()
    except publisher.REDIS_ERRORS as exc:
        raise BrokerUnavailable(f"broker unavailable, job not enqueued: {exc}") from exc
    return [reply for chunk_replies in replies for reply in chunk_replies]


def _message_calls(
    task: JobTask, jobs: list[Job], queue_args: list[Any], *, ready_at: float
) -> list[list[Any]]:
    """``admit.lua`` arguments publishing one message per job, ``ADMIT_CHUNK`` jobs a call."""
    calls = []
    for start in range(0, len(jobs), ADMIT_CHUNK):
        args = [*queue_args, "m"]
        for job in jobs[start : start + ADMIT_CHUNK]:
            message = publisher.envelope(job, time_limit=task.time_limit)
            message["headers"][HEADER]["ready_at"] = ready_at
            args += [keys.dedup(job.key), job.id, json.dumps(message)]
        calls.append(args)
    return calls


def _envelope_calls(
    task: JobTask, jobs: list[Job], queue_args: list[Any], *, ready_at: float, size: int
) -> list[list[Any]]:
    """``admit.lua`` arguments publishing one envelope per call (size and bytes bounded)."""
    settings = get_settings()
    fragments = [envelopes.fragment(job) for job in jobs]
    per_job_limit = float(task.time_limit or settings.time_limit)
    first = jobs[0]
    calls = []
    for start, end in envelopes.pack(
        [len(text) for text in fragments], max_jobs=size, max_bytes=settings.envelope_bytes
    ):
        # Each job has its own soft limit and lease fence; the envelope's limits only catch
        # a run that outlives all of its jobs' limits together.
        jobs_limit = per_job_limit * (end - start)
        pieces = envelopes.template(
            task=task.name,
            queue=first.queue,
            priority=first.priority,
            time_limit=jobs_limit + settings.claim_lease_margin,
            soft_time_limit=jobs_limit + settings.claim_lease_margin / 2,
            ready_at=ready_at,
            origin=publisher.ORIGIN,
        )
        args = [*queue_args, "e", *pieces]
        for job, text in zip(jobs[start:end], fragments[start:end], strict=True):
            args += [keys.dedup(job.key), job.id, text]
        calls.append(args)
    return calls


def _admit_via_celery(task: JobTask, job: Job, window_ms: int, delay: float) -> JobRef:
    client = resources.redis_client()
    try:
        if not client.set(keys.dedup(job.key), job.id, nx=True, px=window_ms):
            existing = client.get(keys.dedup(job.key))
            if existing:
                return JobRef(id=as_text(existing), key=job.key, queue=job.queue, deduplicated=True)
        try:
            publisher.publish(task.app, [job], delay=delay)
        except BrokerUnavailable:
            client.delete(keys.dedup(job.key))
            raise
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BrokerUnavailable(f"Redis unavailable, job not enqueued: {exc}") from exc
    return JobRef(id=job.id, key=job.key, queue=job.queue)
