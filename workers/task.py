"""``JobTask``: the one Celery base class; it runs every job through the policy chain.

A task body never sees Celery's retry/ack machinery: the runner turns its result or exception
into one durable outcome (done, skipped, retried, deferred, dead-lettered) and returns
normally, so Celery acknowledges the message only after that outcome is stored. If the outcome
cannot be stored (broker down), the message is rejected back to its queue instead.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import structlog
from celery import Task
from celery.exceptions import Reject

from workers import publisher
from workers.canonical import derive_key
from workers.errors import ConfigurationError, Defer, InvalidJob, Settled
from workers.failpoints import failpoint
from workers.fence import LeaseExpired, lease_fence, soft_limit_held
from workers.job import HEADER, Job, Outcome
from workers.policies import DEFAULT_POLICIES, Execution, Policy, declared_options
from workers.redaction import redact_text
from workers.settings import get_settings

if TYPE_CHECKING:
    from celery.result import AsyncResult

    from workers.envelope_run import EnvelopeRun

P = ParamSpec("P")
R = TypeVar("R")

log = structlog.get_logger("jobs.task")

_current_job: ContextVar[Job | None] = ContextVar("current_job", default=None)


def current_job() -> Job:
    """The job being run by this worker thread (its key, attempt, id...)."""
    job = _current_job.get()
    if job is None:
        raise RuntimeError("not running inside a job (current_job() is only set by the worker)")
    return job


def current_key() -> str:
    """The idempotency key of the job being run: use it to gate side effects (UNIQUE column)."""
    return current_job().key


#: ``apply_async`` options admission understands; anything else is refused, never ignored.
ADMISSION_OPTIONS = frozenset(
    {"key", "queue", "priority", "countdown", "eta", "on_full", "wait_max"}
)

#: Options the decorator itself understands (the rest must be declared by a policy).
TASK_OPTIONS = frozenset({"name", "queue", "time_limit", "priority", "envelope_size"})

#: A job's soft time limit as a fraction of its hard limit.
SOFT_LIMIT_RATIO = 0.9


class JobTask(Task):  # type: ignore[misc]
    """Base class of every job: idempotent execution, retries, dead letters."""

    Request = "workers.request:JobRequest"
    #: Policy options of this task (defaults filled in by :func:`job`).
    policy_options: dict[str, Any] = {}  # noqa: RUF012 - overridden per task class
    policies: tuple[Policy, ...] = DEFAULT_POLICIES
    default_priority: int | None = None
    #: ``@job(envelope_size=...)``; ``None`` = the ``envelope_size`` setting.
    policy_options_envelope: int | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the body through the policy chain (a direct call just runs the body)."""
        request = self.request
        if request.called_directly:
            return self.run(*args, **kwargs)
        delivery = request.delivery_info or {}
        job = Job.from_header(
            getattr(request, HEADER, None),
            job_id=request.id,
            task=self.name,
            queue=delivery.get("routing_key") or self.queue or "default",
            args=tuple(args),
            kwargs=dict(kwargs),
            priority=delivery.get("priority"),
            fallback_key=lambda: derive_key(self.name, args, kwargs),
        )
        self.execute(job)
        return None

    def execute(self, job: Job, *, envelope: EnvelopeRun | None = None) -> Outcome:
        """Run ``job`` through the policy chain; raise ``Reject`` when no outcome was stored.

        In an envelope the job gets its own soft time limit (Celery's applies to the
        envelope), and its claim and completion go through the envelope's progress.
        """
        settings = get_settings()
        time_limit = float(self.time_limit or settings.time_limit)
        execution = Execution(
            app=self.app,
            settings=settings,
            options=self.resolved_options(),
            time_limit=time_limit,
            func=self.run,
            envelope=envelope,
            soft_after=time_limit * SOFT_LIMIT_RATIO if envelope is not None else None,
        )
        structlog.contextvars.bind_contextvars(
            task_id=job.id, task=job.task, attempt=job.attempt, key=job.key
        )
        token = _current_job.set(job)
        try:
            return run_job(self.policies, job, execution, lambda: self.run(*job.args, **job.kwargs))
        except LeaseExpired:
            # Another run may own the job now: store nothing. If the message is still ours it
            # goes back to its queue; if it was recovered meanwhile, requeueing is a no-op.
            log.warning("job_lease_expired", fence_after=execution.fence_after)
            raise Reject("claim lease expired while the body ran", requeue=True) from None
        except Exception as exc:
            # The outcome could not be stored (e.g. the broker is down): keep the message.
            log.exception("job_outcome_not_stored", error=type(exc).__name__)
            raise Reject(f"outcome not stored: {exc}", requeue=True) from exc
        finally:
            _current_job.reset(token)
            structlog.contextvars.unbind_contextvars("task_id", "task", "attempt", "key")

    def envelope_size(self) -> int:
        """Jobs per envelope for ``enqueue_many`` (1 = none): ``JOBS_TASKS``, option, default."""
        settings = get_settings()
        size = settings.knobs_for(self.name).envelope_size or self.policy_options_envelope
        return int(size or settings.envelope_size)

    def resolved_options(self) -> dict[str, Any]:
        """This task's policy options: decorator values, then ``JOBS_TASKS`` overrides.

        Settings are frozen per process, so the result is computed once per task.
        """
        cached: dict[str, Any] | None = self.__dict__.get("_resolved_options")
        if cached is None:
            cached = self._resolve_options()
            self.__dict__["_resolved_options"] = cached
        return cached

    def _resolve_options(self) -> dict[str, Any]:
        settings = get_settings()
        knobs = settings.knobs_for(self.name)
        options = {
            "max_attempts": settings.max_attempts,
            "retry_base": settings.retry_base,
            "retry_cap": settings.retry_cap,
            **self.policy_options,
        }
        for name in ("max_attempts", "retry_base", "retry_cap"):
            value = getattr(knobs, name)
            if value is not None:
                options[name] = value
        return options

    def apply_async(  # noqa: PLR0917 - Celery's own signature
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: Any = None,
        **options: Any,
    ) -> AsyncResult:
        """Enqueue through admission (dedup, publish); internal re-publishes bypass it."""
        if options.pop("_jobs_internal", False):
            return super().apply_async(
                args, kwargs, task_id, producer, link, link_error, shadow, **options
            )
        from workers import admission  # noqa: PLC0415 - admission imports this module

        unsupported = {
            name: value
            for name, value in {
                "task_id": task_id,
                "producer": producer,
                "link": link,
                "link_error": link_error,
                "shadow": shadow,
                **{k: v for k, v in options.items() if k not in ADMISSION_OPTIONS},
            }.items()
            if value is not None
        }
        if unsupported:
            raise InvalidJob(
                f"apply_async options not supported by jobs: {sorted(unsupported)} "
                f"(supported: {sorted(ADMISSION_OPTIONS)})",
                field=min(unsupported),
            )
        ref = admission.enqueue(
            self,
            tuple(args or ()),
            dict(kwargs or {}),
            key=options.pop("key", None),
            queue=options.pop("queue", None),
            priority=options.pop("priority", None),
            countdown=options.pop("countdown", None),
            eta=options.pop("eta", None),
            on_full=options.pop("on_full", "raise"),
            wait_max=options.pop("wait_max", None),
        )
        return self.AsyncResult(ref.id)


def run_job(
    policies: tuple[Policy, ...], job: Job, execution: Execution, body: Callable[[], Any]
) -> Outcome:
    """Run ``body`` for ``job`` inside ``policies`` (before in order, after_* in reverse)."""
    entered: list[Policy] = []
    with ExitStack() as settling:
        try:
            for policy in policies:
                policy.before(job, execution)
                entered.append(policy)
            try:
                with lease_fence(execution.fence_after, soft_after=execution.soft_after):
                    body()
            finally:
                if execution.envelope is None:  # an envelope's soft limit stops it between jobs
                    settling.enter_context(soft_limit_held())  # the outcome is stored in full
            failpoint("after_side_effect")
        except Settled:
            return job.outcome or Outcome.SKIPPED
        except Exception as exc:
            if isinstance(exc, Defer):
                defer(job, execution, exc)
            else:
                detail = redact_text(str(exc))[:200]
                log.warning("job_failed", error=type(exc).__name__, detail=detail)
            for policy in reversed(entered):
                policy.after_failure(job, execution, exc)
            if job.outcome is None:
                raise  # nothing stored the outcome: the caller must not acknowledge the message
            return job.outcome
        for policy in reversed(entered):
            policy.after_success(job, execution)
        job.outcome = Outcome.DONE
        return job.outcome


def defer(job: Job, execution: Execution, request: Defer) -> None:
    """Re-publish ``job`` ``request.seconds`` later, same attempt (no attempt spent)."""
    publisher.publish(execution.app, [job.next_publication()], delay=request.seconds)
    job.outcome = Outcome.DEFERRED
    log.info("job_deferred", seconds=round(request.seconds, 3), reason=request.reason)


def job(
    *,
    name: str,
    queue: str = "default",
    time_limit: float | None = None,
    priority: int | None = None,
    envelope_size: int | None = None,
    **options: Any,
) -> Callable[[Callable[P, R]], JobTask]:
    """Declare a job: ``@job(name="webhooks.deliver", queue="webhooks", max_attempts=10)``.

    ``name`` is the wire name (a contract with queued messages and dead letters). Unknown
    options are an error here, at declaration, not a silent no-op. ``envelope_size`` caps the
    jobs ``enqueue_many`` packs into one message (1 opts the task out of envelopes).
    """
    if envelope_size is not None and (
        isinstance(envelope_size, bool) or not isinstance(envelope_size, int) or envelope_size < 1
    ):
        raise ConfigurationError(f"job {name!r}: envelope_size must be an integer >= 1")
    unknown = set(options) - declared_options()
    if unknown:
        known = sorted(declared_options() | TASK_OPTIONS)
        raise ConfigurationError(
            f"The following job options are undefined: {sorted(unknown)} (known: {known})"
        )

    for policy in DEFAULT_POLICIES:
        check = getattr(policy, "check_options", None)
        if check is not None:
            try:
                check(options)
            except InvalidJob as exc:
                raise ConfigurationError(f"job {name!r}: {exc}") from None

    def decorate(func: Callable[P, R]) -> JobTask:
        from workers.app import app  # noqa: PLC0415 - the app includes task modules by string

        settings = get_settings()
        limit = settings.knobs_for(name).time_limit or time_limit or settings.time_limit
        task: JobTask = app.task(
            name=name,
            base=JobTask,
            queue=queue,
            time_limit=limit,
            soft_time_limit=limit * SOFT_LIMIT_RATIO,
            policy_options=dict(options),
            policy_options_envelope=envelope_size,
            default_priority=priority,
            typing=False,
        )(func)
        return task

    return decorate
