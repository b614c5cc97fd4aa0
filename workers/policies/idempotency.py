"""Idempotency policy: claim the job's key before running, mark it done after.

- already done → the job is skipped and acknowledged (log line + counter);
- claimed by a live run elsewhere → deferred until that claim's lease ends (no attempt spent);
- this attempt already started ``worker_lost_max`` times (each start died with its worker)
  → dead-lettered as ``worker_lost_exhausted``.
The claim's lease is the task's time limit plus a margin, so it cannot expire while the job
legitimately runs (the hard time limit kills it first).
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import TYPE_CHECKING, ClassVar

import structlog

from workers import keys, resources
from workers.errors import Defer, Settled, WorkerLostExhausted
from workers.job import Outcome

if TYPE_CHECKING:
    from workers.job import Job
    from workers.policies import Execution

log = structlog.get_logger("jobs.idempotency")

#: How long the per-attempt start counter is kept (seconds).
STARTS_RETENTION = 7 * 86400


HOSTNAME = socket.gethostname()


def owner_prefix(pid: int | None = None) -> str:
    """The claim-owner prefix of a process: ``<host>:<pid>:``."""
    return f"{HOSTNAME}:{pid or os.getpid()}:"


class Idempotency:
    """Claim → run → mark done; release the claim on failure."""

    options: ClassVar[frozenset[str]] = frozenset()

    def before(self, job: Job, execution: Execution) -> None:
        """Claim ``job.key`` or settle/defer the job (see module docstring)."""
        token = f"{owner_prefix()}{uuid.uuid4().hex[:12]}"
        lease_ms = int((execution.time_limit + execution.settings.claim_lease_margin) * 1000)
        state, number = resources.scripts().claim(
            keys=[keys.done(job.key), keys.claim(job.key), keys.starts(job.run)],
            args=[token, lease_ms, STARTS_RETENTION],
        )
        state = state.decode() if isinstance(state, bytes) else state
        if state == "done":
            job.outcome = Outcome.SKIPPED
            resources.redis_client().incr(keys.counter("duplicates_skipped"))
            log.info("job_skipped_already_done")
            raise Settled
        if state == "busy":
            raise Defer(max(int(number), 100) / 1000, "claim_busy")
        if int(number) > execution.settings.worker_lost_max:
            self._release(job, token)
            raise WorkerLostExhausted(
                f"attempt {job.attempt} started {int(number) - 1} times and each run died with "
                "its worker process"
            )
        execution.token = token

    def after_success(self, job: Job, execution: Execution) -> None:
        """Mark the key done (kept ``done_retention`` seconds) and drop the claim."""
        resources.scripts().complete(
            keys=[keys.done(job.key), keys.claim(job.key)],
            args=[execution.token or "", int(execution.settings.done_retention)],
        )

    def after_failure(self, job: Job, execution: Execution, exc: BaseException) -> None:  # noqa: ARG002
        """Release our claim so a retry or replay can claim it."""
        if execution.token:
            self._release(job, execution.token)

    @staticmethod
    def _release(job: Job, token: str) -> None:
        resources.scripts().release(keys=[keys.claim(job.key)], args=[token, "exact"])


def release_claims_of_process(key: str, pid: int) -> None:
    """Drop ``key``'s claim if a (dead) process ``pid`` on this host holds it."""
    resources.scripts().release(keys=[keys.claim(key)], args=[owner_prefix(pid), "prefix"])
