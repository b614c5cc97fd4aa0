"""Lease fence: a job body still running when its claim's lease is about to end is stopped.

The claim's lease outlasts the hard time limit, so a body that is merely slow is killed by
the time limit first. The fence is for a process that was *frozen* (SIGSTOP, a VM pause, a
swap storm): meanwhile its message was recovered and another worker claimed and ran the job.
On resuming, the frozen body must not go on to its side effect. ``ITIMER_REAL`` counts wall
time, including the time the process was stopped, so its SIGALRM is already pending when the
process resumes and interrupts the body at once.

The fence needs the main thread of its process (prefork and solo pools); in a thread pool it
is not armed and the idempotency key's UNIQUE gate is the only protection past the lease.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from billiard.pool import SIG_SOFT_TIMEOUT
from celery.exceptions import SoftTimeLimitExceeded


class LeaseExpired(BaseException):
    """The job's claim lease ended while its body ran; another worker may own the job now.

    A ``BaseException`` so a body's ``except Exception`` cannot swallow it.
    """


def can_fence() -> bool:
    """Whether a fence can be armed here (SIGALRM is delivered to the main thread only)."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextmanager
def lease_fence(seconds: float | None, *, soft_after: float | None = None) -> Iterator[None]:
    """Raise :class:`LeaseExpired` inside the block once ``seconds`` of wall time have passed.

    With ``soft_after`` (a job in an envelope: Celery's soft limit is the envelope's), raise
    ``SoftTimeLimitExceeded`` first, after that many seconds, as Celery would for one job; the
    fence stays armed for the rest of ``seconds``.
    """
    if (seconds is None and soft_after is None) or not can_fence():
        yield
        return
    started = time.monotonic()
    soft_pending = soft_after is not None and (seconds is None or soft_after < seconds)

    def expire(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001 - signal handler
        nonlocal soft_pending
        if soft_pending:
            soft_pending = False
            if seconds is not None:
                remaining = seconds - (time.monotonic() - started)
                signal.setitimer(signal.ITIMER_REAL, max(remaining, 0.001))
            raise SoftTimeLimitExceeded(f"soft time limit ({soft_after:.1f} s) exceeded")
        raise LeaseExpired

    previous = signal.signal(signal.SIGALRM, expire)
    first = soft_after if soft_pending else seconds
    assert first is not None
    signal.setitimer(signal.ITIMER_REAL, max(first, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def soft_limit_held() -> Iterator[None]:
    """Hold off Celery's soft time limit while a finished body's outcome is stored.

    The soft limit is there to stop a body. Once the body has returned (or raised), a
    ``SoftTimeLimitExceeded`` raised while its done mark or its retry is written would turn a
    finished job into a failed one and run it again (seen after a worker was frozen for most
    of its time limit). Meanwhile billiard's handler is swapped for one that ignores the
    signal: the parent sends it to the process, so any thread may receive it and blocking it
    in this thread would not do. For single-job messages only: an envelope's soft limit must
    still stop the envelope, and its jobs' own soft limits are the fence's, off by then.
    """
    if SIG_SOFT_TIMEOUT is None or not can_fence():
        yield
        return
    previous = signal.signal(SIG_SOFT_TIMEOUT, _late_soft_limit)
    try:
        yield
    finally:
        signal.signal(SIG_SOFT_TIMEOUT, previous)


def _late_soft_limit(signum: int, frame: FrameType | None) -> None:
    """The soft limit arrived after the body: nothing left to stop."""
