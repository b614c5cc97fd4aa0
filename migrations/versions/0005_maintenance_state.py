"""Maintenance state: one row per materialized view (last refresh, duration, error, counts).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "view_refresh_state",
        sa.Column("view", sa.Text, primary_key=True),
        sa.Column("last_started_at", sa.DateTime(timezone=True)),
        sa.Column("last_success_at", sa.DateTime(timezone=True)),
        sa.Column("last_duration_ms", sa.Float),
        sa.Column("last_concurrently", sa.Boolean),
        sa.Column("last_error", sa.Text),
        sa.Column("last_error_at", sa.DateTime(timezone=True)),
        sa.Column("refreshes", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("skips", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("failures", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    )


def downgrade() -> None:
    op.drop_table("view_refresh_state")
