"""SQLAlchemy 2 tables of the system schema (created by the Alembic migrations)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

#: One row per dead job (keyed by job id); a replayed job that dies again updates its row.
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("job_id", Text, nullable=False, unique=True),
    Column("task_name", Text, nullable=False),
    Column("queue", Text, nullable=False),
    Column("args", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("kwargs", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("idempotency_key", Text),
    Column("priority", Integer),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("reason", Text, nullable=False),
    Column("exc_type", Text),
    Column("exc_message", Text),
    Column("traceback", Text),
    Column("fingerprint", Text, nullable=False),
    Column("raw_message", Text),  # undecodable / foreign messages, base64 of the bytes
    Column("status", Text, nullable=False, server_default=text("'dead'")),
    Column("failure_count", Integer, nullable=False, server_default=text("1")),
    Column("first_failed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_failed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("replay_count", Integer, nullable=False, server_default=text("0")),
    Column("last_replayed_at", DateTime(timezone=True)),
    Column("replay_history", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Index("dead_letters_task_status", "task_name", "status"),
    Index("dead_letters_last_failed", "last_failed_at"),
    Index("dead_letters_fingerprint", "fingerprint"),
)

#: Demo domain: payments whose side effect is gated by a unique idempotency key.
demo_payments = Table(
    "demo_payments",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("idempotency_key", Text, nullable=False, unique=True),
    Column("order_id", Integer, nullable=False),
    Column("amount_cents", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
