"""Demo jobs: a payment whose side effect is gated by a unique key in PostgreSQL.

The pattern every Postgres side effect should follow: the idempotency key is a UNIQUE column
and the insert is ``ON CONFLICT DO NOTHING``, so even a run the Redis claim could not stop
(a worker frozen past its lease) cannot charge twice.

Two permanent failures show the two kinds of dead letter: a negative amount is bad input
(replaying it fails again: the arguments are the problem), while an order on hold in
``demo_blocked_orders`` fails because of *state* an operator can fix (lift the hold, then
``jobctl dlq replay --error OrderBlocked`` charges it, once).
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, MetaData, Table, Text, func, select
from sqlalchemy.dialects.postgresql import insert

from workers import keys, resources
from workers.db import demo_payments
from workers.errors import PermanentError
from workers.task import current_job, current_key, job

#: Redis counter (``keys.counter``) of payments that succeeded after at least one retry.
RETRIED_COUNTER = "demo_charged_after_retry"


class PaymentDeclined(PermanentError):
    """The card was declined; retrying will not help."""


class OrderBlocked(PermanentError):
    """The order is on hold; retrying will not help until the hold is lifted."""


class GatewayTimeout(Exception):
    """The payment gateway timed out (retryable)."""


#: Demo domain: orders on hold (migration 0002). Charging one is declined until it is lifted.
demo_blocked_orders = Table(
    "demo_blocked_orders",
    MetaData(),
    Column("order_id", Integer, primary_key=True),
    Column("reason", Text, nullable=False),
    Column("blocked_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


def record_payment(*, key: str, order_id: int, amount_cents: int) -> bool:
    """Insert the payment once per key; returns False when it already existed.

    Raises :class:`OrderBlocked` (nothing inserted) while the order is on hold.
    """
    hold = select(demo_blocked_orders.c.reason).where(demo_blocked_orders.c.order_id == order_id)
    statement = (
        insert(demo_payments)
        .values(idempotency_key=key, order_id=order_id, amount_cents=amount_cents)
        .on_conflict_do_nothing(index_elements=[demo_payments.c.idempotency_key])
        .returning(demo_payments.c.id)
    )
    with resources.engine().begin() as conn:
        reason = conn.execute(hold).scalar()
        if reason is not None:
            raise OrderBlocked(f"order {order_id} is on hold: {reason}")
        return conn.execute(statement).first() is not None


def payment_exists(order_id: int) -> bool:
    """Whether an order has been charged."""
    with resources.engine().connect() as conn:
        row = conn.execute(
            select(demo_payments.c.id).where(demo_payments.c.order_id == order_id)
        ).first()
    return row is not None


@job(
    name="demo.charge_order",
    queue="default",
    time_limit=30,
    max_attempts=4,
    retry_base=0.2,
    retry_cap=1.0,
)
def charge_order(*, order_id: int, amount_cents: int, flaky_attempts: int = 0) -> None:
    """Charge an order once (the payment row's UNIQUE key is the once-only gate).

    Fails with a gateway timeout on its first ``flaky_attempts`` attempts (the demo's "retry
    then succeed"); a negative amount is declined and an order on hold is blocked (both
    permanent: dead-lettered at once).
    """
    if amount_cents < 0:
        raise PaymentDeclined(f"order {order_id}: negative amount {amount_cents}")
    attempt = current_job().attempt
    if attempt <= flaky_attempts:
        raise GatewayTimeout(f"order {order_id}: gateway timeout on attempt {attempt}")
    charged = record_payment(key=current_key(), order_id=order_id, amount_cents=amount_cents)
    if charged and attempt > 1:
        # A demo metric: payments that needed a retry (counted once, on the first insert).
        resources.redis_client().incr(keys.counter(RETRIED_COUNTER))
