"""Per-process resources (Redis client, SQLAlchemy engine), created lazily after fork.

Each accessor compares the owning pid, so a forked child never reuses its parent's sockets.
"""

from __future__ import annotations

import os
import threading

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Engine, create_engine

from workers.errors import UnsafeBroker
from workers.scripts import Scripts
from workers.settings import Settings, get_settings

_lock = threading.Lock()
_pid: int | None = None
_redis: redis.Redis | None = None
_scripts: Scripts | None = None
_engine: Engine | None = None


def _ensure_process() -> None:
    global _pid, _redis, _scripts, _engine
    if _pid != os.getpid():
        _pid, _redis, _scripts, _engine = os.getpid(), None, None, None


def as_text(value: object) -> str:
    """A Redis reply (bytes or str) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def make_redis(url: str, settings: Settings) -> redis.Redis:
    """A Redis client that fails fast (socket timeouts, no silent retries) instead of hanging."""
    return redis.Redis.from_url(
        url,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_connect_timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
    )


def redis_client() -> redis.Redis:
    """This process's Redis client for our own state."""
    global _redis  # noqa: PLW0603
    with _lock:
        _ensure_process()
        if _redis is None:
            _redis = make_redis(get_settings().redis_url, get_settings())
        return _redis


def scripts() -> Scripts:
    """Our Lua scripts, registered on this process's client."""
    global _scripts  # noqa: PLW0603
    client = redis_client()
    with _lock:
        if _scripts is None:
            _scripts = Scripts(client)
        return _scripts


def engine() -> Engine:
    """This process's SQLAlchemy engine (small pool; PgBouncer-compatible)."""
    global _engine  # noqa: PLW0603
    with _lock:
        _ensure_process()
        if _engine is None:
            settings = get_settings()
            _engine = create_engine(
                settings.database_url,
                pool_size=settings.db_pool_size,
                max_overflow=settings.db_pool_size,
                pool_pre_ping=True,
                connect_args={
                    "connect_timeout": settings.db_connect_timeout,
                    "prepare_threshold": None,  # no server-side prepared statements (PgBouncer)
                },
            )
        return _engine


def dispose() -> None:
    """Forget this process's resources (next access creates fresh ones)."""
    global _pid  # noqa: PLW0603
    with _lock:
        if _engine is not None:
            _engine.dispose(close=False)
        _pid = None


def check_broker_safety(client: redis.Redis, settings: Settings) -> None:
    """Refuse a Redis that may evict queue keys, unless a volatile broker is explicitly allowed."""
    if settings.allow_volatile_broker:
        return
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy", "")
    except redis.ResponseError:
        return  # managed Redis hides CONFIG; its provider's policy applies
    if policy != "noeviction":
        raise UnsafeBroker(
            f"Redis maxmemory-policy is {policy!r}: queue keys could be evicted. Set it to "
            "'noeviction' (redis.conf or CONFIG SET), or set JOBS_ALLOW_VOLATILE_BROKER=true "
            "if losing queued jobs is acceptable."
        )
