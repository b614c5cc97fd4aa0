"""Write buffers: producers append rows to Redis; flush jobs write them to PostgreSQL in batches.

Producer side::

    from jobs.buffers import WriteBuffer
    WriteBuffer("events").append({"user_id": 42, "event_type": "view"})
    WriteBuffer("events").extend(rows)  # one Redis round trip per call

Every row is validated against the buffer's declared columns (``JOBS_BUFFERS``) and refused at
append with :class:`~workers.errors.InvalidJob` naming the buffer, the row and the column. It
is stored as compact JSON with its generated columns filled in (``id``, ``created_at`` for the
demo ``events`` buffer), so the same row keeps the same key however often it is written, and
with its append time as first key (``{"_at": ...}``, ignored by the insert), which gives the
age of the oldest waiting row in O(1).

Flush side (``buffers.flush``, queue ``buffers``): a Lua script moves up to ``batch_size`` rows
from the head of the buffer into this flush's batch key (``jobs:buffer:<name>:processing:
<token>``, the rows joined by newlines: one value, not one element per row) and records the
claim with a deadline. The batch is written in ONE transaction: ``COPY`` into a temporary table,
then ``INSERT ... SELECT`` from it through ``json_to_record`` into the target (a plain INSERT;
if the batch holds rows already there, it is redone with ``ON CONFLICT DO NOTHING``); only
after the commit is the batch key deleted. So:

- a flush that crashes before its commit leaves its rows claimed; the next flush after the claim
  deadline (``claim_timeout``) pushes them back to the buffer (Lua, atomic) and writes them;
- a flush that crashes after its commit has its rows written again later: ``ON CONFLICT`` on the
  declared ``conflict_columns`` makes that a no-op (no duplicates);
- PostgreSQL unreachable: the batch is given back (its claim deadline zeroed: the next flush
  pushes it back to the buffer first) and the job retries with backoff; nothing leaves Redis
  until a commit has succeeded;
- a row the database refuses (constraint, bad value, no partition for it) is isolated by
  bisection inside savepoints and dead-lettered on its own (task ``buffers.write_row``, reason
  ``row_rejected``, kwargs ``{buffer, row}``); the rest of the batch is written. ``jobctl dlq
  replay`` of such an entry inserts the row directly once the cause is fixed.

Flushes are triggered by size (an append that brings the buffer to ``flush_threshold``
enqueues one flush job, deduplicated by a marker), by age (beat: :func:`schedule_entries`, every
``flush_interval`` seconds) and by a worker's warm shutdown (a bounded final flush of every
buffer, in the main process of workers that consume the ``buffers`` queue).

Buffered rows exist only in Redis until flushed: run Redis with ``maxmemory-policy noeviction``
(and AOF), as for the queues themselves.

Modules: ``names`` (wire names and queue), ``rows`` (validation and encoding, pure),
``statements`` (the flush's SQL, pure), ``registry`` (a buffer's entry and compiled form),
``producer`` (:class:`WriteBuffer`, flush requests), ``claims`` (the Redis side of a flush),
``writer`` (the PostgreSQL side), ``flush`` (:func:`drain`, :func:`flush_all`), ``stats``
(:func:`buffer_stats`), ``tasks`` (``buffers.flush``, ``buffers.write_row``, beat entries and
the shutdown flush).
"""

from __future__ import annotations

from jobs.buffers.claims import Claim, claim, release
from jobs.buffers.flush import FlushResult, drain, flush_all
from jobs.buffers.names import FLUSH_TASK, QUEUE, REJECTED_REASON, WRITE_ROW_TASK
from jobs.buffers.producer import PUSH_CHUNK, TRANSACTION_ROWS, WriteBuffer, request_flush
from jobs.buffers.registry import Compiled, buffer_spec, compiled
from jobs.buffers.rows import APPENDED_AT, CHECKS, RowCodec, appended_at
from jobs.buffers.statements import TEMP_TABLE, Statements, copy_payload, statements
from jobs.buffers.stats import BufferStats, buffer_stats
from jobs.buffers.tasks import (
    FLUSH_ATTEMPTS,
    FLUSH_TIME_LIMIT,
    flush_buffer,
    schedule_entries,
    write_row,
)
from jobs.buffers.writer import (
    ROW_ERRORS,
    UNAVAILABLE_ERRORS,
    Rejection,
    insert_row,
    isolate,
    write_batch,
)
from workers.errors import RowRejected

__all__ = [
    "APPENDED_AT",
    "CHECKS",
    "FLUSH_ATTEMPTS",
    "FLUSH_TASK",
    "FLUSH_TIME_LIMIT",
    "PUSH_CHUNK",
    "QUEUE",
    "REJECTED_REASON",
    "ROW_ERRORS",
    "TEMP_TABLE",
    "TRANSACTION_ROWS",
    "UNAVAILABLE_ERRORS",
    "WRITE_ROW_TASK",
    "BufferStats",
    "Claim",
    "Compiled",
    "FlushResult",
    "Rejection",
    "RowCodec",
    "RowRejected",
    "Statements",
    "WriteBuffer",
    "appended_at",
    "buffer_spec",
    "buffer_stats",
    "claim",
    "compiled",
    "copy_payload",
    "drain",
    "flush_all",
    "flush_buffer",
    "insert_row",
    "isolate",
    "release",
    "request_flush",
    "schedule_entries",
    "statements",
    "write_batch",
    "write_row",
]
