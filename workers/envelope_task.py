"""``jobs.envelope``: runs the jobs an envelope carries, each through its task's policy chain.

Each job is a full job: its own idempotency claim, rate-limit token (a throttled job is parked
alone, as a single-job message), breaker check, attempts, retry schedule and dead letter. The
envelope returns, and Celery acknowledges it, only once every job has a durable outcome; a job
whose outcome cannot be stored rejects the envelope back to its queue, and the redelivery
resumes at that job (:mod:`workers.envelope_run`), jobs already done being skipped.

Crash semantics follow from the per-job claim: the job running when a worker died is the one
whose start counter grows on redelivery, so after ``worker_lost_max`` deaths only that job is
dead-lettered (``worker_lost_exhausted``) and the envelope goes on with the next one.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task
from celery.exceptions import Reject

from workers.app import app
from workers.envelope_run import EnvelopeRun
from workers.envelopes import ENVELOPE_TASK, job_of
from workers.settings import get_settings
from workers.task import JobTask

log = structlog.get_logger("jobs.envelope")


class EnvelopeTask(Task):  # type: ignore[misc]
    """Base of ``jobs.envelope`` (messages are checked in the consumer: ``JobRequest``)."""

    Request = "workers.request:JobRequest"
    typing = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # noqa: ARG002 - kwargs only
        """Run every job from where a previous delivery stopped; ``Reject`` to requeue."""
        task: JobTask = self.app.tasks[kwargs["task"]]
        fragments: list[dict[str, Any]] = kwargs["jobs"]
        delivery = self.request.delivery_info or {}
        queue = delivery.get("routing_key") or task.queue or "default"
        priority = delivery.get("priority")
        jobs = [
            job_of(value, task=task.name, queue=queue, priority=priority) for value in fragments
        ]
        if self.request.called_directly:
            for job in jobs:
                task.run(*job.args, **job.kwargs)
            return None
        run = EnvelopeRun(self.request.id, jobs, get_settings())
        try:
            start = run.open()
            if start:
                log.info("envelope_resumed", at=start, jobs=len(jobs), envelope=self.request.id)
            for index in range(start, len(jobs)):
                run.begin(index)
                task.execute(jobs[index], envelope=run)
            run.finish()
        except Reject:
            run.abandon()
            raise
        except Exception as exc:
            run.abandon()
            log.exception("envelope_interrupted", error=type(exc).__name__)
            raise Reject(f"envelope interrupted: {exc}", requeue=True) from exc
        return None


@app.task(name=ENVELOPE_TASK, base=EnvelopeTask, bind=False)  # type: ignore[untyped-decorator]
def envelope(task: str, jobs: list[dict[str, Any]]) -> None:
    """Carries ``jobs`` of ``task`` (see the module docstring); never called directly."""
