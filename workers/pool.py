"""The prefork pool, with a warm shutdown that cannot stall on a child's last result.

At warm shutdown Celery's consumer calls ``pool.flush()``, which drops from the pool's job
cache every job whose ACK the main process has not read yet, including one a child has
already taken from its pipe and is running. The shutdown result handler then reads the
children's pipes only while that cache is non-empty. billiard's child, before it exits,
waits up to 30 s for the main process to have read every READY it sent (its
``on_ready_counter``), so the child running the dropped job sits out the whole 30 s and the
warm shutdown with it (seen as a rolling restart taking 32 s instead of 2 s under load).

:class:`DrainingResultHandler` keeps reading every child's results until all children have
exited. The dropped job itself is safe either way: its message was never acknowledged, so it
is redelivered, and the idempotency policy skips it as done.
"""

from __future__ import annotations

from billiard.pool import TERMINATE, WorkersJoined
from celery.concurrency import asynpool, prefork


class DrainingResultHandler(asynpool.ResultHandler):  # type: ignore[misc]  # Celery is untyped
    """Celery's shutdown result handler, reading on until every child has exited."""

    def on_stop_not_started(self) -> None:
        """Read results while jobs are pending (Celery), then until the children are gone."""
        super().on_stop_not_started()
        outqueues = set(self.fileno_to_outq)
        while outqueues and self._state != TERMINATE:
            closed: set[int] = set()
            for fd in outqueues:
                asynpool.iterate_file_descriptors_safely(
                    [fd],
                    self.fileno_to_outq,
                    self._flush_outqueue,
                    closed.add,
                    self.fileno_to_outq,
                    self.on_state_change,
                )
                try:
                    self.join_exited_workers(shutdown=True)
                except WorkersJoined:
                    return
            outqueues -= closed


class DrainingAsynPool(asynpool.AsynPool):  # type: ignore[misc]  # Celery is untyped
    """Celery's event-loop pool with :class:`DrainingResultHandler`."""

    ResultHandler = DrainingResultHandler


class TaskPool(prefork.TaskPool):  # type: ignore[misc]  # Celery is untyped
    """``-P prefork`` for our workers (``worker_pool`` in :func:`workers.app.configure`)."""

    Pool = DrainingAsynPool
