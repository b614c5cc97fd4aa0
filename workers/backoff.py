"""Retry delays: exponential backoff with full jitter (pure functions)."""

from __future__ import annotations

import random


def backoff_ceiling(attempt: int, *, base: float, cap: float) -> float:
    """The largest delay after failed attempt ``attempt`` (1-based): ``min(cap, base*2**(n-1))``."""
    return float(min(cap, base * 2.0 ** max(attempt - 1, 0)))


def full_jitter(
    attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """A delay drawn uniformly from ``[0, backoff_ceiling]`` (AWS "full jitter")."""
    ceiling = backoff_ceiling(attempt, base=base, cap=cap)
    return float((rng or random).uniform(0, ceiling))
