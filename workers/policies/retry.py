"""Retry policy: classify the error; reschedule retryable ones with backoff and full jitter.

``PermanentError`` (and subclasses) are never retried. Anything else is retried until the
task's ``max_attempts``; delays are ``uniform(0, min(cap, base * 2**(attempt-1)))`` unless the
error carries its own (``Retry(delay=...)``, e.g. from Retry-After). Retries go through the
delayed store, never as ETA messages held by a worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import structlog

from workers import publisher
from workers.backoff import full_jitter
from workers.errors import PermanentError
from workers.errors import Retry as RetryRequest
from workers.job import Outcome

if TYPE_CHECKING:
    from workers.job import Job
    from workers.policies import Execution

log = structlog.get_logger("jobs.retry")


class Retry:
    """Decide retry vs. dead letter after a failure."""

    options: ClassVar[frozenset[str]] = frozenset({"max_attempts", "retry_base", "retry_cap"})

    def before(self, job: Job, execution: Execution) -> None:
        """Nothing to do."""

    def after_success(self, job: Job, execution: Execution) -> None:
        """Nothing to do."""

    def after_failure(self, job: Job, execution: Execution, exc: BaseException) -> None:
        """Schedule the next attempt, or leave the job for the dead-letter policy."""
        if job.outcome is not None:
            return
        if isinstance(exc, PermanentError):
            job.reason = exc.reason
            return
        options = execution.options
        if job.attempt >= int(options["max_attempts"]):
            job.reason = "exhausted"
            return
        delay = exc.delay if isinstance(exc, RetryRequest) and exc.delay is not None else None
        if delay is None:
            delay = full_jitter(
                job.attempt, base=float(options["retry_base"]), cap=float(options["retry_cap"])
            )
        publisher.publish(
            execution.app, [job.next_publication(attempt=job.attempt + 1)], delay=delay
        )
        job.outcome = Outcome.RETRIED
        log.warning("job_retry_scheduled", delay=round(delay, 3), error=type(exc).__name__)
