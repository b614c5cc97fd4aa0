"""Demo jobs: a payment whose side effect is gated by a unique key in PostgreSQL.

The pattern every Postgres side effect should follow: the idempotency key is a UNIQUE column
and the insert is ``ON CONFLICT DO NOTHING``, so even a run the Redis claim could not stop
(a worker frozen past its lease) cannot charge twice.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from workers import resources
from workers.db import demo_payments
from workers.errors import PermanentError
from workers.task import current_job, current_key, job


class PaymentDeclined(PermanentError):
    """The card was declined; retrying will not help."""


class GatewayTimeout(Exception):  # noqa: N818 - names the downstream condition
    """The payment gateway timed out (retryable)."""


def record_payment(*, key: str, order_id: int, amount_cents: int) -> bool:
    """Insert the payment once per key; returns False when it already existed."""
    statement = (
        insert(demo_payments)
        .values(idempotency_key=key, order_id=order_id, amount_cents=amount_cents)
        .on_conflict_do_nothing(index_elements=[demo_payments.c.idempotency_key])
        .returning(demo_payments.c.id)
    )
    with resources.engine().begin() as conn:
        return conn.execute(statement).first() is not None


def payment_exists(order_id: int) -> bool:
    """Whether an order has been charged."""
    with resources.engine().connect() as conn:
        row = conn.execute(
            select(demo_payments.c.id).where(demo_payments.c.order_id == order_id)
        ).first()
    return row is not None


@job(name="demo.charge_order", queue="default", time_limit=30, max_attempts=4, retry_base=0.2, retry_cap=1.0)
def charge_order(*, order_id: int, amount_cents: int, flaky_attempts: int = 0) -> None:
    """Charge an order once. Fails with a gateway timeout on its first ``flaky_attempts``
    attempts (the demo's "retry then succeed"); a negative amount is declined (permanent).
    """
    if amount_cents < 0:
        raise PaymentDeclined(f"order {order_id}: negative amount {amount_cents}")
    if current_job().attempt <= flaky_attempts:
        raise GatewayTimeout(f"order {order_id}: gateway timeout on attempt {current_job().attempt}")
    record_payment(key=current_key(), order_id=order_id, amount_cents=amount_cents)
