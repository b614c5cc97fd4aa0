"""Maintenance connections, shared by ``jobs.partitions`` and ``jobs.views``.

Dedicated autocommit psycopg connections, advisory-lock keys, the classification of database
errors into retry or permanent failure, and the clock seam tests move through time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
import sqlalchemy.exc
from sqlalchemy import Engine

from workers.errors import PermanentError, Retry

#: What the maintenance functions call to learn the time (tests pass a fake one).
Clock = Callable[[], datetime]

#: PostgreSQL 14: ``DETACH PARTITION ... CONCURRENTLY``, ``client_connection_check_interval``.
PG14 = 140000


def utcnow() -> datetime:
    """The real clock: the current time in UTC."""
    return datetime.now(UTC)


def advisory_key(kind: str, name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``(kind, name)`` (same on every host)."""
    digest = hashlib.blake2b(f"jobs-maintenance:{kind}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextmanager
def pg_connect(
    engine: Engine, *, application_name: str = "jobs-maintenance", connect_timeout: int = 5
) -> Iterator[psycopg.Connection[Any]]:
    """A dedicated autocommit psycopg connection to ``engine``'s database (closed after).

    Dedicated, not pooled: maintenance sets session state (time zone, advisory locks) and runs
    statements that refuse transaction blocks (``DETACH ... CONCURRENTLY``). Its time zone is
    UTC so partition bounds read back in UTC.
    """
    conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(
        conninfo,
        autocommit=True,
        connect_timeout=connect_timeout,
        application_name=application_name[:63],
    ) as conn:
        conn.execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'")
        yield conn


@contextmanager
def classified(what: str) -> Iterator[None]:
    """Turn database errors into our control flow: transient → Retry, the rest → permanent.

    Operational errors (connection lost, lock or statement timeout, serialization failure,
    deadlock, server shutting down) are retried; programming, data and integrity errors
    (undefined or duplicate object, privileges, constraint violations) cannot succeed by
    retrying and become :class:`PermanentError`.
    """
    try:
        yield
    except (psycopg.OperationalError, sqlalchemy.exc.OperationalError) as exc:
        raise Retry(message=f"{what}: {type(exc).__name__}: {exc}".strip()) from exc
    except (
        psycopg.ProgrammingError,
        psycopg.DataError,
        psycopg.IntegrityError,
        psycopg.NotSupportedError,
    ) as exc:
        raise PermanentError(f"{what}: {type(exc).__name__}: {exc}".strip()) from exc
