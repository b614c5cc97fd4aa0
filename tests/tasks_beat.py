"""Tasks for the beat tests (loaded with ``JOBS_EXTRA_TASK_MODULES``).

``beattest.tick`` records each run (entry, idempotency key, time) in a Redis list, so the test
sees every tick that reached a worker and the key it was fired with.
"""

from __future__ import annotations

import json
import time

from workers import resources
from workers.task import current_key, job

#: Redis list of the ticks that ran: JSON {"entry", "key", "at"}.
TICKS = "beattest:ticks"


@job(name="beattest.tick", queue="default", time_limit=20)
def tick(*, entry: str) -> None:
    """Record one run of beat entry ``entry`` with its tick key."""
    record = {"entry": entry, "key": current_key(), "at": time.time()}
    resources.redis_client().rpush(TICKS, json.dumps(record))
