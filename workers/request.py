"""``JobRequest``: the worker-side (parent process) view of a job message.

Stock Celery acknowledges (drops) a job whose child process hit the hard time limit, and
requeues a job whose child died without limit. Here both are requeued (``task_acks_on_timeout
=False``), the dead child's claim is released at once (so the next run need not wait for its
lease), and the claim script's start counter dead-letters a job that keeps killing its worker
or its time limit (``worker_lost_exhausted``).

A message whose arguments or ``jobs`` header are malformed is refused here, in the consumer,
as an :class:`InvalidJobMessage`, which the consumer dead-letters; stock Celery would only
find out in the pool and drop it.
"""

from __future__ import annotations

from typing import Any

import structlog
from billiard.exceptions import WorkerLostError
from celery.exceptions import InvalidTaskError, TimeLimitExceeded
from celery.worker.request import Request

from workers.canonical import derive_key
from workers.envelope_run import CLAIM_BATCH, current_index
from workers.envelopes import ENVELOPE_TASK, fragment_problem
from workers.job import HEADER, header_problem
from workers.policies.idempotency import release_claims_of_process
from workers.task import JobTask

log = structlog.get_logger("jobs.request")


class InvalidJobMessage(InvalidTaskError):  # type: ignore[misc]
    """A task message whose arguments or ``jobs`` header cannot be used."""

    def __init__(self, message: str, *, reason: str) -> None:
        """``reason`` is the dead letter's machine-readable reason."""
        super().__init__(message)
        self.reason = reason


def message_problem(args: Any, kwargs: Any, header: Any) -> InvalidJobMessage | None:
    """Why a decoded task message cannot run (``None`` when it can)."""
    if not isinstance(args, list | tuple):
        return InvalidJobMessage(
            f"args is a {type(args).__name__}, not a list", reason="invalid_args"
        )
    if not isinstance(kwargs, dict):
        return InvalidJobMessage(
            f"kwargs is a {type(kwargs).__name__}, not an object", reason="invalid_args"
        )
    problem = header_problem(header)
    return None if problem is None else InvalidJobMessage(problem, reason="invalid_message")


def envelope_problem(kwargs: dict[str, Any], tasks: Any) -> InvalidJobMessage | None:
    """Why an envelope's kwargs cannot run: its task must be a job, each fragment valid."""
    task = kwargs.get("task")
    fragments = kwargs.get("jobs")
    if not isinstance(task, str) or not isinstance(tasks.get(task), JobTask):
        return InvalidJobMessage(
            f"envelope task {task!r:.120} is not a registered job", reason="unknown_task"
        )
    if not isinstance(fragments, list) or not fragments:
        return InvalidJobMessage("envelope jobs is not a non-empty list", reason="invalid_args")
    for index, value in enumerate(fragments):
        problem = fragment_problem(value)
        if problem is not None:
            return InvalidJobMessage(f"envelope job {index}: {problem}", reason="invalid_message")
    return None


class JobRequest(Request):  # type: ignore[misc]
    """Requeue on worker loss and on hard time limit; never drop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Refuse a malformed message before it reaches the pool."""
        super().__init__(*args, **kwargs)
        problem = message_problem(self._args, self._kwargs, self._request_dict.get(HEADER))
        if problem is None and self.name == ENVELOPE_TASK:
            problem = envelope_problem(self._kwargs, self._app.tasks)
        if problem is not None:
            raise problem

    def _job_keys(self) -> list[str]:
        """The keys the child may hold claims on (in an envelope: its current claim batch)."""
        if self.name == ENVELOPE_TASK:
            fragments = self.kwargs["jobs"]
            start = current_index(self.id)
            return [str(value["key"]) for value in fragments[start : start + CLAIM_BATCH]]
        header = self._request_dict.get(HEADER) or {}
        return [str(header.get("key") or derive_key(self.name, self.args, self.kwargs))]

    def _release_dead_child_claim(self) -> None:
        if self.worker_pid:
            try:
                release_claims_of_process(self._job_keys(), self.worker_pid)
            except Exception:
                log.exception("claim_release_failed", task_id=self.id)

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> None:
        """A child that died mid-job: release its claim, then Celery requeues the message."""
        exc = exc_info.exception
        exc = getattr(exc, "exc", exc)  # unwrap billiard's ExceptionWithTraceback
        if isinstance(exc, WorkerLostError | SystemExit | KeyboardInterrupt | TimeLimitExceeded):
            log.warning("job_worker_lost", task_id=self.id, task=self.name, pid=self.worker_pid)
            self._release_dead_child_claim()
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
