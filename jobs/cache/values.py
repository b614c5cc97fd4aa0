"""Versioned cache values in Redis: read (fresh or stale) and compare-and-set writes.

Each value is a hash ``jobs:cache:value:<key>`` holding its version ``v``, its JSON data ``d``
and the time it stays fresh until ``f`` (by the Redis server's clock); the hash expires
``stale_while_revalidate`` seconds after the TTL. ``cache_get.lua`` reads it;
``cache_set.lua`` writes a value only if the stored version is older.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from workers import keys as redis_keys
from workers import resources
from workers.errors import BrokerUnavailable, InvalidJob
from workers.publisher import REDIS_ERRORS
from workers.resources import as_text

#: Values written per ``cache_set.lua`` call (bounds the time Redis spends in one script).
STORE_BATCH = 500


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def encode(value: Any, key: str = "value") -> str:
    """``value`` as compact JSON (dates as ISO text, decimals as numbers, UUIDs as text).

    Raises :class:`InvalidJob` naming ``key`` when the value cannot be serialized.
    """
    try:
        return json.dumps(value, default=_json_default, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidJob(
            f"cache value of {key!r} is not JSON-serializable: {exc}", field=key
        ) from None


def plain(value: Any) -> Any:
    """``value`` as JSON-native data (the form it has after a trip through the cache)."""
    return json.loads(encode(value))


@dataclass(frozen=True, slots=True)
class Cached:
    """A value read from the cache: its data, its version, whether it is still fresh."""

    value: Any
    version: int
    fresh: bool


def get(key: str) -> Cached | None:
    """The cached value of ``key`` (fresh or stale), or ``None`` when there is none.

    Raises :class:`BrokerUnavailable` when Redis does not answer.
    """
    try:
        reply = resources.scripts().cache_get(keys=[redis_keys.cache_value(key)])
    except REDIS_ERRORS as exc:
        raise BrokerUnavailable(f"cache unavailable: {exc}") from exc
    state = as_text(reply[0])
    if state == "miss":
        return None
    return Cached(value=json.loads(reply[2]), version=int(reply[1]), fresh=state == "fresh")


def new_version() -> int:
    """A load version, higher than every version handed out before (take it BEFORE loading)."""
    return int(resources.redis_client().incr(redis_keys.cache_version()))


def jittered_ttl_ms(ttl: float, jitter: float) -> int:
    """``ttl`` in ms minus a random share of up to ``jitter`` of it (never above ``ttl``)."""
    return max(1, int(ttl * (1 - random.uniform(0, jitter)) * 1000))  # noqa: S311 - not crypto


def store(
    items: Iterable[tuple[str, Any]],
    *,
    version: int,
    ttl: float,
    ttl_jitter: float = 0.0,
    stale_while_revalidate: float = 0.0,
) -> int:
    """Write ``(key, value)`` items loaded under ``version``; returns how many were written.

    An item whose stored version is newer (or equal) is left alone. Each key gets its own
    jittered TTL; the value stays readable as stale ``stale_while_revalidate`` seconds longer.
    """
    written = 0
    batch: list[tuple[str, str]] = []
    for key, value in items:
        batch.append((key, encode(value, key)))
        if len(batch) >= STORE_BATCH:
            written += store_encoded(batch, version, ttl, ttl_jitter, stale_while_revalidate)
            batch = []
    if batch:
        written += store_encoded(batch, version, ttl, ttl_jitter, stale_while_revalidate)
    return written


def store_encoded(
    batch: list[tuple[str, str]], version: int, ttl: float, jitter: float, stale: float
) -> int:
    """Write encoded ``(key, data)`` items in one ``cache_set.lua`` call (see :func:`store`)."""
    args: list[Any] = [version, int(stale * 1000)]
    for _, data in batch:
        args += [data, jittered_ttl_ms(ttl, jitter)]
    written = resources.scripts().cache_set(
        keys=[redis_keys.cache_value(key) for key, _ in batch], args=args
    )
    return int(written)
