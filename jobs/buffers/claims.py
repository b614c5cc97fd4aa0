"""The Redis side of a flush: atomic claims of batches, given back or dropped after commit.

A claim moves up to ``batch_size`` rows from the head of the buffer into the flush's batch key
(``jobs:buffer:<name>:processing:<token>``) and records it with a deadline (``buffer_claim.lua``);
a claim past its deadline is an orphan of a crashed flush, pushed back by the next claim.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass

import redis
import structlog

from workers import keys, resources
from workers.registries import BufferSpec

log = structlog.get_logger("jobs.buffers")


@dataclass(slots=True)
class Claim:
    """A claimed batch: its token, its rows, and the buffer's state at the claim."""

    token: str
    reclaimed: int
    remaining: int
    rows: list[bytes]


def claim(name: str, spec: BufferSpec, *, max_age: float, now: float | None = None) -> Claim:
    """Claim up to ``batch_size`` rows of ``name`` (after pushing orphaned claims back)."""
    now = time.time() if now is None else now
    token = uuid.uuid4().hex
    reclaimed, remaining, blob = resources.scripts().buffer_claim(
        keys=[keys.buffer(name), keys.buffer_claims(name), keys.buffer_processing(name, token)],
        args=[
            token,
            spec.batch_size,
            repr(now + spec.claim_timeout),
            repr(now),
            keys.buffer_processing(name, ""),
            repr(max_age),
        ],
    )
    if reclaimed:
        log.warning("buffer_claims_reclaimed", buffer=name, rows=int(reclaimed))
    return Claim(token, int(reclaimed), int(remaining), blob.split(b"\n") if blob else [])


def release(name: str, token: str) -> None:
    """Give claim ``token``'s batch back to the buffer, via the next claim of any flush.

    Its deadline becomes 0, so the next claim pushes its rows back to the head of the buffer
    before taking a batch. A claim already forgotten is left alone.
    """
    resources.redis_client().zadd(keys.buffer_claims(name), {token: 0}, xx=True)


def drop_claim(name: str, token: str) -> None:
    """Forget a committed batch: its rows and its claim (one transaction)."""
    with resources.redis_client().pipeline(transaction=True) as pipe:
        pipe.delete(keys.buffer_processing(name, token))
        pipe.zrem(keys.buffer_claims(name), token)
        pipe.execute()


def give_back(name: str, token: str, exc: BaseException) -> None:
    """After a failed write, hand the batch to the next flush (else it waits for its deadline)."""
    with contextlib.suppress(redis.RedisError):  # Redis down too: the deadline hands them back
        release(name, token)
    log.warning("buffer_flush_failed", buffer=name, error=type(exc).__name__)
