"""Flushing a write buffer: claim batches, write them, dead-letter refused rows, drop claims.

:func:`drain` is what a ``buffers.flush`` job runs; :func:`flush_all` is a worker's bounded
final flush on warm shutdown.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg
import structlog
from sqlalchemy.exc import DataError as SQLAlchemyDataError

from jobs.buffers.claims import Claim, claim, drop_claim, give_back
from jobs.buffers.names import QUEUE, REJECTED_REASON, WRITE_ROW_TASK
from jobs.buffers.producer import request_flush
from jobs.buffers.registry import buffer_spec
from jobs.buffers.rows import APPENDED_AT
from jobs.buffers.writer import Rejection, unframeable, write_batch
from workers import counters, deadletters, keys, resources
from workers.failpoints import failpoint
from workers.registries import BufferSpec
from workers.settings import Settings, get_settings

log = structlog.get_logger("jobs.buffers")


@dataclass(slots=True)
class FlushResult:
    """What one :func:`drain` did."""

    buffer: str
    batches: int = 0
    claimed: int = 0
    written: int = 0  # new rows in the table
    duplicates: int = 0  # rows already there (written again after a crash or an overrun)
    rejected: int = 0  # dead-lettered rows
    reclaimed: int = 0  # rows of orphaned claims pushed back to the buffer
    remaining: int = 0  # rows left in the buffer when the flush stopped
    seconds: float = field(default=0.0)


def dead_letter_row(name: str, row: bytes, error: Exception) -> None:
    """Store one refused row as a dead letter (idempotent: keyed by the row's bytes).

    The row goes into ``kwargs`` (replayable: ``buffers.write_row``). A row that the store's
    ``jsonb`` cannot hold either (not JSON, or a NUL escape in a string) is kept as
    ``raw_message`` (base64 of its bytes) instead: inspectable, not replayable.
    """
    digest = hashlib.sha256(row).hexdigest()[:32]
    record = deadletters.from_exception(
        error,
        job_id=f"buffers.row:{name}:{digest}",
        task_name=WRITE_ROW_TASK,
        queue=QUEUE,
        reason=REJECTED_REASON,
        kwargs={"buffer": name},
        idempotency_key=f"{WRITE_ROW_TASK}:{name}:{digest}",
        attempts=1,
    )
    try:
        document = json.loads(row)
    except ValueError:
        document = None
    if isinstance(document, dict):
        document.pop(APPENDED_AT, None)
        record.kwargs = {"buffer": name, "row": document}
        try:
            deadletters.write(resources.engine(), record)
        except SQLAlchemyDataError:
            pass  # the store refuses the row's values too: keep its bytes instead
        else:
            counters.incr(counters.DEAD_LETTERED, WRITE_ROW_TASK)
            return
    record.kwargs = {"buffer": name}
    record.raw_message = base64.b64encode(row).decode()
    deadletters.write(resources.engine(), record)
    counters.incr(counters.DEAD_LETTERED, WRITE_ROW_TASK)


def _write_claimed(name: str, spec: BufferSpec, batch: Claim, result: FlushResult) -> None:
    """Write one claimed batch, dead-letter what the database refused, then drop the claim."""
    rows = batch.rows
    try:
        written, rejected = write_batch(name, spec, rows, timeout=spec.claim_timeout / 2)
    except psycopg.DataError:
        # COPY refused the whole batch: some item breaks its line format.
        rejected = unframeable(rows)
        if not rejected:
            raise
        bad = {rejection.index for rejection in rejected}
        good = [row for index, row in enumerate(rows) if index not in bad]
        written, more = write_batch(name, spec, good, timeout=spec.claim_timeout / 2)
        positions = [index for index in range(len(rows)) if index not in bad]
        rejected += [Rejection(positions[r.index], r.error) for r in more]
    failpoint("buffer_after_commit")
    for rejection in rejected:
        dead_letter_row(name, rows[rejection.index], rejection.error)
    if rejected:
        log.error(
            "buffer_rows_rejected",
            buffer=name,
            rows=len(rejected),
            error=type(rejected[0].error).__name__,
            detail=str(rejected[0].error).splitlines()[0][:200],
        )
    drop_claim(name, batch.token)
    result.batches += 1
    result.claimed += len(rows)
    result.written += written
    result.rejected += len(rejected)
    result.duplicates += len(rows) - written - len(rejected)


def drain(
    name: str,
    *,
    budget: float | None = None,
    max_age: float | None = None,
    settings: Settings | None = None,
) -> FlushResult:
    """Flush buffer ``name``: claim and write batches until it is drained or ``budget`` is spent.

    Full batches are always written; a smaller one only when its oldest row is ``max_age``
    seconds old (default: the buffer's ``max_age``; negative: always). Stops after a partial
    batch, or when ``budget`` seconds (default ``buffer_flush_budget``) are spent, requesting
    another flush if the buffer is still at its threshold.

    Failure modes: PostgreSQL unreachable → the claimed batch is given back
    (:func:`~jobs.buffers.claims.release`) and the error is raised (an ``UNAVAILABLE_ERRORS``
    type); a crash of this process → its claim is pushed back by a later flush after
    ``claim_timeout``; Redis unreachable → ``redis.RedisError`` (rows already claimed stay
    claimed until their deadline).
    """
    settings = settings or get_settings()
    spec = buffer_spec(name, settings)
    started = time.monotonic()
    deadline = started + (settings.buffer_flush_budget if budget is None else budget)
    partial_age = spec.max_age if max_age is None else max_age
    result = FlushResult(buffer=name)
    resources.redis_client().delete(keys.buffer_flush_requested(name))

    def next_batch() -> Claim:
        batch = claim(name, spec, max_age=partial_age)
        result.reclaimed += batch.reclaimed
        result.remaining = batch.remaining
        return batch

    # The next batch is claimed (Redis) while this one is written (PostgreSQL): ~15 % faster.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer-claim") as prefetch:
        batch = next_batch()
        while batch.rows:
            failpoint("buffer_after_claim")
            more = len(batch.rows) == spec.batch_size and time.monotonic() < deadline
            upcoming = prefetch.submit(next_batch) if more else None
            try:
                _write_claimed(name, spec, batch, result)
            except BaseException as exc:
                give_back(name, batch.token, exc)
                if upcoming is not None:
                    with contextlib.suppress(Exception):
                        give_back(name, upcoming.result().token, exc)
                raise
            if upcoming is None:
                break
            batch = upcoming.result()
    result.seconds = round(time.monotonic() - started, 3)
    if result.remaining >= spec.flush_threshold:
        request_flush(name, spec)
    if result.claimed or result.reclaimed:
        log.info(
            "buffer_flushed",
            buffer=name,
            batches=result.batches,
            written=result.written,
            duplicates=result.duplicates,
            rejected=result.rejected,
            reclaimed=result.reclaimed,
            remaining=result.remaining,
            seconds=result.seconds,
        )
    return result


def flush_all(*, timeout: float, settings: Settings | None = None) -> dict[str, FlushResult]:
    """Flush every buffer, partial batches included, within about ``timeout`` seconds in all.

    Errors are logged per buffer, never raised: the rows of a failed flush stay in Redis.
    """
    settings = settings or get_settings()
    deadline = time.monotonic() + timeout
    results = {}
    for name in settings.buffers:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            log.warning("buffer_shutdown_flush_timeout", buffer=name)
            break
        try:
            results[name] = drain(name, budget=remaining, max_age=-1, settings=settings)
        except Exception as exc:
            log.warning("buffer_shutdown_flush_failed", buffer=name, error=type(exc).__name__)
    return results
