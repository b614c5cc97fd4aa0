"""The buffer tasks ``buffers.flush`` and ``buffers.write_row``, with their beat entries.

Also the final flush of a worker consuming ``buffers`` on warm shutdown.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import signals

from jobs.buffers.flush import drain, flush_all
from jobs.buffers.names import FLUSH_TASK, QUEUE, WRITE_ROW_TASK
from jobs.buffers.writer import UNAVAILABLE_ERRORS, insert_row
from workers.errors import InvalidJob, PermanentError
from workers.settings import Settings, get_settings
from workers.task import current_job, job

log = structlog.get_logger("jobs.buffers")

#: Attempts of a flush job while PostgreSQL is unreachable; after the last one the job ends
#: without a dead letter (its rows are safe in Redis and the next flush writes them).
FLUSH_ATTEMPTS = 5
#: Hard time limit of a flush job (its budget is ``buffer_flush_budget``).
FLUSH_TIME_LIMIT = 120.0


@job(
    name=FLUSH_TASK,
    queue=QUEUE,
    time_limit=FLUSH_TIME_LIMIT,
    max_attempts=FLUSH_ATTEMPTS,
    retry_base=1.0,
    retry_cap=15.0,
)
def flush_buffer(*, buffer: str) -> None:
    """Flush write buffer ``buffer`` (see :func:`drain`).

    PostgreSQL unreachable → retried with backoff; after the last attempt the job ends quietly
    (no dead letter): its rows are back in the buffer and the next flush writes them. An
    unknown buffer name is a permanent error.
    """
    try:
        drain(buffer)
    except InvalidJob as exc:
        raise PermanentError(str(exc)) from exc
    except UNAVAILABLE_ERRORS as exc:
        if current_job().attempt >= int(flush_buffer.resolved_options()["max_attempts"]):
            log.warning("buffer_flush_abandoned", buffer=buffer, error=type(exc).__name__)
            return
        raise


@job(name=WRITE_ROW_TASK, queue=QUEUE, max_attempts=5, retry_base=1.0, retry_cap=30.0)
def write_row(*, buffer: str, row: dict[str, Any]) -> None:
    """Insert one row of ``buffer`` (what replaying a ``row_rejected`` dead letter runs).

    Idempotent (``ON CONFLICT DO NOTHING`` on the buffer's conflict columns). A row the
    database still refuses is dead-lettered again (:class:`RowRejected`).
    """
    try:
        insert_row(buffer, row)
    except InvalidJob as exc:
        raise PermanentError(str(exc)) from exc


# -- schedule and shutdown --------------------------------------------------------------------


def schedule_entries(settings: Settings) -> dict[str, dict[str, Any]]:
    """Beat entries: one ``buffers.flush`` per buffer, every ``flush_interval`` seconds."""
    return {
        f"{FLUSH_TASK}:{name}": {
            "task": FLUSH_TASK,
            "schedule": spec.flush_interval,
            "kwargs": {"buffer": name},
            "options": {"queue": QUEUE},
        }
        for name, spec in settings.buffers.items()
    }


def _consumes_buffers(worker: Any) -> bool:
    try:
        return QUEUE in worker.app.amqp.queues.consume_from
    except AttributeError:
        return False


@signals.worker_shutdown.connect  # type: ignore[untyped-decorator]  # Celery is untyped
def _final_flush(sender: Any = None, **_: Any) -> None:
    """Warm shutdown of a worker consuming ``buffers``: one bounded final flush of every buffer.

    Runs in the worker's main process after its pool has stopped (Celery's worker_shutdown).
    """
    if not _consumes_buffers(sender):
        return
    settings = get_settings()
    results = flush_all(timeout=settings.buffer_shutdown_flush_timeout, settings=settings)
    log.info(
        "buffer_shutdown_flush",
        written={name: result.written for name, result in results.items()},
    )
