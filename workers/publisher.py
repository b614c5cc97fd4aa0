"""Build Celery protocol-2 messages for jobs and publish them.

On a Redis broker we write the kombu envelope ourselves (one pipeline per batch; dedup and
publish fused in ``admit.lua``); a stock Celery worker consumes these messages unchanged. On
any other broker (RabbitMQ) the message goes through Celery's producer.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any

import redis

from workers import resources
from workers.errors import BrokerUnavailable
from workers.job import HEADER, Job
from workers.redaction import safe_repr
from workers.settings import get_settings
from workers.transport import PRIORITY_SEP, put_commands

if TYPE_CHECKING:
    from celery import Celery

ORIGIN = f"{os.getpid()}@{socket.gethostname()}"
#: kombu's default Redis priority steps; a job's priority maps onto one of these sub-queues.
PRIORITY_STEPS = (0, 3, 6, 9)

REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)


def list_key(queue: str, priority: int | None) -> str:
    """The Redis list holding ``queue``'s messages of this priority (kombu's layout)."""
    step = 0
    for candidate in PRIORITY_STEPS:
        if (priority or 0) >= candidate:
            step = candidate
    return f"{queue}{PRIORITY_SEP}{step}" if step else queue


#: The third element of a protocol-2 body: no callbacks, errbacks or canvas.
NO_CANVAS: dict[str, None] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def envelope(job: Job, *, time_limit: float | None = None) -> dict[str, Any]:
    """The kombu envelope of ``job`` exactly as Celery's ``apply_async`` would write it."""
    body = json.dumps([list(job.args), job.kwargs, NO_CANVAS])
    return task_message(
        task=job.task,
        task_id=job.id,
        queue=job.queue,
        priority=job.priority,
        body=base64.b64encode(body.encode()).decode(),
        body_encoding="base64",
        retries=job.attempt - 1,
        timelimit=[time_limit, None],
        argsrepr=safe_repr(job.args),
        kwargsrepr=safe_repr(job.kwargs),
        headers={HEADER: job.header()},
    )


def task_message(
    *,
    task: str,
    task_id: str,
    queue: str,
    priority: int | None,
    body: str,
    body_encoding: str | None,
    retries: int,
    timelimit: list[float | None],
    argsrepr: str,
    kwargsrepr: str,
    headers: dict[str, Any],
    origin: str = ORIGIN,
) -> dict[str, Any]:
    """A Celery protocol-2 message in kombu's Redis envelope; ``headers`` are added last.

    The one place the layout lives: single jobs (:func:`envelope`) and envelope templates
    (:func:`workers.envelopes.template`) fill it in.
    """
    properties: dict[str, Any] = {
        "correlation_id": task_id,
        "reply_to": "",
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": priority or 0,
    }
    if body_encoding is not None:
        properties["body_encoding"] = body_encoding
    properties["delivery_tag"] = str(uuid.uuid4())
    return {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": retries,
            "timelimit": timelimit,
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": argsrepr,
            "kwargsrepr": kwargsrepr,
            "origin": origin,
            "ignore_result": True,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
            **headers,
        },
        "properties": properties,
    }


def publish(app: Celery, jobs: list[Job], *, delay: float = 0.0) -> None:
    """Publish jobs (retries, deferrals, replays): no dedup, optionally ``delay`` seconds later.

    Raises :class:`BrokerUnavailable` when the broker does not answer.
    """
    if not jobs:
        return
    if not get_settings().broker_is_redis:
        _publish_via_celery(app, jobs, delay=delay)
        return
    due = time.time() + delay if delay > 0 else 0.0
    try:
        with resources.redis_client().pipeline(transaction=False) as pipe:
            for job in jobs:
                key = list_key(job.queue, job.priority)
                for name, args in put_commands(key, job.queue, json.dumps(envelope(job)), due):
                    getattr(pipe, name)(*args)
            pipe.execute()
    except REDIS_ERRORS as exc:
        raise BrokerUnavailable(f"broker unavailable while publishing: {exc}") from exc


def _publish_via_celery(app: Celery, jobs: list[Job], *, delay: float) -> None:
    from kombu.exceptions import OperationalError  # noqa: PLC0415

    try:
        for job in jobs:
            app.tasks[job.task].apply_async(
                job.args,
                job.kwargs,
                task_id=job.id,
                queue=job.queue,
                priority=job.priority,
                countdown=delay or None,
                headers={HEADER: job.header()},
                argsrepr=safe_repr(job.args),
                kwargsrepr=safe_repr(job.kwargs),
                _jobs_internal=True,
            )
    except OperationalError as exc:
        raise BrokerUnavailable(f"broker unavailable while publishing: {exc}") from exc
