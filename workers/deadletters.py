"""Dead-letter records and their store (used by the DeadLetter policy, the consumer and jobctl).

Writes are idempotent per job id: a message redelivered after a crash between the insert and
the ack updates the same row instead of adding a second one.
"""

from __future__ import annotations

import traceback as tb
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, Select, Text, delete, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import InterfaceError, OperationalError

from workers.db import dead_letters
from workers.errors import DeadLetterUnavailable
from workers.redaction import redact, redact_text

if TYPE_CHECKING:
    from collections.abc import Collection, Iterator

    from sqlalchemy import Connection, Row

#: Machine-readable dead-letter reasons.
REASONS = frozenset(
    {
        "exhausted",  # retryable errors used up every attempt
        "permanent_error",  # PermanentError (or a subclass without its own reason)
        "invalid_args",  # arguments do not bind to the task's signature
        "worker_lost_exhausted",  # the job killed its worker process too many times
        "decode_error",  # the message body or envelope is not decodable JSON
        "unknown_task",  # no task of that name is registered
        "content_disallowed",  # a content type we refuse (pickle, yaml, ...)
        "invalid_message",  # a decodable message that is not a valid task message
    }
)


@dataclass(slots=True)
class DeadLetterRecord:
    """Everything needed to understand and replay a dead job."""

    job_id: str
    task_name: str
    queue: str
    reason: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    priority: int | None = None
    attempts: int = 0
    exc_type: str | None = None
    exc_message: str | None = None
    traceback: str | None = None
    raw_message: str | None = None

    @property
    def fingerprint(self) -> str:
        """Exception type + top frame of the traceback: groups the same failure together."""
        return fingerprint(self.exc_type or self.reason, self.traceback)


def fingerprint(exc_type: str, traceback_text: str | None) -> str:
    """``ExcType@file:function`` of the innermost frame (or just the type)."""
    frame = ""
    for line in (traceback_text or "").splitlines():
        stripped = line.strip()
        if stripped.startswith('File "'):
            parts = stripped.split('"')
            where = stripped.rsplit(" in ", 1)
            frame = f"{parts[1].rsplit('/', 1)[-1]}:{where[-1] if len(where) > 1 else '?'}"
    return f"{exc_type}@{frame}" if frame else exc_type


def from_exception(exc: BaseException, **fields: Any) -> DeadLetterRecord:
    """A record describing ``exc`` (type, redacted message, traceback)."""
    return DeadLetterRecord(
        exc_type=type(exc).__name__,
        exc_message=redact_text(str(exc))[:4000],
        traceback=redact_text("".join(tb.format_exception(exc)))[-16000:],
        **fields,
    )


def write(engine: Engine, record: DeadLetterRecord) -> int:
    """Insert or refresh the dead letter of ``record.job_id``; returns its row id.

    Raises :class:`DeadLetterUnavailable` when PostgreSQL cannot be reached.
    """
    values = {
        "job_id": record.job_id,
        "task_name": record.task_name,
        "queue": record.queue,
        "args": redact(list(record.args)),
        "kwargs": redact(dict(record.kwargs)),
        "idempotency_key": record.idempotency_key,
        "priority": record.priority,
        "attempts": record.attempts,
        "reason": record.reason,
        "exc_type": record.exc_type,
        "exc_message": record.exc_message,
        "traceback": record.traceback,
        "fingerprint": record.fingerprint,
        "raw_message": record.raw_message,
    }
    inserting = insert(dead_letters).values(values)
    statement = inserting.on_conflict_do_update(
        index_elements=[dead_letters.c.job_id],
        set_={
            **{k: inserting.excluded[k] for k in values if k != "job_id"},
            "status": "dead",
            "failure_count": dead_letters.c.failure_count + 1,
            "last_failed_at": func.now(),
        },
    ).returning(dead_letters.c.id)
    try:
        with engine.begin() as conn:
            return int(conn.execute(statement).scalar_one())
    except (OperationalError, InterfaceError) as exc:
        raise DeadLetterUnavailable(f"dead-letter store unreachable: {type(exc).__name__}") from exc


@dataclass(slots=True, frozen=True)
class Selector:
    """Which dead letters an operator means (all fields combine with AND)."""

    ids: tuple[int, ...] = ()
    task: str | None = None
    error: str | None = None  # matches exc_type, reason or fingerprint prefix
    since: datetime | None = None
    until: datetime | None = None
    status: str | None = None

    def apply(self, query: Select[Any]) -> Select[Any]:
        """``query`` narrowed to this selection."""
        c = dead_letters.c
        if self.ids:
            query = query.where(c.id.in_(self.ids))
        if self.task:
            query = query.where(c.task_name == self.task)
        if self.error:
            query = query.where(
                (c.exc_type == self.error)
                | (c.reason == self.error)
                | c.fingerprint.startswith(self.error, autoescape=True)
            )
        if self.since:
            query = query.where(c.last_failed_at >= self.since)
        if self.until:
            query = query.where(c.last_failed_at < self.until)
        if self.status:
            query = query.where(c.status == self.status)
        return query


def list_entries(engine: Engine, selector: Selector, limit: int | None = 50) -> list[Row[Any]]:
    """Dead letters matching ``selector``, newest failure first."""
    query = selector.apply(select(dead_letters)).order_by(dead_letters.c.last_failed_at.desc())
    if limit:
        query = query.limit(limit)
    with engine.connect() as conn:
        return list(conn.execute(query))


def get(engine: Engine, entry_id: int) -> Row[Any] | None:
    """One dead letter by id."""
    with engine.connect() as conn:
        return conn.execute(select(dead_letters).where(dead_letters.c.id == entry_id)).first()


def iterate(engine: Engine, selector: Selector, batch: int = 1000) -> Iterator[Row[Any]]:
    """Stream matching dead letters in id order, ``batch`` rows per query (constant memory)."""
    last_id = 0
    while True:
        query = (
            selector.apply(select(dead_letters))
            .where(dead_letters.c.id > last_id)
            .order_by(dead_letters.c.id)
            .limit(batch)
        )
        with engine.connect() as conn:
            rows = list(conn.execute(query))
        if not rows:
            return
        yield from rows
        last_id = rows[-1].id


def count(engine: Engine, selector: Selector) -> int:
    """How many dead letters match."""
    query = selector.apply(select(func.count()).select_from(dead_letters))
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def stats(engine: Engine, selector: Selector) -> dict[str, list[tuple[str, int]]]:
    """Counts grouped by task and by error fingerprint, largest first."""
    c = dead_letters.c
    result: dict[str, list[tuple[str, int]]] = {}
    with engine.connect() as conn:
        for name, column in (("task", c.task_name), ("fingerprint", c.fingerprint)):
            query = (
                selector.apply(select(column, func.count().label("n")).select_from(dead_letters))
                .group_by(column)
                .order_by(func.count().desc(), column)
            )
            result[name] = [(str(row[0]), int(row[1])) for row in conn.execute(query)]
    return result


def mark_replayed(engine: Engine, entry_id: int, *, queue: str, by: str) -> None:
    """Record a replay on the row (status, count, history)."""
    event = {"at": datetime.now(UTC).isoformat(), "queue": queue, "by": by}
    c = dead_letters.c
    with engine.begin() as conn:
        conn.execute(
            update(dead_letters)
            .where(c.id == entry_id)
            .values(
                status="replayed",
                replay_count=c.replay_count + 1,
                last_replayed_at=func.now(),
                replay_history=c.replay_history.concat([event]),
            )
        )


def mark_replayed_many(
    bind: Engine | Connection, ids: Collection[int], *, queue: str | None, by: str
) -> int:
    """Record one replay on every row of ``ids`` with a single UPDATE; returns rows updated.

    ``queue=None`` records each row's own queue. Given a :class:`Connection`, the update joins
    its transaction: the replay publishes inside it, so a replayed job that dies again before
    the commit waits on the row lock and its new failure is not overwritten by this mark.
    """
    if not ids:
        return 0
    c = dead_letters.c
    event = func.jsonb_build_object(
        "at",
        literal(datetime.now(UTC).isoformat(), Text),
        "queue",
        literal(queue, Text) if queue else c.queue,
        "by",
        literal(by, Text),
    )
    statement = (
        update(dead_letters)
        .where(c.id.in_(list(ids)))
        .values(
            status="replayed",
            replay_count=c.replay_count + 1,
            last_replayed_at=func.now(),
            replay_history=c.replay_history.concat(func.jsonb_build_array(event)),
        )
    )
    if isinstance(bind, Engine):
        with bind.begin() as conn:
            return int(conn.execute(statement).rowcount)
    return int(bind.execute(statement).rowcount)


def purge(engine: Engine, selector: Selector) -> int:
    """Delete matching dead letters; returns how many."""
    chosen = selector.apply(select(dead_letters.c.id)).scalar_subquery()
    with engine.begin() as conn:
        return int(conn.execute(delete(dead_letters).where(dead_letters.c.id.in_(chosen))).rowcount)
