"""Cluster-wide rate limits: parsing, the limiter calls, and the run-time override store.

A limit is named ``<task>`` or, for per-key limits, ``<task>:<key>`` (e.g. the destination
host). Its rate comes from the run-time override in ``jobs:limits`` when there is one (the
exact name first, then ``<task>`` as the default of every key), else from the task's declared
``rate``/``burst``. The limiter (``workers/lua/ratelimit.lua``) is GCRA with reservations: a
job without a slot is told the exact wait until the slot reserved for it, so parked jobs come
back one slot apart instead of all at once. A downstream's 429 (``throttle.lua``) multiplies the
limit's factor by ``throttle_decrease`` and blocks it until Retry-After has passed; the factor
then regains ``throttle_recovery`` of the rate per quiet second.

Used by :class:`workers.policies.ratelimit.RateLimit` and by ``jobctl limits``.
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from workers import keys
from workers.errors import InvalidJob
from workers.resources import as_text

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    import redis
    from celery import Celery

    from workers.scripts import Scripts

#: Seconds per rate unit.
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_UNIT_ALIASES = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), "s"),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), "m"),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), "h"),
}
_RATE = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*/\s*(?P<unit>[a-z]+)\s*$", re.IGNORECASE)
#: A reserved job that comes back this early (ms) still runs (clock skew, promoter ticks).
EARLY_TOLERANCE_MS = 50
#: The adaptive factor never drops below this (a limit backs off to at most 1 % of its rate).
MIN_FACTOR = 0.01
#: Seconds a process trusts its cached list of override names (tasks without a declared rate).
OVERRIDES_TTL = 1.0
#: Largest burst accepted.
MAX_BURST = 100_000


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` jobs per ``unit`` (``s``, ``m`` or ``h``), ``burst`` of them back to back."""

    count: float
    unit: str
    burst: int = 1

    @property
    def per_second(self) -> float:
        """Jobs per second."""
        return self.count / UNITS[self.unit]

    @property
    def interval_ms(self) -> float:
        """Milliseconds between two jobs at this rate (GCRA's emission interval)."""
        return UNITS[self.unit] * 1000 / self.count

    @property
    def spec(self) -> str:
        """Canonical text: ``20/s``, ``100/m``, ``2.5/h``."""
        return f"{_number(self.count)}/{self.unit}"

    def stored(self) -> str:
        """The value kept in ``jobs:limits`` (read by ``ratelimit.lua``): ``20/s,5``."""
        return f"{self.spec},{self.burst}"

    def __str__(self) -> str:
        """``20/s`` or ``20/s burst 5``."""
        return self.spec if self.burst == 1 else f"{self.spec} burst {self.burst}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def parse_rate(text: str, *, burst: int | None = None, field: str = "rate") -> Rate:
    """``"20/s"``, ``"100/m"``, ``"5/h"`` (also ``sec``/``min``/``hour``) plus a burst (default 1).

    Raises :class:`InvalidJob` naming ``field`` for anything else (zero, negative, unknown
    unit, burst < 1).
    """
    if not isinstance(text, str):
        raise InvalidJob(f"{field}: expected text like '20/s', got {text!r}", field=field)
    match = _RATE.match(text)
    unit = _UNIT_ALIASES.get(match["unit"].lower()) if match else None
    if match is None or unit is None:
        raise InvalidJob(
            f"{field}: {text!r} is not a rate; use <count>/<s|m|h>, e.g. 20/s, 100/m, 5/h",
            field=field,
        )
    count = float(match["n"])
    if count <= 0 or not math.isfinite(count):
        raise InvalidJob(f"{field}: {text!r} must allow more than 0 jobs", field=field)
    return Rate(count, unit, _checked_burst(burst))


def _checked_burst(burst: int | None) -> int:
    if burst is None:
        return 1
    if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= MAX_BURST:
        raise InvalidJob(
            f"burst: must be an integer from 1 to {MAX_BURST}, got {burst!r}", field="burst"
        )
    return burst


@lru_cache(maxsize=256)
def declared_rate(text: str, burst: int | None) -> Rate:
    """:func:`parse_rate` for a task's declared options, parsed once per process."""
    return parse_rate(text, burst=burst)


def parse_stored(value: str | bytes) -> Rate | None:
    """The rate stored in ``jobs:limits`` (``20/s,5``), or ``None`` when unreadable."""
    text = value.decode() if isinstance(value, bytes) else value
    spec, _, burst = text.partition(",")
    try:
        return parse_rate(spec, burst=int(burst) if burst else None)
    except (InvalidJob, ValueError):
        return None


def limit_name(task: str, key: str | None) -> str:
    """``<task>`` or ``<task>:<key>``."""
    return task if key is None else f"{task}:{key}"


def task_of(name: str) -> str:
    """The task a limit name belongs to (task names contain no ``:``)."""
    return name.partition(":")[0]


# -- adaptive factor (the same arithmetic as the Lua scripts) -------------------------------


def factor_at(
    now_ms: float, *, factor: float, since_ms: float, blocked_until_ms: float, recovery: float
) -> float:
    """The adaptive factor at ``now_ms`` (capped at 1).

    ``factor`` was set at ``since_ms``; it regains ``recovery`` per second since the later of
    ``since_ms`` and the end of the block.
    """
    if factor >= 1:
        return 1.0
    quiet = max(0.0, now_ms - max(since_ms, blocked_until_ms)) / 1000
    return min(1.0, factor + recovery * quiet)


def decreased(factor: float, decrease: float) -> float:
    """The factor after one 429 (multiplicative decrease, floored at :data:`MIN_FACTOR`)."""
    return max(factor * decrease, MIN_FACTOR)


# -- the limiter ------------------------------------------------------------------------------


def acquire(
    scripts: Scripts,
    name: str,
    *,
    declared: Rate | None,
    job_id: str,
    recovery: float,
) -> float:
    """Take a slot of limit ``name`` for job ``job_id``; returns the seconds to wait.

    0.0: the job may run now. Otherwise the job holds a reservation for the slot that many
    seconds away and must come back then (it runs without waiting again).

    Without a declared rate and without an override the limit does not exist: 0.0.
    """
    fallback = task_of(name)
    waited = scripts.ratelimit(
        keys=[keys.rate(name), keys.limits()],
        args=[
            name,
            fallback if fallback != name else "",
            repr(declared.interval_ms) if declared else "",
            declared.burst if declared else 1,
            job_id,
            repr(recovery),
            EARLY_TOLERANCE_MS,
        ],
    )
    return int(waited) / 1000


def throttle(
    scripts: Scripts, name: str, *, retry_after: float | None, decrease: float, recovery: float
) -> tuple[float, float]:
    """Back limit ``name`` off (factor x ``decrease``) and block it for ``retry_after`` seconds.

    Returns (new factor, blocked until as unix seconds).
    """
    factor, until = scripts.throttle(
        keys=[keys.rate(name)],
        args=[repr(decrease), int(max(retry_after or 0.0, 0.0) * 1000), repr(recovery), MIN_FACTOR],
    )
    return float(factor), int(until) / 1000


class OverrideNames:
    """A per-process view of which limit names have a run-time override.

    Refreshed lazily, at most every :data:`OVERRIDES_TTL` seconds, so tasks without a declared
    rate pay no Redis call per job.
    """

    def __init__(self, ttl: float = OVERRIDES_TTL) -> None:
        """Empty until first asked."""
        self._ttl = ttl
        self._names: frozenset[str] = frozenset()
        self._tasks: frozenset[str] = frozenset()
        self._fetched = -math.inf
        self._lock = threading.Lock()

    def applies(self, task: str, client: Callable[[], redis.Redis]) -> bool:
        """Whether some override may concern ``task`` (``<task>`` or ``<task>:<key>``).

        ``client`` is only called when the view is refreshed.
        """
        now = time.monotonic()
        if now - self._fetched >= self._ttl:
            with self._lock:
                if now - self._fetched >= self._ttl:
                    names = frozenset(as_text(n) for n in client().hkeys(keys.limits()))
                    self._names = names
                    self._tasks = frozenset(task_of(n) for n in names)
                    self._fetched = now
        return task in self._tasks

    def forget(self) -> None:
        """Refresh on next use."""
        self._fetched = -math.inf


# -- the override store and listing -----------------------------------------------------------


def set_override(client: redis.Redis, name: str, rate: Rate) -> None:
    """Limit ``name`` to ``rate`` from now on, in every running worker (no restart).

    Workers read the override inside the limiter script on the next job; the limit's backlog
    and reservations are forgotten then (its adaptive back-off is kept).
    """
    if not name or name != name.strip():
        raise InvalidJob(f"NAME: {name!r} is not a limit name", field="NAME")
    client.hset(keys.limits(), name, rate.stored())


def get_override(client: redis.Redis, name: str) -> Rate | None:
    """The run-time override of ``name`` (exact name only), if any."""
    value = client.hget(keys.limits(), name)
    return parse_stored(value) if value is not None else None


def reset(client: redis.Redis, name: str) -> bool:
    """Drop the override of ``name`` and its limiter state (back-off, block, reservations).

    Returns whether there was anything to reset.
    """
    with client.pipeline(transaction=True) as pipe:
        pipe.hdel(keys.limits(), name)
        pipe.delete(keys.rate(name))
        removed, deleted = pipe.execute()
    return bool(removed or deleted)


@dataclass(frozen=True, slots=True)
class LimitInfo:
    """One limit as ``jobctl limits list`` shows it."""

    name: str
    declared: Rate | None
    override: Rate | None
    factor: float
    blocked_until: datetime | None
    parked: int

    @property
    def configured(self) -> Rate | None:
        """The rate in force before the adaptive factor (override wins)."""
        return self.override or self.declared

    @property
    def effective_per_second(self) -> float | None:
        """Jobs per second after the adaptive factor (``None``: unlimited)."""
        rate = self.configured
        return None if rate is None else rate.per_second * self.factor

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``--json``)."""
        effective = self.effective_per_second
        return {
            "name": self.name,
            "declared": str(self.declared) if self.declared else None,
            "override": str(self.override) if self.override else None,
            "factor": round(self.factor, 4),
            "effective_per_second": round(effective, 4) if effective is not None else None,
            "blocked_until": self.blocked_until.isoformat() if self.blocked_until else None,
            "parked": self.parked,
        }


def list_limits(
    client: redis.Redis, declared: dict[str, Rate], *, recovery: float, now: float | None = None
) -> list[LimitInfo]:
    """Every known limit: declared by a task, overridden, or with live limiter state.

    ``declared`` maps task names to their declared rate; a per-key limit ``<task>:<key>``
    inherits its task's declaration and the ``<task>`` override.
    """
    overrides = {
        as_text(name): rate
        for name, value in client.hgetall(keys.limits()).items()
        if (rate := parse_stored(value)) is not None
    }
    prefix = keys.rate("")
    live = {as_text(k)[len(prefix) :] for k in client.scan_iter(match=keys.rate("*"), count=1000)}
    names = sorted(set(declared) | set(overrides) | live)
    now_ms = (time.time() if now is None else now) * 1000
    return [_info(client, name, declared, overrides, live, recovery, now_ms) for name in names]


def _info(  # noqa: PLR0917 - a private helper of list_limits
    client: redis.Redis,
    name: str,
    declared: dict[str, Rate],
    overrides: dict[str, Rate],
    live: Iterable[str],
    recovery: float,
    now_ms: float,
) -> LimitInfo:
    task = task_of(name)
    override = overrides.get(name) or (overrides.get(task) if task != name else None)
    factor, blocked, parked = 1.0, None, 0
    if name in live:
        state = {as_text(k): as_text(v) for k, v in client.hgetall(keys.rate(name)).items()}
        blocked_ms = float(state.get("bu", 0))
        factor = factor_at(
            now_ms,
            factor=float(state.get("f", 1)),
            since_ms=float(state.get("dt", 0)),
            blocked_until_ms=blocked_ms,
            recovery=recovery,
        )
        if blocked_ms > now_ms:
            blocked = datetime.fromtimestamp(blocked_ms / 1000, UTC)
        parked = sum(1 for field in state if field.startswith("r:"))
    return LimitInfo(
        name=name,
        declared=declared.get(task),
        override=override,
        factor=factor,
        blocked_until=blocked,
        parked=parked,
    )


def declared_limits(app: Celery) -> dict[str, Rate]:
    """Task name -> declared rate, for every registered task that declares one."""
    app.loader.import_default_modules()
    found: dict[str, Rate] = {}
    for name, task in app.tasks.items():
        options = getattr(task, "policy_options", None) or {}
        spec = options.get("rate")
        if spec:
            try:
                found[name] = declared_rate(spec, options.get("burst"))
            except InvalidJob:
                continue  # reported when the task runs; listing must not fail on it
    return found
