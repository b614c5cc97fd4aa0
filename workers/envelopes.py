"""Envelopes: one broker message carrying a batch of logical jobs of one task.

Celery spends ~670 µs of worker CPU per message; a no-op job costs far less than that. An
envelope amortises the message over up to ``envelope_size`` jobs. It is a Celery protocol-2
message of the registered task ``jobs.envelope`` (:mod:`workers.envelope_task`) whose kwargs
are ``{"task": <logical task>, "jobs": [<fragment>, ...]}``; a fragment is one job's
``{"id", "args", "kwargs", "key"}`` (plus ``attempt``/``run``/``dl`` when not the defaults).
Flower shows one task per envelope (``kwargsrepr`` names the task and the job count);
dead letters, replays, retries and deferrals are per job and travel as single-job messages.

Admission decides each job on its own (``admit.lua``: backpressure, dedup), so the producer
cannot know which jobs an envelope will hold. It therefore sends a *template* of the message
cut at two places, the job list and the job count, plus each job's fragment already escaped
for embedding in the message's JSON body string, and the script joins the admitted ones.
Escaping is per character, so the escaped fragments joined equal the escaped join. The body
is raw JSON (no ``body_encoding``), which kombu reads as it is.

Queue depth stays in logical jobs: an envelope of n jobs adds ``n - 1`` to the ``enveloped``
field of the queue's stats hash while it waits (admit/promote/restore add, fetch subtracts).
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

from workers.job import HEADER, Job, fields_problem
from workers.publisher import NO_CANVAS, task_message

if TYPE_CHECKING:
    from collections.abc import Iterator

#: The registered task that runs an envelope's jobs.
ENVELOPE_TASK = "jobs.envelope"
#: Message header holding the number of jobs in an envelope (a string, read by the Lua scripts).
COUNT_HEADER = "jobs_count"
#: Field of ``jobs:queue:<queue>:stats``: jobs waiting in envelopes beyond one per message.
ENVELOPED_FIELD = "enveloped"

_JOBS_MARK = "\x00J\x00"
_COUNT_MARK = "\x00N\x00"
#: How the marks look in ``json.dumps`` output (inside JSON strings).
_JOBS_SPLIT = json.dumps(_JOBS_MARK)[1:-1]
_COUNT_SPLIT = json.dumps(_COUNT_MARK)[1:-1]
_NO_CANVAS = json.dumps(NO_CANVAS)


def fragment(job: Job) -> str:
    """``job`` as an envelope fragment, escaped for the inside of a JSON string."""
    value: dict[str, Any] = {"id": job.id, "args": job.args, "kwargs": job.kwargs, "key": job.key}
    if job.attempt != 1:
        value["attempt"] = job.attempt
    if job.run != job.id:
        value["run"] = job.run
    if job.pending_dead_letter is not None:
        value["dl"] = job.pending_dead_letter
    return json.dumps(json.dumps(value))[1:-1]


def template(
    *,
    task: str,
    queue: str,
    priority: int | None,
    time_limit: float,
    soft_time_limit: float,
    ready_at: float,
    origin: str,
) -> list[str]:
    """A new envelope's message cut into 4 pieces: ``p0 JOBS p1 COUNT p2 COUNT p3``.

    Both limits are explicit: left out, Celery would apply the app's default soft limit (one
    job's) to the whole envelope.
    """
    envelope_id = str(uuid.uuid4())
    body = f'[[], {{"task": {json.dumps(task)}, "jobs": [{_JOBS_MARK}]}}, {_NO_CANVAS}]'
    message = task_message(
        task=ENVELOPE_TASK,
        task_id=envelope_id,
        queue=queue,
        priority=priority,
        body=body,
        body_encoding=None,
        retries=0,
        timelimit=[time_limit, soft_time_limit],
        argsrepr="()",
        kwargsrepr=f"{{'task': {task!r}, 'jobs': <{_COUNT_MARK} jobs>}}",
        headers={COUNT_HEADER: _COUNT_MARK, HEADER: {"ready_at": ready_at}},
        origin=origin,
    )
    head, rest = json.dumps(message).split(_JOBS_SPLIT)
    pieces = [head, *rest.split(_COUNT_SPLIT)]
    if len(pieces) != 4:  # noqa: PLR2004 - the layout admit.lua joins
        raise AssertionError(f"envelope template has {len(pieces)} pieces, not 4")
    return pieces


def waiting_jobs(listed: int, enveloped: Any) -> int:
    """Jobs waiting in a queue: its messages plus the stats hash's ``enveloped`` extra.

    A queue without messages holds no jobs: a count left behind by a purge is ignored here
    (and cleared by ``admit.lua``).
    """
    return listed + int(enveloped or 0) if listed else 0


def pack(sizes: list[int], *, max_jobs: int, max_bytes: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` ranges of consecutive jobs, at most ``max_jobs`` and ``max_bytes`` each.

    ``sizes`` are the jobs' fragment lengths; a job larger than ``max_bytes`` travels alone.
    """
    start, used = 0, 0
    for index, size in enumerate(sizes):
        if index > start and (index - start >= max_jobs or used + size > max_bytes):
            yield start, index
            start, used = index, 0
        used += size + 1
    if start < len(sizes):
        yield start, len(sizes)


#: Fragment field -> the types its value may have (absent = the default).
FRAGMENT_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "args": (list,),
    "kwargs": (dict,),
    "key": (str,),
    "attempt": (int,),
    "run": (str,),
    "dl": (dict,),
}
REQUIRED_FIELDS = ("id", "args", "kwargs", "key")


def fragment_problem(value: Any) -> str | None:
    """What is wrong with a received fragment (``None`` when it can run)."""
    if not isinstance(value, dict):
        return f"the job is a {type(value).__name__}, not an object"
    for name in REQUIRED_FIELDS:
        if name not in value:
            return f"the job has no {name!r}"
    return fields_problem(value, FRAGMENT_FIELDS, "job")


def job_of(value: dict[str, Any], *, task: str, queue: str, priority: int | None) -> Job:
    """The :class:`Job` of a fragment that passed :func:`fragment_problem`."""
    return Job(
        id=value["id"],
        task=task,
        key=value["key"],
        queue=queue,
        args=tuple(value["args"]),
        kwargs=value["kwargs"],
        attempt=value.get("attempt") or 1,
        run=value.get("run") or value["id"],
        priority=priority,
        pending_dead_letter=value.get("dl"),
    )
