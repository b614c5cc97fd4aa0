"""Every exception the system raises, one meaning each. The docstring is the default message."""

from __future__ import annotations

from typing import Any


class JobsError(Exception):
    """A jobs-system error."""

    def __init__(self, message: str | None = None) -> None:
        """Use the class docstring when no message is given."""
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigurationError(JobsError):
    """The settings are invalid."""


class BrokerUnavailable(JobsError):
    """The broker (Redis) did not answer in time; the job was not enqueued."""


class UnsafeBroker(ConfigurationError):
    """The Redis server may evict queue keys (maxmemory-policy is not noeviction)."""


class InvalidJob(JobsError, ValueError):
    """The job's arguments or options are invalid."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        """``field`` names the offending argument or option."""
        super().__init__(message)
        self.field = field


class PermanentError(JobsError):
    """The job cannot succeed by retrying; it goes to the dead-letter store at once."""

    #: Machine-readable reason stored on the dead letter.
    reason = "permanent_error"

    def __init__(self, message: str | None = None, *, reason: str | None = None) -> None:
        """``reason`` overrides the class's machine-readable reason for this error."""
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class InvalidArguments(PermanentError):
    """The message's arguments do not bind to the task's signature."""

    reason = "invalid_args"


class SsrfBlocked(PermanentError):
    """The destination URL is not a public http(s) address (SSRF guard)."""

    reason = "ssrf_blocked"


class RowRejected(PermanentError):
    """The database refused the row; retrying the same values will not help."""

    reason = "row_rejected"


class Retry(JobsError):
    """Retry this job after ``delay`` seconds (spends an attempt)."""

    def __init__(self, delay: float | None = None, message: str | None = None) -> None:
        """``delay`` overrides the backoff policy (e.g. from a Retry-After header)."""
        super().__init__(message)
        self.delay = delay


class Defer(JobsError):
    """Run this job again after ``seconds`` without spending an attempt."""

    def __init__(self, seconds: float, reason: str) -> None:
        """``reason`` is machine-readable (``rate_limited``, ``claim_busy``, ...)."""
        super().__init__(f"deferred {seconds:.3f}s: {reason}")
        self.seconds = seconds
        self.reason = reason


class DeadLetterUnavailable(JobsError):
    """The dead-letter store (PostgreSQL) is unreachable; the job was kept, not dropped."""


class WorkerLostExhausted(PermanentError):
    """The job killed its worker process too many times."""

    reason = "worker_lost_exhausted"


class Settled(JobsError):
    """The job's outcome was decided before it ran (already done, or dead-lettered)."""


class QueueFull(JobsError):
    """The queue is over its high watermark; try again after ``retry_after`` seconds."""

    def __init__(self, queue: str, depth: int, limit: int, retry_after: float) -> None:
        """Name the queue, its depth, the limit and when to try again (HTTP 503 + Retry-After)."""
        super().__init__(
            f"queue {queue!r} is full: {depth} waiting (high watermark {limit}); "
            f"retry after {retry_after:.1f}s"
        )
        self.queue = queue
        self.depth = depth
        self.limit = limit
        self.retry_after = retry_after


class BatchQueueFull(QueueFull):
    """Part of an ``enqueue_many`` batch was refused: the queue is over its high watermark.

    ``accepted`` holds the refs of the jobs that were admitted (or deduplicated), in batch
    order; ``refused`` the positions of the refused calls in the batch. Resubmitting the whole
    batch later is safe: the accepted jobs come back deduplicated.
    """

    def __init__(self, full: QueueFull, accepted: list[Any], refused: list[int]) -> None:
        """Wrap the refusal of the batch's last refused job."""
        super().__init__(full.queue, full.depth, full.limit, full.retry_after)
        self.accepted = accepted
        self.refused = refused
        total = len(accepted) + len(refused)
        self.args = (f"{self.args[0]}; {len(accepted)} of {total} jobs of the batch accepted",)
        for note in getattr(full, "__notes__", ()):
            self.add_note(note)


class Throttled(Retry):
    """The downstream asked us to slow down (HTTP 429); its rate limit backs off."""

    def __init__(self, retry_after: float | None = None, message: str | None = None) -> None:
        """``retry_after`` seconds from the downstream's Retry-After header, when it sent one."""
        super().__init__(retry_after, message)
        self.retry_after = retry_after
