"""Crash-test failpoints: ``JOBS_FAILPOINT=<name>`` makes the process SIGKILL itself there.

``JOBS_FAILPOINT_LIMIT=N`` fires it only the first N times across all processes (counted in
Redis), so a test can crash a worker once and watch the recovery deterministically.
"""

from __future__ import annotations

import os
import signal
from functools import cache

from workers.settings import get_settings


@cache
def _armed() -> str | None:
    return get_settings().failpoint


def failpoint(name: str) -> None:
    """SIGKILL this process if failpoint ``name`` is armed (and its limit not yet reached)."""
    if _armed() != name:
        return
    limit = get_settings().failpoint_limit
    if limit:
        from workers import keys, resources  # noqa: PLC0415 - only crash tests pay for it

        fired = int(resources.redis_client().incr(keys.counter(f"failpoint:{name}")))
        if fired > limit:
            return
    os.kill(os.getpid(), signal.SIGKILL)
