"""Stampede-safe reads: :func:`get_or_load`, with stale-while-revalidate through a job.

A stale value is returned at once and one ``cache.refresh`` job is enqueued with the
idempotency key ``cache.refresh:<key digest>:<stale version>``, so all the readers of one stale
value enqueue one refresh.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from jobs.cache.loaders import dotted_name, resolve
from jobs.cache.locks import load_locked
from jobs.cache.tasks import refresh
from jobs.cache.values import get
from jobs.enqueue import enqueue
from workers.canonical import check_json
from workers.errors import BrokerUnavailable, InvalidJob, QueueFull
from workers.publisher import REDIS_ERRORS
from workers.settings import get_settings

log = structlog.get_logger("jobs.cache")


def get_or_load(
    key: str,
    loader: Callable[..., Any] | str,
    ttl: float,
    *,
    stale_while_revalidate: float = 0.0,
    params: Mapping[str, Any] | None = None,
    ttl_jitter: float = 0.0,
    wait: float | None = None,
) -> Any:
    """The value of ``key``: cached if fresh, else loaded once by ``loader(**params)``.

    - fresh → returned;
    - stale and ``stale_while_revalidate`` > 0 → the stale value is returned at once and one
      ``cache.refresh`` job is enqueued per stale version (deduplicated), which reloads the
      key under its lock; the loader must then be importable (a module-level function or
      ``"module:function"``) and ``params`` JSON-native, else :class:`InvalidJob`;
    - missing (or stale without a window) → loaded under the per-key lock: of many
      concurrent callers one loads, the others wait up to ``wait`` seconds (default
      ``cache_lock_wait``) for its value, then load themselves.

    The value is stored for ``ttl`` seconds (minus up to ``ttl_jitter`` of it) and kept
    ``stale_while_revalidate`` seconds longer. The returned value is always the JSON form
    (tuples become lists). A loader error propagates and nothing is cached; an unreachable
    Redis raises :class:`BrokerUnavailable`.
    """
    if not ttl > 0:
        raise InvalidJob("ttl must be > 0 seconds", field="ttl")
    arguments = dict(params or {})
    loader_name: str | None = None
    if stale_while_revalidate > 0:
        loader_name = loader.strip() if isinstance(loader, str) else dotted_name(loader)
        check_json(arguments, "params")
    cached = get(key)
    if cached is not None:
        if cached.fresh:
            return cached.value
        if loader_name is not None:
            request_refresh(
                key,
                loader_name,
                arguments,
                version=cached.version,
                ttl=ttl,
                ttl_jitter=ttl_jitter,
                stale_while_revalidate=stale_while_revalidate,
            )
            return cached.value
    func = resolve(loader) if isinstance(loader, str) else loader
    try:
        return load_locked(
            key,
            lambda: func(**arguments),
            ttl=ttl,
            ttl_jitter=ttl_jitter,
            stale_while_revalidate=stale_while_revalidate,
            wait=get_settings().cache_lock_wait if wait is None else wait,
        )
    except REDIS_ERRORS as exc:
        raise BrokerUnavailable(f"cache unavailable: {exc}") from exc


def refresh_key(key: str) -> str:
    """The idempotency-key stem of refreshes of ``key`` (a digest: keys may be long)."""
    return f"cache.refresh:{hashlib.sha256(key.encode()).hexdigest()[:32]}"


def request_refresh(
    key: str,
    loader: str,
    params: dict[str, Any],
    *,
    version: int,
    ttl: float,
    ttl_jitter: float,
    stale_while_revalidate: float,
) -> bool:
    """Enqueue the one ``cache.refresh`` of ``key``'s stale ``version``; False if refused.

    A full queue or an unreachable broker is logged, not raised: the reader keeps its stale
    value, and the next reader asks again.
    """
    try:
        ref = enqueue(
            refresh,
            key=f"{refresh_key(key)}:{version}",
            cache_key=key,
            loader=loader,
            params=params,
            ttl=ttl,
            ttl_jitter=ttl_jitter,
            stale_while_revalidate=stale_while_revalidate,
        )
    except (QueueFull, BrokerUnavailable) as exc:
        log.warning("cache_refresh_not_enqueued", cache_key=key, error=type(exc).__name__)
        return False
    if not ref.deduplicated:
        log.info("cache_refresh_enqueued", cache_key=key, stale_version=version)
    return True
