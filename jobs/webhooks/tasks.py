"""The delivery task: a thin adapter from a message to :func:`jobs.webhooks.delivery.deliver`.

Its message carries ids and the destination host, never a secret or the payload::

    {"event_id": "msg_...", "endpoint_id": 7, "host": "hooks.example.com:443"}

Per destination host: a circuit breaker (an open one parks jobs in the delayed store without
spending attempts or worker slots) and a cluster-wide rate limit that halves on a 429.
"""

from __future__ import annotations

from typing import Any

from jobs.webhooks.delivery import AttemptContext, deliver
from workers.job import Job
from workers.settings import get_settings
from workers.task import current_job, job

_settings = get_settings()

#: Attempts of one delivery: the first, then one per entry of the retry schedule.
MAX_ATTEMPTS = len(_settings.webhook_retry_schedule) + 1


def destination(job: Job) -> str | None:
    """The breaker and rate-limit key of a delivery: its ``host[:port]``."""
    host = job.kwargs.get("host")
    return host if isinstance(host, str) and host else None


def _host_limit() -> dict[str, Any]:
    if not _settings.webhook_host_rate:
        return {}
    return {
        "rate": _settings.webhook_host_rate,
        "burst": _settings.webhook_host_burst,
        "rate_key": destination,
    }


@job(
    name="webhooks.deliver",
    queue="webhooks",
    # One attempt takes at most webhook_timeout; the margin covers the database round trips.
    time_limit=max(60.0, 3 * _settings.webhook_timeout),
    max_attempts=MAX_ATTEMPTS,
    breaker_key=destination,
    # One slow receiver must not hold up the deliveries behind it: one message per delivery.
    envelope_size=1,
    **_host_limit(),
)
def deliver_webhook(*, event_id: str, endpoint_id: int, host: str) -> str:  # noqa: ARG001 - host keys the breaker and the limit
    """Deliver one event to one endpoint (one attempt per run; retries on the schedule)."""
    current = current_job()
    status = deliver(
        event_id=event_id,
        endpoint_id=endpoint_id,
        context=AttemptContext(
            job_id=current.id,
            attempt=current.attempt,
            max_attempts=int(deliver_webhook.resolved_options()["max_attempts"]),
        ),
    )
    return status.value
