"""Rate-limit policy: cluster-wide limits shared by every worker, adaptive to a downstream's 429.

Options (per task):

- ``rate``: ``"20/s"``, ``"100/m"``, ``"5/h"``: jobs of this task (or of each key) per unit,
  across all workers and hosts;
- ``burst``: jobs allowed back to back (default 1);
- ``rate_key``: ``Job -> str | None``, e.g. ``lambda job: job.kwargs["host"]``: one limit per
  key, named ``<task>:<key>`` (``None`` falls back to the task-wide limit ``<task>``).

A job without a slot is parked in the delayed store until the exact time of the slot reserved
for it: it holds no worker slot and spends no attempt. A ``Throttled`` error raised by the task
(the downstream said 429) halves the limit (``throttle_decrease``) and, with a Retry-After,
admits nothing on it until then; the rate then recovers by ``throttle_recovery`` of itself per
quiet second. Run-time overrides (``jobctl limits set``) apply on the next job, no restart.
A task without ``rate`` makes no Redis call unless a cached (≤ 1 s old) view of the overrides
says one concerns it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import structlog

from workers import counters, ratelimits, resources
from workers.errors import ConfigurationError, Defer, InvalidJob, Throttled

if TYPE_CHECKING:
    from collections.abc import Callable

    from workers.job import Job
    from workers.policies import Execution

log = structlog.get_logger("jobs.ratelimit")

#: ``Execution.extra`` entry holding the limit name a job took its slot from.
EXTRA = "rate_limit"


class RateLimit:
    """Take a slot before running; park the job until its slot when there is none."""

    options: ClassVar[frozenset[str]] = frozenset({"rate", "burst", "rate_key"})

    def __init__(self) -> None:
        """One cached view of the override names per policy instance (per process)."""
        self.overrides = ratelimits.OverrideNames()

    def check_options(self, options: dict[str, object]) -> None:
        """At declaration: ``rate``/``burst`` must parse (errors name the option)."""
        spec = options.get("rate")
        if spec is not None:
            burst = options.get("burst")
            ratelimits.parse_rate(spec, burst=burst if isinstance(burst, int) else None)  # type: ignore[arg-type]
            if burst is not None and not isinstance(burst, int):
                raise InvalidJob(f"burst: must be an integer, got {burst!r}", field="burst")
        elif "burst" in options:
            raise InvalidJob("burst: only meaningful together with rate", field="burst")

    def before(self, job: Job, execution: Execution) -> None:
        """Take a slot of the job's limit, or raise ``Defer(wait, "rate_limited")``."""
        options = execution.options
        spec = options.get("rate")
        if spec is None and not self.overrides.applies(job.task, resources.redis_client):
            return
        try:
            declared = ratelimits.declared_rate(spec, options.get("burst")) if spec else None
        except InvalidJob as exc:
            raise ConfigurationError(f"task {job.task!r}: {exc}") from None
        name = ratelimits.limit_name(job.task, self._key(job, options.get("rate_key")))
        wait = ratelimits.acquire(
            resources.scripts(),
            name,
            declared=declared,
            job_id=job.id,
            recovery=execution.settings.throttle_recovery,
        )
        if wait > 0:
            counters.incr(counters.RATE_LIMITED, name)
            raise Defer(wait, "rate_limited")
        execution.extra[EXTRA] = name

    @staticmethod
    def _key(job: Job, rate_key: Callable[[Job], str | None] | None) -> str | None:
        if rate_key is None:
            return None
        key = rate_key(job)
        return None if key is None else str(key)

    def after_success(self, job: Job, execution: Execution) -> None:
        """Nothing to do: the slot was spent when it was taken."""

    def after_failure(self, job: Job, execution: Execution, exc: BaseException) -> None:  # noqa: ARG002
        """On ``Throttled`` (429): back the job's limit off and block it for Retry-After."""
        name = execution.extra.get(EXTRA)
        if not isinstance(exc, Throttled) or name is None:
            return
        settings = execution.settings
        factor, until = ratelimits.throttle(
            resources.scripts(),
            name,
            retry_after=exc.retry_after,
            decrease=settings.throttle_decrease,
            recovery=settings.throttle_recovery,
        )
        log.warning(
            "rate_limit_throttled",
            limit=name,
            factor=round(factor, 4),
            retry_after=exc.retry_after,
            blocked_until=until,
        )
