"""What a receiver's answer means for the delivery (pure functions, no I/O).

- 2xx: delivered.
- 408, 425, 429, 5xx, timeouts, connection errors: retry on the schedule; a ``Retry-After``
  (seconds or an HTTP date) is honoured up to a cap; 429 also backs off the host's limit.
- 410 Gone: the receiver asks us to stop: the endpoint is disabled.
- 3xx: a failure (redirects are never followed: the target could be internal); retried,
  the receiver may fix its URL.
- any other 4xx: permanent, dead-lettered at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

#: Statuses worth retrying besides 5xx.
RETRYABLE_4XX = frozenset({408, 425, 429})
HTTP_TOO_MANY_REQUESTS = 429
HTTP_GONE = 410


class Verdict(StrEnum):
    """The kind of outcome."""

    DELIVERED = "delivered"
    RETRY = "retry"
    THROTTLED = "throttled"  # 429: retry, and slow the host down
    GONE = "gone"  # 410: disable the endpoint
    REJECTED = "rejected"  # other 4xx: dead letter


@dataclass(frozen=True, slots=True)
class Decision:
    """A verdict and, for retries, the Retry-After the receiver asked for (seconds, capped)."""

    verdict: Verdict
    retry_after: float | None = None


def decide(status: int, headers: Mapping[str, str], *, now: float, cap: float) -> Decision:
    """Classify an HTTP answer (``headers`` with lower-case names)."""
    if 200 <= status < 300:  # noqa: PLR2004 - the 2xx range
        return Decision(Verdict.DELIVERED)
    if status == HTTP_GONE:
        return Decision(Verdict.GONE)
    retry_after = parse_retry_after(headers.get("retry-after"), now=now, cap=cap)
    if status == HTTP_TOO_MANY_REQUESTS:
        return Decision(Verdict.THROTTLED, retry_after)
    if status >= 500 or status in RETRYABLE_4XX or 300 <= status < 400:  # noqa: PLR2004
        return Decision(Verdict.RETRY, retry_after)
    return Decision(Verdict.REJECTED)


def parse_retry_after(value: str | None, *, now: float, cap: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP date), capped.

    Garbage and past dates give ``None`` / 0; never more than ``cap``.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), cap)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return min(max(when.timestamp() - now, 0.0), cap)


def scheduled_delay(
    attempt: int,
    schedule: Sequence[float],
    *,
    jitter: float,
    rng: random.Random | None = None,
) -> float:
    """Delay before the attempt after ``attempt`` (1-based): ``schedule[attempt-1]`` ± jitter.

    Past the end of the schedule the last delay repeats.
    """
    if not schedule:
        return 0.0
    base = schedule[min(max(attempt, 1), len(schedule)) - 1]
    if jitter <= 0:
        return base
    factor = (rng or random).uniform(1 - jitter, 1 + jitter)
    return base * factor


def retry_delay(
    attempt: int,
    retry_after: float | None,
    schedule: Sequence[float],
    *,
    jitter: float,
    rng: random.Random | None = None,
) -> float:
    """The schedule's delay, or the receiver's (capped) Retry-After when that is longer."""
    delay = scheduled_delay(attempt, schedule, jitter=jitter, rng=rng)
    return delay if retry_after is None else max(delay, retry_after)
