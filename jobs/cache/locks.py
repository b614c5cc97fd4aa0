"""Per-key load locks: of many callers missing a key, one loads it and the others wait for it.

The lock is ``jobs:cache:lock:<key>`` (``SET NX PX`` with an owner token; compare-and-delete
release in ``cache_unlock.lua``). Waiters poll the key for a bounded time, then load
themselves: a holder that died never blocks readers.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from jobs.cache.loaders import resolve
from jobs.cache.values import encode, get, new_version, store_encoded
from workers import keys as redis_keys
from workers import resources
from workers.owners import owner_prefix
from workers.settings import get_settings

log = structlog.get_logger("jobs.cache")

#: First and longest pause (s) between two looks at a key another caller is loading.
WAIT_PAUSE_MIN = 0.005
WAIT_PAUSE_MAX = 0.1


def owner_token() -> str:
    """A fresh lock owner token: this process's owner prefix and a random part."""
    return f"{owner_prefix()}{uuid.uuid4().hex[:12]}"


def _try_lock(key: str, token: str, lease: float) -> bool:
    return bool(
        resources.redis_client().set(
            redis_keys.cache_lock(key), token, nx=True, px=max(1, int(lease * 1000))
        )
    )


def _unlock(key: str, token: str) -> None:
    resources.scripts().cache_unlock(keys=[redis_keys.cache_lock(key)], args=[token])


def load_locked(
    key: str,
    call: Callable[[], Any],
    *,
    ttl: float,
    ttl_jitter: float,
    stale_while_revalidate: float,
    wait: float,
) -> Any:
    """Load ``key`` as the lock holder, or wait (bounded) for the holder's value."""
    settings = get_settings()
    token = owner_token()
    deadline = time.monotonic() + wait
    pause = WAIT_PAUSE_MIN
    while True:
        if _try_lock(key, token, settings.cache_lock_lease):
            try:
                cached = get(key)  # the previous holder may have just stored it
                if cached is not None and cached.fresh:
                    return cached.value
                return _load_and_store(key, call, ttl, ttl_jitter, stale_while_revalidate)
            finally:
                _unlock(key, token)
        cached = get(key)
        if cached is not None and cached.fresh:
            return cached.value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(pause * random.uniform(0.5, 1.0), remaining))  # noqa: S311
        pause = min(pause * 1.5, WAIT_PAUSE_MAX)
    log.warning("cache_lock_wait_exceeded", cache_key=key, waited=wait)
    return _load_and_store(key, call, ttl, ttl_jitter, stale_while_revalidate)


def _load_and_store(
    key: str, call: Callable[[], Any], ttl: float, ttl_jitter: float, stale: float
) -> Any:
    version = new_version()
    data = encode(call(), key)
    store_encoded([(key, data)], version, ttl, ttl_jitter, stale)
    return json.loads(data)


def refresh_value(
    key: str,
    loader: str,
    params: Mapping[str, Any],
    *,
    ttl: float,
    ttl_jitter: float = 0.0,
    stale_while_revalidate: float = 0.0,
) -> bool:
    """Reload ``key`` under its lock; returns whether it did.

    Nothing is done (False) when a load holds the key's lock already or the value is fresh
    again by the time the lock is taken.
    """
    token = owner_token()
    if not _try_lock(key, token, get_settings().cache_lock_lease):
        log.info("cache_refresh_skipped", cache_key=key, reason="load_in_progress")
        return False
    try:
        cached = get(key)
        if cached is not None and cached.fresh:
            return False
        func = resolve(loader)
        _load_and_store(key, lambda: func(**params), ttl, ttl_jitter, stale_while_revalidate)
        return True
    finally:
        _unlock(key, token)
