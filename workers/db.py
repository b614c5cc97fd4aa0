"""SQLAlchemy 2 tables of the system schema (created by the Alembic migrations)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

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

#: Demo domain: orders on hold (a fixable cause of permanent failures).
demo_blocked_orders = Table(
    "demo_blocked_orders",
    metadata,
    Column("order_id", Integer, primary_key=True, autoincrement=False),
    Column("reason", Text, nullable=False),
    Column("blocked_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

#: Demo domain: events, partitioned by month on ``created_at`` (partitions are made at run time
#: by ``jobs.partitions``; Alembic's env.py hides them from autogenerate).
events = Table(
    "events",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("user_id", BigInteger, nullable=False),
    Column("event_type", Text, nullable=False),
    Column("payload", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column(
        "created_at",
        DateTime(timezone=True),
        primary_key=True,
        nullable=False,
        server_default=func.now(),
    ),
    postgresql_partition_by="RANGE (created_at)",
)

#: Webhook subscribers; ``secrets`` holds every signing secret still valid (rotation).
webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("url", Text, nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("event_types", ARRAY(Text), nullable=False, server_default="{*}"),
    Column("secrets", JSONB, nullable=False),
    Column("rate_limit", Text),
    Column("active", Boolean, nullable=False, server_default=text("true")),
    Column("disabled_reason", Text),
    Column("disabled_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("webhook_endpoints_event_types", "event_types", postgresql_using="gin"),
)

#: One row per published event: the exact body bytes every delivery sends.
webhook_messages = Table(
    "webhook_messages",
    metadata,
    Column("event_id", Text, primary_key=True),
    Column("event_type", Text, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

#: One row per (event, endpoint): the delivery's state and its last attempt.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column(
        "event_id",
        Text,
        ForeignKey("webhook_messages.event_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column(
        "endpoint_id",
        BigInteger,
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("last_status_code", Integer),
    Column("last_error", Text),
    Column("last_duration_ms", Integer),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_attempt_at", DateTime(timezone=True)),
    Column("next_attempt_at", DateTime(timezone=True)),
    Column("delivered_at", DateTime(timezone=True)),
    UniqueConstraint("event_id", "endpoint_id", name="webhook_deliveries_event_endpoint"),
    Index("webhook_deliveries_endpoint_status", "endpoint_id", "status"),
    Index("webhook_deliveries_status_created", "status", "created_at"),
)

#: One row per materialized view in JOBS_VIEWS: refresh bookkeeping (``jobs.views``);
#: staleness is now - ``last_success_at``.
view_refresh_state = Table(
    "view_refresh_state",
    metadata,
    Column("view", Text, primary_key=True),
    Column("last_started_at", DateTime(timezone=True)),
    Column("last_success_at", DateTime(timezone=True)),
    Column("last_duration_ms", Float),
    Column("last_concurrently", Boolean),
    Column("last_error", Text),
    Column("last_error_at", DateTime(timezone=True)),
    Column("refreshes", BigInteger, nullable=False, server_default=text("0")),
    Column("skips", BigInteger, nullable=False, server_default=text("0")),
    Column("failures", BigInteger, nullable=False, server_default=text("0")),
)
