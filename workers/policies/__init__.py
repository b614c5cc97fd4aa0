"""Policies: small objects that run around every job, in ONE ordered tuple.

``before`` hooks run in tuple order; ``after_success`` / ``after_failure`` in reverse (an onion),
and only for policies whose ``before`` completed. A policy declares the task options it reads;
:func:`workers.task.job` rejects any option no policy declares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from workers.policies.arguments import Arguments
from workers.policies.breaker import Breaker
from workers.policies.deadletter import DeadLetter
from workers.policies.idempotency import Idempotency
from workers.policies.ratelimit import RateLimit
from workers.policies.retry import Retry

if TYPE_CHECKING:
    from celery import Celery

    from workers.envelope_run import EnvelopeRun
    from workers.job import Job
    from workers.settings import Settings


@dataclass(slots=True)
class Execution:
    """What the policies share while one job runs."""

    app: Celery
    settings: Settings
    options: dict[str, Any]
    time_limit: float
    func: Any = None
    token: str | None = None
    #: Seconds after which the body is stopped: its claim lease is about to end (``fence``).
    fence_after: float | None = None
    #: Seconds after which the body gets ``SoftTimeLimitExceeded`` (jobs in an envelope; a
    #: single-job message has Celery's own soft limit).
    soft_after: float | None = None
    #: The envelope this job travels in (claims and completions batched with its progress).
    envelope: EnvelopeRun | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Policy(Protocol):
    """One cross-cutting concern around job execution."""

    options: ClassVar[frozenset[str]]

    def before(self, job: Job, execution: Execution) -> None:
        """Runs before the task body; may raise ``Settled``, ``Defer`` or ``PermanentError``."""

    def after_success(self, job: Job, execution: Execution) -> None:
        """Runs after the body returned."""

    def after_failure(self, job: Job, execution: Execution, exc: BaseException) -> None:
        """Runs after the body (or a later policy's ``before``) raised; may set ``job.outcome``."""


# A policy may also define ``check_options(options)``: called by ``@job`` at declaration,
# raising ``InvalidJob`` (naming the option) for values it cannot use.


#: The order every job goes through: arguments bind → claim the key (skip if done) → breaker
#: closed? (else park until half-open) → take a rate-limit token (else park) → run. Parking
#: spends no attempt. The breaker comes before the limiter so a job for a dead destination
#: never burns a token. Retry is entered early (its ``before`` does nothing) so a transient
#: error in a later ``before`` (Redis blip while claiming) is retried, not dead-lettered.
#: after_* hooks run in reverse: RateLimit and Breaker record the outcome, the claim is
#: released, then Retry schedules the next attempt (the claim is free by then), and
#: DeadLetter stores whatever nobody else settled.
DEFAULT_POLICIES: tuple[Policy, ...] = (
    DeadLetter(),
    Arguments(),
    Retry(),
    Idempotency(),
    Breaker(),
    RateLimit(),
)


def declared_options(policies: tuple[Policy, ...] = DEFAULT_POLICIES) -> frozenset[str]:
    """Every task option some policy reads."""
    return frozenset().union(*(policy.options for policy in policies))
