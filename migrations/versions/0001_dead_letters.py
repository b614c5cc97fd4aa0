"""Dead letters and the demo payments table.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.Text, nullable=False, unique=True),
        sa.Column("task_name", sa.Text, nullable=False),
        sa.Column("queue", sa.Text, nullable=False),
        sa.Column("args", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("kwargs", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("idempotency_key", sa.Text),
        sa.Column("priority", sa.Integer),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("exc_type", sa.Text),
        sa.Column("exc_message", sa.Text),
        sa.Column("traceback", sa.Text),
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.Column("raw_message", sa.Text),
        sa.Column("status", sa.Text, nullable=False, server_default=sa.text("'dead'")),
        sa.Column("failure_count", sa.Integer, nullable=False, server_default=sa.text("1")),
        sa.Column(
            "first_failed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "last_failed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("replay_count", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("last_replayed_at", sa.DateTime(timezone=True)),
        sa.Column("replay_history", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    )
    op.create_index("dead_letters_task_status", "dead_letters", ["task_name", "status"])
    op.create_index("dead_letters_last_failed", "dead_letters", ["last_failed_at"])
    op.create_index("dead_letters_fingerprint", "dead_letters", ["fingerprint"])
    op.create_table(
        "demo_payments",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("idempotency_key", sa.Text, nullable=False, unique=True),
        sa.Column("order_id", sa.Integer, nullable=False),
        sa.Column("amount_cents", sa.Integer, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )


def downgrade() -> None:
    op.drop_table("demo_payments")
    op.drop_table("dead_letters")
