"""Webhook state in Postgres: endpoints, messages and deliveries (named queries, one place).

Secrets live only here and in the signing code: task messages, logs, dead letters and the
CLI's listings carry endpoint ids, never a secret.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, bindparam, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from jobs.webhooks import signing
from workers import ratelimits
from workers.db import webhook_deliveries, webhook_endpoints, webhook_messages
from workers.errors import InvalidJob

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine, Row

#: Subscribes an endpoint to every event type.
ALL_EVENTS = "*"
#: Event types and ids: letters, digits and ``._:-`` (they travel in headers and URLs).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")


class Status(StrEnum):
    """Where a delivery stands."""

    PENDING = "pending"  # published, first attempt not made yet
    RETRYING = "retrying"  # an attempt failed; the next one is scheduled
    DELIVERED = "delivered"  # a 2xx answer
    FAILED = "failed"  # dead-lettered (permanent error or attempts exhausted)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A subscriber (secrets included: never log or print this object whole)."""

    id: int
    url: str
    description: str
    event_types: tuple[str, ...]
    secrets: tuple[dict[str, Any], ...]
    rate_limit: str | None
    active: bool
    disabled_reason: str | None
    created_at: datetime

    def valid_secrets(self, now: datetime) -> list[str]:
        """Secrets that sign right now (an old one stays valid until its rotation grace ends)."""
        return [
            entry["secret"]
            for entry in self.secrets
            if entry.get("expires_at") is None or datetime.fromisoformat(entry["expires_at"]) > now
        ]

    def public(self, now: datetime) -> dict[str, Any]:
        """What the CLI shows: everything but the secrets (their count instead)."""
        return {
            "id": self.id,
            "url": self.url,
            "description": self.description,
            "event_types": list(self.event_types),
            "rate_limit": self.rate_limit,
            "active": self.active,
            "disabled_reason": self.disabled_reason,
            "secrets": len(self.valid_secrets(now)),
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Attempt:
    """Everything one delivery attempt needs, loaded in one query."""

    delivery_id: int
    status: Status
    event_id: str
    body: bytes
    endpoint: Endpoint


def check_name(value: object, field: str) -> str:
    """``value`` if it is a valid event type / event id, else ``InvalidJob`` naming ``field``."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidJob(
            f"{field} must be 1-200 characters of letters, digits and ._:- "
            f"(starting with a letter or digit), got {value!r}",
            field=field,
        )
    return value


def check_rate(value: str | None) -> str | None:
    """A valid rate spec (``10/s``) or ``None``; ``InvalidJob`` naming ``rate_limit``."""
    if value is None or value == "":
        return None
    return ratelimits.parse_rate(value, field="rate_limit").spec


def _endpoint(row: Row[Any]) -> Endpoint:
    return Endpoint(
        id=row.id,
        url=row.url,
        description=row.description,
        event_types=tuple(row.event_types),
        secrets=tuple(row.secrets),
        rate_limit=row.rate_limit,
        active=row.active,
        disabled_reason=row.disabled_reason,
        created_at=row.created_at,
    )


# -- endpoints --------------------------------------------------------------------------------


def add_endpoint(
    engine: Engine,
    *,
    url: str,
    event_types: list[str] | None = None,
    description: str = "",
    rate_limit: str | None = None,
    secret: str | None = None,
) -> tuple[Endpoint, str]:
    """Store a new endpoint; returns it and its signing secret (shown to the operator once).

    The URL must already have passed the SSRF guard (see :func:`jobs.webhooks.add_endpoint`).
    """
    types = [check_name(t, "event_types") if t != ALL_EVENTS else t for t in event_types or []]
    secret = secret or signing.generate_secret()
    try:
        signing.secret_key(secret)
    except ValueError as exc:
        raise InvalidJob(str(exc), field="secret") from None
    now = datetime.now(UTC)
    with engine.begin() as conn:
        row = conn.execute(
            insert(webhook_endpoints)
            .values(
                url=url,
                description=description,
                event_types=types or [ALL_EVENTS],
                secrets=[{"secret": secret, "created_at": now.isoformat(), "expires_at": None}],
                rate_limit=check_rate(rate_limit),
            )
            .returning(webhook_endpoints)
        ).one()
    return _endpoint(row), secret


def get_endpoint(engine: Engine, endpoint_id: int) -> Endpoint | None:
    """The endpoint, or ``None``."""
    with engine.connect() as conn:
        row = conn.execute(
            select(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id)
        ).one_or_none()
    return None if row is None else _endpoint(row)


def list_endpoints(engine: Engine, *, active: bool | None = None) -> list[Endpoint]:
    """Every endpoint (or only the active / disabled ones), oldest first."""
    query = select(webhook_endpoints).order_by(webhook_endpoints.c.id)
    if active is not None:
        query = query.where(webhook_endpoints.c.active.is_(active))
    with engine.connect() as conn:
        return [_endpoint(row) for row in conn.execute(query)]


def set_active(engine: Engine, endpoint_id: int, *, active: bool, reason: str | None) -> bool:
    """Enable or disable an endpoint; False when it does not exist."""
    with engine.begin() as conn:
        result = conn.execute(
            update(webhook_endpoints)
            .where(webhook_endpoints.c.id == endpoint_id)
            .values(
                active=active,
                disabled_reason=None if active else reason,
                disabled_at=None if active else func.now(),
                updated_at=func.now(),
            )
        )
    return result.rowcount == 1


def rotate_secret(engine: Engine, endpoint_id: int, *, grace: timedelta) -> str | None:
    """Add a new secret; the current ones keep signing for ``grace``, then expire.

    Returns the new secret (``None`` when the endpoint does not exist). Both signatures are
    sent during the grace period, so receivers can switch at their own pace.
    """
    now = datetime.now(UTC)
    new_secret = signing.generate_secret()
    with engine.begin() as conn:
        row = conn.execute(
            select(webhook_endpoints.c.secrets)
            .where(webhook_endpoints.c.id == endpoint_id)
            .with_for_update()
        ).one_or_none()
        if row is None:
            return None
        expiry = (now + grace).isoformat()
        kept = []
        for entry in row.secrets:
            expires = entry.get("expires_at")
            if expires is not None and datetime.fromisoformat(expires) <= now:
                continue
            kept.append({**entry, "expires_at": min(expires or expiry, expiry)})
        if grace <= timedelta(0):
            kept = []
        kept.append({"secret": new_secret, "created_at": now.isoformat(), "expires_at": None})
        conn.execute(
            update(webhook_endpoints)
            .where(webhook_endpoints.c.id == endpoint_id)
            .values(secrets=kept, updated_at=func.now())
        )
    return new_secret


def subscribed(conn: Connection, event_type: str) -> list[tuple[int, str]]:
    """(id, url) of the active endpoints subscribed to ``event_type``."""
    types = webhook_endpoints.c.event_types
    rows = conn.execute(
        select(webhook_endpoints.c.id, webhook_endpoints.c.url)
        .where(
            webhook_endpoints.c.active.is_(True),
            or_(types.contains([event_type]), types.contains([ALL_EVENTS])),
        )
        .order_by(webhook_endpoints.c.id)
    )
    return [(row.id, row.url) for row in rows]


# -- messages and deliveries -----------------------------------------------------------------


def store_message(conn: Connection, *, event_id: str, event_type: str, body: bytes) -> bytes:
    """Insert the event (first publication wins); returns the body stored for ``event_id``.

    Publishing an existing event id again is idempotent; reusing it for another event type is
    refused (``InvalidJob`` naming ``event_id``).
    """
    conn.execute(
        pg_insert(webhook_messages)
        .values(event_id=event_id, event_type=event_type, body=body)
        .on_conflict_do_nothing(index_elements=["event_id"])
    )
    row = conn.execute(
        select(webhook_messages.c.event_type, webhook_messages.c.body).where(
            webhook_messages.c.event_id == event_id
        )
    ).one()
    if row.event_type != event_type:
        raise InvalidJob(
            f"event_id {event_id!r} was already published as a {row.event_type!r} event",
            field="event_id",
        )
    return bytes(row.body)


def store_deliveries(conn: Connection, event_id: str, endpoint_ids: list[int]) -> list[int]:
    """Create the missing deliveries of ``event_id``; returns the endpoints still to deliver.

    Deliveries already made (status delivered) are left alone, so publishing an event again
    never re-sends what was received.
    """
    if endpoint_ids:
        conn.execute(
            pg_insert(webhook_deliveries)
            .values([{"event_id": event_id, "endpoint_id": e} for e in endpoint_ids])
            .on_conflict_do_nothing(constraint="webhook_deliveries_event_endpoint")
        )
    rows = conn.execute(
        select(webhook_deliveries.c.endpoint_id).where(
            webhook_deliveries.c.event_id == event_id,
            webhook_deliveries.c.endpoint_id.in_(endpoint_ids),
            webhook_deliveries.c.status != Status.DELIVERED.value,
        )
    )
    return sorted(row.endpoint_id for row in rows)


#: One attempt's data in one statement, built once (bound per call).
_ATTEMPT_QUERY = (
    select(
        webhook_deliveries.c.id.label("delivery_id"),
        webhook_deliveries.c.status,
        webhook_messages.c.body,
        *[column.label(f"endpoint_{column.name}") for column in webhook_endpoints.columns],
    )
    .select_from(
        webhook_deliveries.join(
            webhook_endpoints, webhook_endpoints.c.id == webhook_deliveries.c.endpoint_id
        ).join(webhook_messages, webhook_messages.c.event_id == webhook_deliveries.c.event_id)
    )
    .where(
        and_(
            webhook_deliveries.c.event_id == bindparam("event_id"),
            webhook_deliveries.c.endpoint_id == bindparam("endpoint_id"),
        )
    )
)


def autocommit(engine: Engine) -> Connection:
    """A connection whose single statements commit themselves (no BEGIN/COMMIT round trips).

    A delivery attempt reads once and writes once; each statement is atomic on its own.
    """
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


def load_attempt(engine: Engine, *, event_id: str, endpoint_id: int) -> Attempt | None:
    """The delivery, its endpoint and the body to send, in one query (``None``: not found)."""
    with autocommit(engine) as conn:
        row = conn.execute(
            _ATTEMPT_QUERY, {"event_id": event_id, "endpoint_id": endpoint_id}
        ).one_or_none()
    if row is None:
        return None
    mapping = row._mapping  # noqa: SLF001 - SQLAlchemy's public row mapping accessor
    endpoint = Endpoint(
        id=mapping["endpoint_id"],
        url=mapping["endpoint_url"],
        description=mapping["endpoint_description"],
        event_types=tuple(mapping["endpoint_event_types"]),
        secrets=tuple(mapping["endpoint_secrets"]),
        rate_limit=mapping["endpoint_rate_limit"],
        active=mapping["endpoint_active"],
        disabled_reason=mapping["endpoint_disabled_reason"],
        created_at=mapping["endpoint_created_at"],
    )
    return Attempt(
        delivery_id=mapping["delivery_id"],
        status=Status(mapping["status"]),
        event_id=event_id,
        body=bytes(mapping["body"]),
        endpoint=endpoint,
    )


def record_attempt(
    engine: Engine,
    delivery_id: int,
    *,
    attempt: int,
    status: Status,
    status_code: int | None,
    error: str | None,
    duration_ms: int | None,
    next_attempt_in: float | None = None,
) -> None:
    """Store the outcome of one attempt on its delivery row."""
    now = func.now()
    values: dict[str, Any] = {
        "status": status.value,
        "attempts": func.greatest(webhook_deliveries.c.attempts, attempt),
        "last_status_code": status_code,
        "last_error": error,
        "last_duration_ms": duration_ms,
        "last_attempt_at": now,
        "next_attempt_at": (
            None if next_attempt_in is None else now + timedelta(seconds=next_attempt_in)
        ),
    }
    if status is Status.DELIVERED:
        values["delivered_at"] = now
    with autocommit(engine) as conn:
        conn.execute(
            update(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id).values(values)
        )


def list_deliveries(
    engine: Engine,
    *,
    endpoint_id: int | None = None,
    status: Status | None = None,
    event_id: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Deliveries, newest first, filtered by endpoint, status and event."""
    d = webhook_deliveries
    query = select(d).order_by(d.c.id.desc()).limit(limit)
    if endpoint_id is not None:
        query = query.where(d.c.endpoint_id == endpoint_id)
    if status is not None:
        query = query.where(d.c.status == status.value)
    if event_id is not None:
        query = query.where(d.c.event_id == event_id)
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [dict(row) for row in rows]


def delivery_counts(engine: Engine) -> dict[str, int]:
    """Deliveries per status."""
    d = webhook_deliveries
    with engine.connect() as conn:
        rows = conn.execute(select(d.c.status, func.count()).group_by(d.c.status))
        return {row[0]: row[1] for row in rows}
