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
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import psycopg
import redis
import structlog
from celery import signals
from psycopg import sql
from sqlalchemy.exc import DataError as SQLAlchemyDataError
from sqlalchemy.exc import InterfaceError as SQLAlchemyInterfaceError
from sqlalchemy.exc import OperationalError as SQLAlchemyOperationalError

from jobs.enqueue import enqueue
from workers import deadletters, keys, resources
from workers.canonical import check_json
from workers.errors import (
    BrokerUnavailable,
    DeadLetterUnavailable,
    InvalidJob,
    JobsError,
    PermanentError,
)
from workers.failpoints import failpoint
from workers.settings import BufferSpec, Settings, get_settings
from workers.task import current_job, job

if TYPE_CHECKING:
    from collections.abc import Sequence

log = structlog.get_logger("jobs.buffers")

#: Wire names (a contract with queued messages and dead letters).
FLUSH_TASK = "buffers.flush"
WRITE_ROW_TASK = "buffers.write_row"
#: The queue of both tasks.
QUEUE = "buffers"
#: Dead-letter reason of a row the database refused.
REJECTED_REASON = "row_rejected"
#: Rows per RPUSH command of an append.
PUSH_CHUNK = 10_000
#: Rows per Redis transaction of an append (a larger input is sent in several transactions).
TRANSACTION_ROWS = 100_000
#: Attempts of a flush job while PostgreSQL is unreachable; after the last one the job ends
#: without a dead letter (its rows are safe in Redis and the next flush writes them).
FLUSH_ATTEMPTS = 5
#: Hard time limit of a flush job (its budget is ``buffer_flush_budget``).
FLUSH_TIME_LIMIT = 120.0
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
#: The flush's temporary table (dropped at commit).
TEMP_TABLE = "buffer_rows"
#: Reserved key carrying a row's append time (unix seconds) as the first key of its JSON.
APPENDED_AT = "_at"
_HEAD_PREFIX = b'{"' + APPENDED_AT.encode() + b'":'

_encode_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


class RowRejected(PermanentError):
    """The database refused the row; retrying the same values will not help."""

    reason = REJECTED_REASON


# -- validation (pure) ------------------------------------------------------------------------


class _Mismatch(Exception):
    """A value does not fit its column; the argument says what was expected."""


def _text(value: Any) -> Any:
    if isinstance(value, str):
        return value
    raise _Mismatch("a string")


def _uuid(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        try:
            uuid.UUID(value)
        except ValueError:
            raise _Mismatch("a UUID string") from None
        return value
    raise _Mismatch("a UUID string")


def _integer(bits: int) -> Callable[[Any], Any]:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def check(value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            if low <= value <= high:
                return value
            raise _Mismatch(f"an integer in [{low}, {high}]")
        raise _Mismatch("an integer")

    return check


def _boolean(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    raise _Mismatch("true or false")


def _float(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return value
    raise _Mismatch("a finite number")


def _numeric(value: Any) -> Any:
    if isinstance(value, Decimal):
        if value.is_finite():
            return str(value)
    elif isinstance(value, str):
        try:
            if Decimal(value).is_finite():
                return value
        except ArithmeticError:
            pass
    elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return value
    raise _Mismatch("a finite number or decimal string")


def _timestamptz(value: Any) -> Any:
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise _Mismatch("an ISO-8601 timestamp with a UTC offset") from None
    else:
        raise _Mismatch("an ISO-8601 timestamp with a UTC offset")
    if parsed.tzinfo is None:
        raise _Mismatch("a timestamp with a UTC offset (naive timestamps are ambiguous)")
    return value if isinstance(value, str) else value.isoformat()


def _date(value: Any) -> Any:
    if isinstance(value, datetime):
        raise _Mismatch("a date (not a datetime)")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        try:
            date.fromisoformat(value)
        except ValueError:
            raise _Mismatch("an ISO-8601 date") from None
        return value
    raise _Mismatch("an ISO-8601 date")


def _json(value: Any) -> Any:
    return value  # checked by check_json (naming the nested path) in RowCodec.encode


#: Value check per declared type: returns the JSON-native value to store, or raises _Mismatch.
CHECKS: dict[str, Callable[[Any], Any]] = {
    "text": _text,
    "uuid": _uuid,
    "smallint": _integer(16),
    "integer": _integer(32),
    "bigint": _integer(64),
    "boolean": _boolean,
    "real": _float,
    "double precision": _float,
    "numeric": _numeric,
    "json": _json,
    "jsonb": _json,
    "timestamptz": _timestamptz,
    "date": _date,
}


@dataclass(frozen=True, slots=True)
class _Column:
    name: str
    kind: str
    check: Callable[[Any], Any]
    nullable: bool
    is_json: bool
    fill: Callable[[str], Any] | None  # value of an absent column, given the append time


class RowCodec:
    """Validates rows against a buffer's columns and encodes them as compact JSON lines."""

    def __init__(self, name: str, spec: BufferSpec) -> None:
        """Compile the checks of ``spec``'s columns (done once per buffer and process)."""
        self.name = name
        self.spec = spec
        self.names = frozenset(spec.columns)
        columns = []
        for column, declared in spec.columns.items():
            kind = declared.removesuffix("?")
            columns.append(
                _Column(
                    name=column,
                    kind=kind,
                    check=CHECKS[kind],
                    nullable=declared.endswith("?"),
                    is_json=kind in {"json", "jsonb"},
                    fill=self._filler(column, spec),
                )
            )
        self.columns = tuple(columns)

    @staticmethod
    def _filler(column: str, spec: BufferSpec) -> Callable[[str], Any] | None:
        how = spec.generated.get(column)
        if how == "uuid4":
            return lambda _now: str(uuid.uuid4())
        if how == "utcnow":
            return lambda now: now
        if column in spec.defaults:
            default = spec.defaults[column]
            return lambda _now: default
        return None

    def encode(self, rows: Iterable[Mapping[str, Any]]) -> list[bytes]:
        """Each row as one compact JSON document (``{"_at": <append time>, <columns>...}``).

        Absent generated columns are filled (one ``utcnow`` per call), absent columns with a
        default get it. Raises :class:`InvalidJob` naming the buffer, the row index and the
        column for: a row that is not a mapping, an undeclared column, a missing required
        column, a null in a non-optional column, or a value of the wrong JSON type.
        """
        appended = round(time.time(), 3)
        now = datetime.now(UTC).isoformat()
        encoded = []
        for index, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise self._invalid(index, None, f"expected a mapping, got {type(row).__name__}")
            unknown = row.keys() - self.names
            if unknown:
                raise self._invalid(
                    index,
                    min(map(str, unknown)),
                    f"unknown column (declared: {sorted(self.names)})",
                )
            document: dict[str, Any] = {APPENDED_AT: appended}
            for column in self.columns:
                self._put(document, column, row, index, now)
            try:
                encoded.append(_encode_json(document).encode())
            except ValueError as exc:  # inf inside a json column
                raise self._invalid(index, None, f"not JSON-serializable: {exc}") from None
        return encoded

    def _put(
        self,
        document: dict[str, Any],
        column: _Column,
        row: Mapping[str, Any],
        index: int,
        now: str,
    ) -> None:
        """Check ``row``'s value of ``column`` and store it (or its fill) in ``document``."""
        value = row.get(column.name)
        if value is None:
            if column.name in row and column.nullable:
                document[column.name] = None
            elif column.fill is not None:
                document[column.name] = column.fill(now)
            elif not column.nullable:
                problem = "is null" if column.name in row else "is missing"
                raise self._invalid(index, column.name, f"required column {problem}")
            return
        try:
            document[column.name] = column.check(value)
        except _Mismatch as exc:
            raise self._invalid(
                index,
                column.name,
                f"expected {exc.args[0]} ({column.kind}), got {type(value).__name__}",
            ) from None
        if column.is_json:
            try:
                check_json(value, column.name)
            except InvalidJob as exc:
                raise self._invalid(index, column.name, str(exc)) from None

    def _invalid(self, index: int, column: str | None, problem: str) -> InvalidJob:
        where = f"row {index}" + (f", column {column!r}" if column else "")
        return InvalidJob(
            f"write buffer {self.name!r}: {where}: {problem}",
            field=f"rows[{index}]" + (f".{column}" if column else ""),
        )


def buffer_spec(name: str, settings: Settings | None = None) -> BufferSpec:
    """The ``JOBS_BUFFERS`` entry of ``name``; :class:`InvalidJob` naming the known ones if none."""
    buffers = (settings or get_settings()).buffers
    spec = buffers.get(name)
    if spec is None:
        raise InvalidJob(f"unknown write buffer {name!r}; known: {sorted(buffers)}", field="buffer")
    return spec


def appended_at(item: bytes | None) -> float | None:
    """The append time (unix seconds) an encoded row starts with; None if it has none."""
    if not item or not item.startswith(_HEAD_PREFIX):
        return None
    end = item.find(b",", len(_HEAD_PREFIX))
    try:
        return float(item[len(_HEAD_PREFIX) : end if end > 0 else None].rstrip(b"}"))
    except ValueError:
        return None


# -- producer ---------------------------------------------------------------------------------


class WriteBuffer:
    """The producer side of a write buffer: ``WriteBuffer("events").extend(rows)``."""

    def __init__(self, name: str, *, settings: Settings | None = None) -> None:
        """Bind to buffer ``name`` of ``JOBS_BUFFERS`` (:class:`InvalidJob` if unknown)."""
        self.name = name
        self.spec = buffer_spec(name, settings)
        self._codec = compiled(name, self.spec).codec

    def append(self, row: Mapping[str, Any]) -> int:
        """Buffer one row; returns the buffer's length after it. See :meth:`extend`."""
        return self.extend((row,))

    def extend(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Buffer ``rows`` (validated first: nothing is stored if any row is invalid).

        One Redis round trip (a MULTI/EXEC transaction: all rows or none) for up to
        100,000 rows; a larger input is sent in transactions of that size, so a Redis failure
        midway may leave its first transactions stored (give rows an explicit key column if a
        retry must not add them twice). When the buffer reaches ``flush_threshold`` one flush
        job is enqueued (a burst of appends enqueues one). Returns the buffer's length.

        Raises :class:`InvalidJob` (naming the buffer, row index and column) and
        :class:`BrokerUnavailable` (Redis down or refusing writes: the rows were not stored).
        """
        items = self._codec.encode(rows)
        client = resources.redis_client()
        target = keys.buffer(self.name)
        flag = keys.buffer_flush_requested(self.name)
        length, requested = 0, True
        try:
            if not items:
                return int(client.llen(target))
            for start in range(0, len(items), TRANSACTION_ROWS):
                part = items[start : start + TRANSACTION_ROWS]
                with client.pipeline(transaction=True) as pipe:
                    for offset in range(0, len(part), PUSH_CHUNK):
                        pipe.rpush(target, *part[offset : offset + PUSH_CHUNK])
                    pipe.exists(flag)
                    replies = pipe.execute()
                length, requested = int(replies[-2]), bool(replies[-1])
        except redis.RedisError as exc:
            raise BrokerUnavailable(
                f"write buffer {self.name!r}: rows not buffered: {type(exc).__name__}: {exc}"
            ) from exc
        if length >= self.spec.flush_threshold and not requested:
            request_flush(self.name, self.spec)
        return length


def request_flush(name: str, spec: BufferSpec) -> str | None:
    """Enqueue one flush of ``name`` unless one is already requested; returns its job id.

    A marker (``SET NX``, expiring after ``claim_timeout``) deduplicates a burst of requests;
    the flush clears it when it starts. Failing to enqueue is logged, never raised: the rows are
    stored and the scheduled flush writes them.
    """
    client = resources.redis_client()
    flag = keys.buffer_flush_requested(name)
    token = uuid.uuid4().hex
    try:
        if not client.set(flag, token, nx=True, ex=max(1, math.ceil(spec.claim_timeout))):
            return None
        ref = enqueue(flush_buffer, buffer=name, key=f"{FLUSH_TASK}:{name}:{token}")
    except (JobsError, redis.RedisError) as exc:
        log.warning("buffer_flush_request_failed", buffer=name, error=type(exc).__name__)
        try:
            if client.get(flag) == token.encode():
                client.delete(flag)
        except redis.RedisError:
            pass  # the marker expires on its own
        return None
    log.info("buffer_flush_requested", buffer=name, job_id=ref.id)
    return ref.id


class BufferStats(NamedTuple):
    """A buffer's backlog, for the exporter (rows claimed by running flushes not included)."""

    length: int
    oldest_age: float  # seconds since the oldest waiting row was appended (0 when empty)


def buffer_stats(name: str, *, now: float | None = None) -> BufferStats:
    """``(length, oldest_age_seconds)`` of buffer ``name``: LLEN + LINDEX 0, O(1)."""
    with resources.redis_client().pipeline(transaction=False) as pipe:
        pipe.llen(keys.buffer(name))
        pipe.lindex(keys.buffer(name), 0)
        length, head = pipe.execute()
    at = appended_at(head)
    age = max(0.0, (now if now is not None else time.time()) - at) if at is not None else 0.0
    return BufferStats(int(length), age)


# -- flush ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Statements:
    """The SQL of one buffer's flush (identifiers quoted; types from the allow-list)."""

    create: sql.Composed
    copy: sql.Composed
    #: Plain INSERT of a slice (parameters: its first and last row number): the fast path.
    insert: sql.Composed
    #: The same with ON CONFLICT DO NOTHING, for a slice holding rows already written.
    upsert: sql.Composed


def statements(spec: BufferSpec) -> Statements:
    """The flush statements of ``spec`` (``INSERT ... SELECT ... FROM json_to_record``)."""
    temp = sql.Identifier(TEMP_TABLE)
    columns = sql.SQL(", ").join(sql.Identifier(name) for name in spec.columns)
    record = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(kind.removesuffix("?")))
        for name, kind in spec.columns.items()
    )
    conflict = (
        sql.SQL("({}) ").format(sql.SQL(", ").join(map(sql.Identifier, spec.conflict_columns)))
        if spec.conflict_columns
        else sql.SQL("")
    )
    insert = sql.SQL(
        "INSERT INTO {table} ({columns}) SELECT {columns} "
        "FROM {temp} AS t, json_to_record(t.doc::json) AS r({record}) "
        "WHERE t.n BETWEEN %s AND %s"
    ).format(table=sql.Identifier(spec.table), columns=columns, temp=temp, record=record)
    return Statements(
        create=sql.SQL(
            "CREATE TEMP TABLE {} (n integer NOT NULL, doc text NOT NULL) ON COMMIT DROP"
        ).format(temp),
        copy=sql.SQL("COPY {} (n, doc) FROM STDIN").format(temp),
        insert=insert,
        upsert=sql.SQL("{} ON CONFLICT {}DO NOTHING").format(insert, conflict),
    )


@dataclass(frozen=True, slots=True)
class Compiled:
    """A buffer's row codec and flush statements, built once per process and spec."""

    spec: BufferSpec
    codec: RowCodec
    statements: Statements


_compiled: dict[str, Compiled] = {}


def compiled(name: str, spec: BufferSpec) -> Compiled:
    """The :class:`Compiled` form of buffer ``name`` (rebuilt if its spec object changed)."""
    entry = _compiled.get(name)
    if entry is None or entry.spec is not spec:
        entry = _compiled[name] = Compiled(spec, RowCodec(name, spec), statements(spec))
    return entry


def copy_payload(rows: Sequence[bytes]) -> bytes:
    """``COPY ... FROM STDIN`` text-format data: ``<n>`` TAB ``<json>`` lines, n from 1.

    Compact JSON holds no raw tab or newline; its backslashes are doubled for COPY.
    """
    lines = b"".join(b"%d\t%s\n" % (n, row) for n, row in enumerate(rows, 1))
    return lines.replace(b"\\", b"\\\\")


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


@dataclass(slots=True)
class _Claim:
    token: str
    reclaimed: int
    remaining: int
    rows: list[bytes]


def claim(name: str, spec: BufferSpec, *, max_age: float, now: float | None = None) -> _Claim:
    """Claim up to ``batch_size`` rows of ``name`` (after pushing orphaned claims back)."""
    now = time.time() if now is None else now
    token = uuid.uuid4().hex
    reclaimed, remaining, blob = resources.scripts().buffer_claim(
        keys=[keys.buffer(name), keys.buffer_claims(name), keys.buffer_processing(name, token)],
        args=[
            token,
            spec.batch_size,
            repr(now + spec.claim_timeout),
            repr(now),
            keys.buffer_processing(name, ""),
            repr(max_age),
        ],
    )
    if reclaimed:
        log.warning("buffer_claims_reclaimed", buffer=name, rows=int(reclaimed))
    return _Claim(token, int(reclaimed), int(remaining), blob.split(b"\n") if blob else [])


def release(name: str, token: str) -> None:
    """Give claim ``token``'s batch back to the buffer, via the next claim of any flush.

    Its deadline becomes 0, so the next claim pushes its rows back to the head of the buffer
    before taking a batch. A claim already forgotten is left alone.
    """
    resources.redis_client().zadd(keys.buffer_claims(name), {token: 0}, xx=True)


def _drop_claim(name: str, token: str) -> None:
    """Forget a committed batch: its rows and its claim (one transaction)."""
    with resources.redis_client().pipeline(transaction=True) as pipe:
        pipe.delete(keys.buffer_processing(name, token))
        pipe.zrem(keys.buffer_claims(name), token)
        pipe.execute()


def _dead_letter(name: str, row: bytes, error: Exception) -> None:
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
            return
    record.kwargs = {"buffer": name}
    record.raw_message = base64.b64encode(row).decode()
    deadletters.write(resources.engine(), record)


def _unframeable(rows: Sequence[bytes]) -> list[Rejection]:
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


def _write_claimed(name: str, spec: BufferSpec, batch: _Claim, result: FlushResult) -> None:
    """Write one claimed batch, dead-letter what the database refused, then drop the claim."""
    rows = batch.rows
    try:
        written, rejected = write_batch(name, spec, rows, timeout=spec.claim_timeout / 2)
    except psycopg.DataError:
        # COPY refused the whole batch: some item breaks its line format.
        rejected = _unframeable(rows)
        if not rejected:
            raise
        bad = {rejection.index for rejection in rejected}
        good = [row for index, row in enumerate(rows) if index not in bad]
        written, more = write_batch(name, spec, good, timeout=spec.claim_timeout / 2)
        positions = [index for index in range(len(rows)) if index not in bad]
        rejected += [Rejection(positions[r.index], r.error) for r in more]
    failpoint("buffer_after_commit")
    for rejection in rejected:
        _dead_letter(name, rows[rejection.index], rejection.error)
    if rejected:
        log.error(
            "buffer_rows_rejected",
            buffer=name,
            rows=len(rejected),
            error=type(rejected[0].error).__name__,
            detail=str(rejected[0].error).splitlines()[0][:200],
        )
    _drop_claim(name, batch.token)
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

    Failure modes: PostgreSQL unreachable → the claimed batch is given back (:func:`release`)
    and the error is raised (an ``UNAVAILABLE_ERRORS`` type); a crash of this process → its claim
    is pushed back by a later flush after ``claim_timeout``; Redis unreachable →
    ``redis.RedisError`` (rows already claimed stay claimed until their deadline).
    """
    settings = settings or get_settings()
    spec = buffer_spec(name, settings)
    started = time.monotonic()
    deadline = started + (settings.buffer_flush_budget if budget is None else budget)
    partial_age = spec.max_age if max_age is None else max_age
    result = FlushResult(buffer=name)
    resources.redis_client().delete(keys.buffer_flush_requested(name))

    def next_batch() -> _Claim:
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
                _give_back(name, batch.token, exc)
                if upcoming is not None:
                    with contextlib.suppress(Exception):
                        _give_back(name, upcoming.result().token, exc)
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


def _give_back(name: str, token: str, exc: BaseException) -> None:
    """After a failed write, hand the batch to the next flush (else it waits for its deadline)."""
    with contextlib.suppress(redis.RedisError):  # Redis down too: the deadline hands them back
        release(name, token)
    log.warning("buffer_flush_failed", buffer=name, error=type(exc).__name__)


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


# -- tasks ------------------------------------------------------------------------------------


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
