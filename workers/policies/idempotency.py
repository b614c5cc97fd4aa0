"""Idempotency policy: claim the job's key before running, mark it done after.

- already done → the job is skipped and acknowledged (log line + counter);
- claimed by a live run elsewhere → deferred until that claim's lease ends (no attempt spent);
- this attempt already started ``worker_lost_max`` times (each start died with its worker)
  → dead-lettered as ``worker_lost_exhausted``.
The claim's lease is the task's time limit plus a margin, so it cannot expire while the job
legitimately runs (the hard time limit kills it first); a body still running halfway through
the margin was frozen, and the lease fence (``workers.fence``) stops it.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, ClassVar, NoReturn

import structlog

from workers import keys, resources
from workers.envelope_run import CLAIMED, DONE
from workers.errors import Defer, Settled, WorkerLostExhausted
from workers.job import Outcome
from workers.owners import STARTS_RETENTION, owner_prefix

if TYPE_CHECKING:
    from workers.job import Job
    from workers.policies import Execution

log = structlog.get_logger("jobs.idempotency")


class Idempotency:
    """Claim → run → mark done; release the claim on failure."""

    options: ClassVar[frozenset[str]] = frozenset()

    def before(self, job: Job, execution: Execution) -> None:
        """Claim ``job.key`` or settle/defer the job (see module docstring)."""
        lease_ms = int((execution.time_limit + execution.settings.claim_lease_margin) * 1000)
        if execution.envelope is not None:
            self._claim_in_envelope(job, execution, lease_ms)
            return
        token = f"{owner_prefix()}{uuid.uuid4().hex[:12]}"
        state, number = resources.scripts().claim(
            keys=[keys.done(job.key), keys.claim(job.key), keys.starts(job.run)],
            args=[token, lease_ms, STARTS_RETENTION],
        )
        state = state.decode() if isinstance(state, bytes) else state
        if state == "done":
            self._skip_as_done(job)
        if state == "busy":
            raise self._busy(int(number))
        if int(number) > execution.settings.worker_lost_max:
            self._release(job, token)
            raise WorkerLostExhausted(
                f"attempt {job.attempt} started {int(number) - 1} times and each run died with "
                "its worker process"
            )
        execution.token = token
        # Halfway through the margin: after the hard time limit, before another run may claim.
        execution.fence_after = lease_ms / 1000 - execution.settings.claim_lease_margin / 2

    def _claim_in_envelope(self, job: Job, execution: Execution, lease_ms: int) -> None:
        """The same decisions from the envelope run's batched claim (``workers.envelope_run``)."""
        run = execution.envelope
        assert run is not None
        state, fence_after = run.claim(lease_ms)
        if run.exhausted():  # its claim goes with the envelope's others when the run ends
            raise WorkerLostExhausted(
                f"attempt {job.attempt} was the running job of its envelope when its worker "
                f"process died {run.deaths} times"
            )
        if state == DONE:
            self._skip_as_done(job)
        if state != CLAIMED:
            raise self._busy(state)
        execution.fence_after = fence_after

    def after_success(self, job: Job, execution: Execution) -> None:
        """Mark the key done (kept ``done_retention`` seconds) and drop the claim.

        In an envelope this is written with the next job's claim (one round trip per job).
        """
        if execution.envelope is not None:
            execution.envelope.completed(job)
            return
        resources.scripts().complete(
            keys=[keys.done(job.key), keys.claim(job.key)],
            args=[execution.token or "", int(execution.settings.done_retention)],
        )

    def after_failure(self, job: Job, execution: Execution, exc: BaseException) -> None:  # noqa: ARG002
        """Release our claim so a retry or replay can claim it."""
        if execution.envelope is not None:
            execution.envelope.release(job)
        elif execution.token:
            self._release(job, execution.token)

    @staticmethod
    def _skip_as_done(job: Job) -> NoReturn:
        """The key is done already: an idempotent no-op (counted, logged)."""
        job.outcome = Outcome.SKIPPED
        resources.redis_client().incr(keys.counter("duplicates_skipped"))
        log.info("job_skipped_already_done")
        raise Settled

    @staticmethod
    def _busy(ttl_ms: int) -> Defer:
        """Another run holds the claim: come back when its lease ends (no attempt spent)."""
        return Defer(max(ttl_ms, 100) / 1000, "claim_busy")

    @staticmethod
    def _release(job: Job, token: str) -> None:
        resources.scripts().release(keys=[keys.claim(job.key)], args=[token, "exact"])


def release_claims_of_process(job_keys: list[str], pid: int) -> None:
    """Drop the claims of ``job_keys`` that a (dead) process ``pid`` on this host holds."""
    release = resources.scripts().release
    with resources.redis_client().pipeline(transaction=False) as pipe:
        for key in job_keys:
            release(keys=[keys.claim(key)], args=[owner_prefix(pid), "prefix"], client=pipe)
        pipe.execute()
