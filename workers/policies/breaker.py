"""Circuit-breaker policy: no calls to a destination whose breaker is open.

A task opts in with ``breaker_key``, a function of the job naming its destination::

    @job(name="webhooks.deliver", queue="webhooks",
         breaker_key=lambda job: urlsplit(job.kwargs["url"]).hostname)

- open → the job is parked in the delayed store until the half-open time (``Defer``: no
  attempt spent, no call made); half-open with every probe slot taken → parked briefly;
- the body returned → a success; it raised a retryable error → a failure (counted whether or not
  Retry rescheduled it); ``PermanentError``, ``Throttled`` and ``Defer`` count for nothing
  (see :func:`workers.breakers.classify`).

Tasks without ``breaker_key`` (or whose key function returns ``None``) make no Redis call.
Breakers are advisory: when Redis does not answer, the job runs (fail open) and a lost result is
only logged, so a breaker can never make a job run twice or lose its outcome.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import redis
import structlog

from workers import breakers, counters
from workers.errors import Defer, PermanentError

if TYPE_CHECKING:
    from workers.job import Job
    from workers.policies import Execution

log = structlog.get_logger("jobs.breaker")

#: ``Execution.extra`` slot holding the permit of the running job's call.
PERMIT = "breaker_permit"


class Breaker:
    """Skip calls to a destination whose breaker is open; park the job until half-open."""

    options: ClassVar[frozenset[str]] = frozenset({"breaker_key"})

    def before(self, job: Job, execution: Execution) -> None:
        """Ask the destination's breaker; raise ``Defer`` while it refuses calls."""
        name = self._destination(job, execution)
        if name is None:
            return
        store = breakers.Breakers.from_settings(execution.settings)
        try:
            permit = store.allow(name, lease=self._lease(execution))
        except redis.RedisError as exc:
            log.warning("breaker_unavailable", destination=name, error=type(exc).__name__)
            return
        if not permit.allowed:
            counters.incr(counters.BREAKER_PARKED, name)
            reason = "breaker_open" if permit.state is breakers.State.OPEN else "breaker_half_open"
            raise Defer(permit.park_for(store.thresholds), reason)
        if permit.probe:
            log.info("breaker_probe", destination=name)
        execution.extra[PERMIT] = permit

    def after_success(self, job: Job, execution: Execution) -> None:  # noqa: ARG002
        """Count a success (a half-open probe's success closes the breaker)."""
        self._record(execution, breakers.Result.SUCCESS)

    def after_failure(self, job: Job, execution: Execution, exc: BaseException) -> None:  # noqa: ARG002
        """Count a retryable failure; a neutral result only gives back a probe slot."""
        self._record(execution, breakers.classify(exc))

    @staticmethod
    def _destination(job: Job, execution: Execution) -> str | None:
        key_of = execution.options.get("breaker_key")
        if key_of is None:
            return None
        try:
            name = key_of(job)
        except Exception as exc:
            raise PermanentError(
                f"breaker_key of {job.task} failed on this job: {type(exc).__name__}: {exc}"
            ) from exc
        if name is None or name == "":
            return None
        if not isinstance(name, str):
            raise PermanentError(
                f"breaker_key of {job.task} returned {type(name).__name__}, expected str or None"
            )
        return name

    @staticmethod
    def _lease(execution: Execution) -> float:
        return execution.time_limit + execution.settings.claim_lease_margin

    def _record(self, execution: Execution, result: breakers.Result) -> None:
        permit: breakers.Permit | None = execution.extra.pop(PERMIT, None)
        if permit is None or (result is breakers.Result.NEUTRAL and not permit.probe):
            return
        store = breakers.Breakers.from_settings(execution.settings)
        try:
            state = store.record(permit, result, lease=self._lease(execution))
        except redis.RedisError as exc:
            log.warning("breaker_result_lost", destination=permit.name, error=type(exc).__name__)
            return
        if state is not permit.state:
            log.info("breaker_state_changed", destination=permit.name, result=result, state=state)
