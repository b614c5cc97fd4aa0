"""Test-only tasks for the circuit breaker (loaded via JOBS_EXTRA_TASK_MODULES).

``tests.breaker.deliver`` POSTs to a local receiver; its breaker is keyed by the URL's
``host:port`` (two receivers on 127.0.0.1 are two destinations). Each run is logged in
``test_runs`` with its attempt number; the side effect lands in ``test_effects`` on success.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from tests.tasks import effect, log_run
from workers.errors import PermanentError
from workers.job import Job
from workers.task import job


class ReceiverDown(Exception):
    """The receiver answered 5xx: a retryable failure that counts against its breaker."""


def destination(job: Job) -> str:
    """The breaker name of a delivery: the receiver's ``host:port``."""
    return urlsplit(str(job.kwargs["url"])).netloc


@job(
    name="tests.breaker.deliver",
    queue="default",
    time_limit=10,
    max_attempts=10,
    retry_base=0.2,
    retry_cap=0.5,
    breaker_key=destination,
)
def deliver(*, url: str, name: str) -> None:
    """POST ``name`` and its attempt to ``url``; 5xx is retryable, 4xx permanent."""
    attempt = log_run(name)
    response = httpx.post(url, json={"name": name, "attempt": attempt}, timeout=5)
    if response.status_code >= 500:
        raise ReceiverDown(f"{url} answered {response.status_code}")
    if response.status_code >= 400:
        raise PermanentError(f"{url} refused {name}: {response.status_code}")
    effect(name)
