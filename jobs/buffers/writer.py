"""The PostgreSQL side of a flush: one batch in ONE transaction, refused rows isolated.

COPY into a temporary table, then ``INSERT ... SELECT`` through ``json_to_record`` inside
savepoints; a row the database refuses is isolated by bisection and left out, the rest is
committed. Also the direct path of one row (:func:`insert_row`, for ``buffers.write_row``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import psycopg
from sqlalchemy.exc import InterfaceError as SQLAlchemyInterfaceError
from sqlalchemy.exc import OperationalError as SQLAlchemyOperationalError

from jobs.buffers.registry import buffer_spec, compiled
from jobs.buffers.statements import copy_payload
from workers import resources
from workers.errors import DeadLetterUnavailable, InvalidJob, RowRejected
from workers.registries import BufferSpec

if TYPE_CHECKING:
    from collections.abc import Sequence

#: Errors caused by a row's values (SQLSTATE class 22 data exception, 23 integrity violation,
#: which includes "no partition of relation found for row"): the row is dead-lettered.
ROW_ERRORS: tuple[type[Exception], ...] = (psycopg.DataError, psycopg.IntegrityError)
#: Errors meaning PostgreSQL is unreachable (or the dead-letter store is): retry later.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    SQLAlchemyOperationalError,  # the pool's connect / pre-ping
    SQLAlchemyInterfaceError,
    DeadLetterUnavailable,
)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A row the database refused: its position in the batch and the error."""

    index: int
    error: Exception


def isolate(
    count: int,
    attempt: Callable[[int, int], int],
    errors: tuple[type[Exception], ...] = ROW_ERRORS,
) -> tuple[int, list[Rejection]]:
    """Write rows 1..``count`` with ``attempt(first, last)``, isolating the ones it refuses.

    ``attempt`` writes a slice (inside a savepoint it rolls back on error) and returns the rows
    written. A slice failing with one of ``errors`` is split in halves until the refused rows
    stand alone: k bad rows cost O(k log count) attempts. Returns (rows written, rejections).
    """
    written, rejected = 0, []
    pending = [(1, count)] if count else []
    while pending:
        first, last = pending.pop()
        try:
            written += attempt(first, last)
        except errors as exc:
            if first == last:
                rejected.append(Rejection(first - 1, exc))
                continue
            middle = (first + last) // 2
            pending += [(middle + 1, last), (first, middle)]
    return written, rejected


def write_batch(
    name: str, spec: BufferSpec, rows: Sequence[bytes], *, timeout: float
) -> tuple[int, list[Rejection]]:
    """Write ``rows`` into ``spec.table`` in ONE transaction; returns (new rows, rejections).

    COPY into a temporary table, then ``INSERT ... SELECT`` inside a savepoint (redone with
    ``ON CONFLICT DO NOTHING`` once a slice holds rows already written); rows the database
    refuses are isolated (:func:`isolate`) and left out, the rest is committed. Rows already
    in the table count as neither written nor rejected. Every statement is bounded by
    ``timeout`` seconds. Raises an ``UNAVAILABLE_ERRORS`` error when
    PostgreSQL is unreachable (nothing committed).
    """
    statement_set = compiled(name, spec).statements
    raw = resources.engine().raw_connection()
    try:
        conn = cast("psycopg.Connection[Any]", raw.driver_connection)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT set_config('statement_timeout', %s, true)",
                    (f"{max(1, int(timeout * 1000))}ms",),
                )
                cur.execute(statement_set.create)
                with cur.copy(statement_set.copy) as copy:
                    copy.write(copy_payload(rows))

                upsert = False  # a plain INSERT until a slice holds rows already written

                def attempt(first: int, last: int) -> int:
                    nonlocal upsert
                    cur.execute("SAVEPOINT buffer_slice")
                    try:
                        if not upsert:
                            try:
                                cur.execute(statement_set.insert, (first, last))
                            except psycopg.errors.UniqueViolation:
                                # A re-flush after a crash: ON CONFLICT from now on. It costs
                                # ~2 µs a row (speculative insertion), hence not by default.
                                cur.execute("ROLLBACK TO SAVEPOINT buffer_slice")
                                upsert = True
                        if upsert:
                            cur.execute(statement_set.upsert, (first, last))
                    except BaseException:
                        cur.execute("ROLLBACK TO SAVEPOINT buffer_slice")
                        raise
                    inserted = max(cur.rowcount, 0)
                    cur.execute("RELEASE SAVEPOINT buffer_slice")
                    return inserted

                result = isolate(len(rows), attempt)
            conn.commit()
        except BaseException:
            with contextlib.suppress(psycopg.Error):  # a dead connection: the pool drops it
                conn.rollback()
            raise
    finally:
        raw.close()
    return result


def unframeable(rows: Sequence[bytes]) -> list[Rejection]:
    """Rows that break COPY's text format: raw tab, newline, CR or NUL, or not UTF-8.

    WriteBuffer never stores such a row (compact JSON escapes control characters); something
    else pushed it. Rows that are merely not JSON pass COPY and are refused by the INSERT's
    cast, like any other bad value.
    """
    bad = []
    for index, row in enumerate(rows):
        try:
            row.decode()
        except UnicodeDecodeError as exc:
            bad.append(Rejection(index, exc))
            continue
        if any(char in row for char in (b"\t", b"\n", b"\r", b"\0")):
            bad.append(Rejection(index, ValueError("raw control character in a buffered row")))
    return bad


def insert_row(name: str, row: Mapping[str, Any]) -> bool:
    """Validate and insert one row of buffer ``name`` directly (no Redis); True if it is new.

    Raises :class:`RowRejected` (permanent) for a row that fails validation or that the
    database refuses; an ``UNAVAILABLE_ERRORS`` error when PostgreSQL is unreachable.
    """
    spec = buffer_spec(name)
    try:
        items = compiled(name, spec).codec.encode([row])
    except InvalidJob as exc:
        raise RowRejected(str(exc)) from exc
    written, rejected = write_batch(name, spec, items, timeout=spec.claim_timeout)
    if rejected:
        error = rejected[0].error
        raise RowRejected(f"{spec.table} refused the row: {error}") from error
    return written == 1
