"""Demo domain: ``events`` partitioned by month on ``created_at``, and ``mv_daily_stats``.

Only the partitioned parent is created here: its partitions (``events_pYYYYMM``) and the
optional ``events_default`` are made at run time by ``jobs.partitions`` (``ensure_all``, called
by ``jobctl migrate``, the demo and the daily ``partitions.ensure`` job). Until then an insert
into ``events`` fails with "no partition of relation events found for row".

``mv_daily_stats`` has the unique index on ``day`` that ``REFRESH ... CONCURRENTLY`` needs, and
is created populated (empty), so the first scheduled refresh can already be concurrent.
Revenue only counts a numeric ``payload->'amount'`` of ``purchase`` events: one malformed
payload must not make every refresh fail. ``conversion_rate`` is the share of the day's
active users who purchased.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

EVENTS = """
CREATE TABLE events (
    id uuid NOT NULL,
    user_id bigint NOT NULL,
    event_type text NOT NULL,
    payload jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at)
"""

DAILY_STATS = """
CREATE MATERIALIZED VIEW mv_daily_stats AS
SELECT
    (created_at AT TIME ZONE 'UTC')::date AS day,
    count(DISTINCT user_id) AS unique_users,
    count(*) AS total_events,
    count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
    coalesce(
        sum((payload ->> 'amount')::numeric)
            FILTER (WHERE event_type = 'purchase' AND jsonb_typeof(payload -> 'amount') = 'number'),
        0
    ) AS revenue,
    count(*) FILTER (WHERE event_type = 'signup') AS signups,
    round(
        count(DISTINCT user_id) FILTER (WHERE event_type = 'purchase')::numeric
            / nullif(count(DISTINCT user_id), 0),
        4
    ) AS conversion_rate
FROM events
GROUP BY 1
WITH DATA
"""


def upgrade() -> None:
    op.execute(EVENTS)
    op.execute(DAILY_STATS)
    op.execute("CREATE UNIQUE INDEX mv_daily_stats_day ON mv_daily_stats (day)")


def downgrade() -> None:
    op.execute("DROP MATERIALIZED VIEW IF EXISTS mv_daily_stats")
    op.execute("DROP TABLE IF EXISTS events")  # its partitions go with it
