"""A stock Celery app (kombu's own Redis transport, none of our code) for the compatibility test.

It registers a plain task under the wire name of ``tests.record`` that records what it received
in Redis, so a test can check that a stock worker consumes the single-job messages we publish.
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery import Celery, Task

URL = os.environ["JOBS_REDIS_URL"]
#: Where the stock task records each message it ran.
RAN = "stock:ran"

app = Celery("stock", broker=URL)
app.conf.update(
    accept_content=["json"],
    task_serializer="json",
    task_ignore_result=True,
    task_default_queue="default",
    worker_hijack_root_logger=False,
)
client = redis.Redis.from_url(URL)


@app.task(name="tests.record", bind=True)
def record(self: Task, **kwargs: Any) -> None:
    """Record the message: its kwargs, id, our ``jobs`` header and Flower's argsrepr."""
    request = self.request
    client.rpush(
        RAN,
        json.dumps(
            {
                "kwargs": kwargs,
                "id": request.id,
                "jobs": getattr(request, "jobs", None),
                "kwargsrepr": request.kwargsrepr,
            }
        ),
    )
