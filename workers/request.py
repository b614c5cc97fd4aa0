"""``JobRequest``: the worker-side (parent process) view of a job message.

Stock Celery acknowledges (drops) a job whose child process hit the hard time limit, and
requeues a job whose child died without limit. Here both are requeued (``task_acks_on_timeout
=False``), the dead child's claim is released at once (so the next run need not wait for its
lease), and the claim script's start counter dead-letters a job that keeps killing its worker
or its time limit (``worker_lost_exhausted``).
"""

from __future__ import annotations

from typing import Any

import structlog
from billiard.exceptions import WorkerLostError
from celery.exceptions import TimeLimitExceeded
from celery.worker.request import Request

from workers.canonical import derive_key
from workers.job import HEADER
from workers.policies.idempotency import release_claims_of_process

log = structlog.get_logger("jobs.request")


class JobRequest(Request):  # type: ignore[misc]
    """Requeue on worker loss and on hard time limit; never drop."""

    def _job_key(self) -> str:
        header = self._request_dict.get(HEADER) or {}
        return str(header.get("key") or derive_key(self.name, self.args, self.kwargs))

    def _release_dead_child_claim(self) -> None:
        if self.worker_pid:
            try:
                release_claims_of_process(self._job_key(), self.worker_pid)
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
