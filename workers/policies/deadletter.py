"""Dead-letter policy: whatever no other policy settled is stored durably in PostgreSQL.

If PostgreSQL is unreachable the job is NOT dropped: a copy carrying the pending dead letter is
put in the delayed store (the current message is acknowledged only after that succeeded), and
that copy retries the write later without running the task again.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import TYPE_CHECKING, ClassVar

import structlog

from workers import counters, deadletters, publisher, resources
from workers.errors import DeadLetterUnavailable, Settled
from workers.failpoints import failpoint
from workers.job import Outcome

if TYPE_CHECKING:
    from workers.job import Job
    from workers.policies import Execution

log = structlog.get_logger("jobs.deadletter")


def pending_record(job: Job) -> deadletters.DeadLetterRecord:
    """The dead letter a message carries, tolerant of fields another version wrote or omitted."""
    pending = job.pending_dead_letter if isinstance(job.pending_dead_letter, dict) else {}
    known = {f.name for f in fields(deadletters.DeadLetterRecord)}
    return deadletters.DeadLetterRecord(
        **{
            "job_id": job.id,
            "task_name": job.task,
            "queue": job.queue,
            "reason": "permanent_error",
            **{name: value for name, value in pending.items() if name in known},
        }
    )


class DeadLetter:
    """Store unsettled failures; deliver dead letters whose earlier write failed."""

    options: ClassVar[frozenset[str]] = frozenset()

    def before(self, job: Job, execution: Execution) -> None:
        """A message carrying a pending dead letter is written, never run."""
        if job.pending_dead_letter is None:
            return
        self._store(job, execution, pending_record(job))
        raise Settled

    def after_success(self, job: Job, execution: Execution) -> None:
        """Nothing to do."""

    def after_failure(self, job: Job, execution: Execution, exc: BaseException) -> None:
        """Dead-letter the job unless a later policy retried or deferred it."""
        if job.outcome is not None:
            return
        record = deadletters.from_exception(
            exc,
            job_id=job.id,
            task_name=job.task,
            queue=job.queue,
            reason=job.reason or getattr(exc, "reason", "permanent_error"),
            args=list(job.args),
            kwargs=job.kwargs,
            idempotency_key=job.key,
            priority=job.priority,
            attempts=job.attempt,
        )
        self._store(job, execution, record)

    @staticmethod
    def _store(job: Job, execution: Execution, record: deadletters.DeadLetterRecord) -> None:
        try:
            entry_id = deadletters.write(resources.engine(), record)
        except DeadLetterUnavailable:
            delay = execution.settings.dead_letter_retry_delay
            pending = job.next_publication()
            pending.pending_dead_letter = asdict(record)
            publisher.publish(execution.app, [pending], delay=delay)
            job.outcome = Outcome.DEFERRED
            log.error("dead_letter_store_unavailable", retry_in=delay, reason=record.reason)
            return
        failpoint("after_dead_letter")
        counters.incr(counters.DEAD_LETTERED, record.task_name)
        job.outcome = Outcome.DEAD
        job.reason = record.reason
        log.error("job_dead_lettered", dead_letter_id=entry_id, reason=record.reason)
