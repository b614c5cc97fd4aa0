"""Tasks for the rate-limit tests (loaded with ``JOBS_EXTRA_TASK_MODULES``).

``deliver`` and ``tick`` send one HTTP request to a receiver the test runs on 127.0.0.1; the
request carries the job's attempt in ``X-Attempt`` so the receiver proves attempts are not
spent by parking. A 429 answer becomes ``Throttled(Retry-After)``.
"""

from __future__ import annotations

import httpx

from workers import resources
from workers.errors import Throttled
from workers.task import current_job, job

#: Counter incremented by every ``throttled_count`` job that ran.
THROTTLED_COUNTER = "flowtest:throttled_runs"


def send(url: str) -> None:
    """POST to ``url`` with the job's attempt; a 429 raises ``Throttled``."""
    response = httpx.post(url, headers={"X-Attempt": str(current_job().attempt)}, timeout=5)
    if response.status_code == 429:
        retry_after = response.headers.get("Retry-After")
        raise Throttled(float(retry_after) if retry_after else None, f"429 from {url}")
    response.raise_for_status()


@job(
    name="flow.deliver",
    queue="default",
    time_limit=20,
    rate="20/s",
    rate_key=lambda j: j.kwargs["host"],
    max_attempts=3,
)
def deliver(*, url: str, host: str) -> None:
    """Deliver to ``url``; limited to 20/s per ``host`` across the cluster."""
    send(url)


@job(name="flow.tick", queue="default", time_limit=20, rate="4/s")
def tick(*, url: str, n: int) -> None:
    """Send one request; limited to 4/s (changed at run time by the CLI test)."""
    send(url)


@job(name="flow.throttled_count", queue="default", time_limit=20, rate="2/s")
def throttled_count(*, n: int) -> None:
    """Count the run; limited to 2/s so most of a big batch waits parked."""
    resources.redis_client().incr(THROTTLED_COUNTER)
