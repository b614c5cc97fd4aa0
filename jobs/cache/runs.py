"""Warm runs: single-flight per warmer, fanned out as chunk jobs, bounded by load slots.

A run of a warmer is single-flight (``cache_run.lua``: a run lock with an owner token and a
lease of ``run_timeout``, released when its last chunk finishes). At most ``max_concurrency``
chunk loads of a warmer run at once (``cache_slot.lua``, a semaphore with leases).
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass

import structlog

from jobs.cache.registry import Warmer, get_warmer, list_keys
from jobs.enqueue import Call, enqueue_many
from workers import keys as redis_keys
from workers import resources
from workers.errors import BatchQueueFull
from workers.publisher import REDIS_ERRORS

log = structlog.get_logger("jobs.cache")


@dataclass(frozen=True, slots=True)
class WarmResult:
    """What one warm did: skipped (a run was going on), or how many keys and chunks it sent."""

    warmer: str
    run: str
    skipped: bool = False
    keys: int = 0
    chunks: int = 0
    resumed: bool = False


def _run(mode: str, warmer: str, token: str, arg: int = 0) -> int:
    reply = resources.scripts().cache_run(
        keys=[redis_keys.cache_run(warmer), redis_keys.cache_run_done(warmer)],
        args=[mode, token, arg],
    )
    return int(reply)


def chunk_key(warmer: str, run: str, chunk: int) -> str:
    """The idempotency key of one chunk job of a run."""
    return f"cache.load:{warmer}:{run}:{chunk}"


def warm_cache(warmer: str, *, run: str | None = None) -> WarmResult:
    """Start a run of ``warmer``: list its keys, enqueue one ``cache.load`` job per chunk.

    Skipped (``skipped=True``, nothing enqueued) while a previous run of the same warmer is
    still going, i.e. until its last chunk finished or its ``run_timeout`` passed. ``run``
    names the run: the same name resumes that run (its chunk jobs come back deduplicated).
    Raises :class:`~workers.errors.BatchQueueFull` when the cache queue refuses chunks (the
    run stays held: call again with the same ``run`` to finish the fan-out).
    """
    # Imported here: the tasks module imports this one (``cache.warm`` starts runs).
    from jobs.cache.tasks import load  # noqa: PLC0415

    spec = get_warmer(warmer)
    token = run or uuid.uuid4().hex
    started = _run("start", spec.name, token, int(spec.run_timeout * 1000))
    if started == 0:
        resources.redis_client().incr(redis_keys.counter("cache_warm_skipped"))
        log.info("cache_warm_skipped", warmer=spec.name, reason="previous_run_going")
        return WarmResult(warmer=spec.name, run=token, skipped=True)
    try:
        params = list_keys(spec)
        chunks = [params[i : i + spec.chunk_size] for i in range(0, len(params), spec.chunk_size)]
        _run("total", spec.name, token, len(chunks))
        if chunks:
            enqueue_many(
                load,
                [
                    Call(
                        kwargs={"warmer": spec.name, "keys": chunk, "run": token, "chunk": n},
                        key=chunk_key(spec.name, token, n),
                    )
                    for n, chunk in enumerate(chunks)
                ],
            )
    except BatchQueueFull:
        raise
    except Exception:
        with contextlib.suppress(*REDIS_ERRORS):  # the original error is the one to report
            _run("end", spec.name, token)
        raise
    log.info(
        "cache_warm_started",
        warmer=spec.name,
        keys=len(params),
        chunks=len(chunks),
        resumed=started == 2,  # noqa: PLR2004 - cache_run.lua's "resumed"
    )
    return WarmResult(
        warmer=spec.name,
        run=token,
        keys=len(params),
        chunks=len(chunks),
        resumed=started == 2,  # noqa: PLR2004
    )


def finish_chunk(warmer: str, run: str, chunk: int) -> bool:
    """Mark chunk ``chunk`` of run ``run`` finished; True when that ended the run."""
    return _run("finish", warmer, run, chunk) == 1


def acquire_slot(warmer: Warmer, token: str, lease: float) -> bool:
    """Take one of ``warmer``'s ``max_concurrency`` load slots for ``lease`` seconds."""
    taken = resources.scripts().cache_slot(
        keys=[redis_keys.cache_slots(warmer.name)],
        args=["acquire", token, warmer.max_concurrency, max(1, int(lease * 1000))],
    )
    return bool(int(taken))


def release_slot(warmer: Warmer, token: str) -> None:
    """Give a load slot back."""
    resources.scripts().cache_slot(
        keys=[redis_keys.cache_slots(warmer.name)], args=["release", token]
    )
