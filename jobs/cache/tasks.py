"""The cache tasks ``cache.warm``, ``cache.load`` and ``cache.refresh``, with their beat entries."""

from __future__ import annotations

import hashlib
import random
from typing import Any

from jobs.cache.locks import owner_token, refresh_value
from jobs.cache.registry import get_warmer, load_chunk, warmers
from jobs.cache.runs import acquire_slot, finish_chunk, release_slot, warm_cache
from workers import ratelimits, resources
from workers.errors import BatchQueueFull, Defer, PermanentError
from workers.settings import Settings, get_settings
from workers.task import current_job, current_key, job

# -- schedule ---------------------------------------------------------------------------------


def schedule_entries(settings: Settings) -> dict[str, dict[str, Any]]:
    """Beat entries: one ``cache.warm`` per warmer, every ``interval`` seconds.

    The default interval is 80 % of the TTL (4 min for 5 min), so values never go stale.
    """
    return {
        f"cache.warm:{name}": {
            "task": "cache.warm",
            "schedule": warmer.interval,
            "kwargs": {"warmer": name},
            "options": {"queue": "cache"},
        }
        for name, warmer in sorted(warmers(settings).items())
    }


# -- tasks ------------------------------------------------------------------------------------


def _final_failure(exc: BaseException) -> bool:
    """Whether ``exc`` ends the current job for good (no retry will follow)."""
    if isinstance(exc, Defer):
        return False
    if isinstance(exc, PermanentError):
        return True
    return current_job().attempt >= int(load.resolved_options()["max_attempts"])


@job(name="cache.warm", queue="cache", time_limit=300, max_attempts=3)
def warm(*, warmer: str) -> None:
    """Start a run of ``warmer`` (see :func:`warm_cache`); skipped while one is going on.

    The run is named after this job's idempotency key, so a redelivered warm resumes its run
    and its chunk jobs deduplicate. A full cache queue defers the warm (no attempt spent).
    """
    run = hashlib.sha256(current_key().encode()).hexdigest()[:16]
    try:
        warm_cache(warmer, run=run)
    except BatchQueueFull as exc:
        raise Defer(max(exc.retry_after, 1.0), "queue_full") from exc


# Each chunk is already a batch, and chunks must run side by side up to max_concurrency:
# one message per chunk.
@job(name="cache.load", queue="cache", time_limit=120, max_attempts=3, envelope_size=1)
def load(
    *, warmer: str, keys: list[dict[str, Any]], run: str | None = None, chunk: int | None = None
) -> None:
    """Load and store one chunk of ``warmer``'s keys.

    Takes a start slot of the warmer's ``rate`` (else deferred to its reserved slot) and one
    of its ``max_concurrency`` load slots (else deferred ``cache_slot_wait`` seconds,
    jittered); neither spends an attempt. Marks its chunk finished in the run when it is done
    or has failed for good.
    """
    spec = get_warmer(warmer)
    settings = get_settings()
    if spec.rate:
        wait = ratelimits.acquire(
            resources.scripts(),
            ratelimits.limit_name("cache.load", spec.name),
            declared=ratelimits.declared_rate(spec.rate, None),
            job_id=current_job().id,
            recovery=settings.throttle_recovery,
        )
        if wait > 0:
            raise Defer(wait, "rate_limited")
    token = owner_token()
    lease = float(load.time_limit or settings.time_limit) + settings.claim_lease_margin
    if not acquire_slot(spec, token, lease):
        delay = settings.cache_slot_wait * random.uniform(0.5, 1.5)  # noqa: S311
        raise Defer(delay, "cache_concurrency")
    try:
        load_chunk(spec, keys)
    except Exception as exc:
        if run is not None and chunk is not None and _final_failure(exc):
            finish_chunk(spec.name, run, chunk)
        raise
    finally:
        release_slot(spec, token)
    if run is not None and chunk is not None:
        finish_chunk(spec.name, run, chunk)


@job(name="cache.refresh", queue="cache", time_limit=60, max_attempts=3)
def refresh(
    *,
    cache_key: str,
    loader: str,
    params: dict[str, Any],
    ttl: float,
    ttl_jitter: float = 0.0,
    stale_while_revalidate: float = 0.0,
) -> None:
    """Reload a stale ``cache_key`` for :func:`get_or_load` (see :func:`refresh_value`)."""
    refresh_value(
        cache_key,
        loader,
        params,
        ttl=ttl,
        ttl_jitter=ttl_jitter,
        stale_while_revalidate=stale_while_revalidate,
    )
