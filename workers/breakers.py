"""Circuit breakers per destination, shared by every worker through Redis.

One hash per destination (``keys.breaker(name)``) holds the state, a ring of bucketed
failure/call counts over ``breaker_window`` and the half-open probe slots; every decision is
one atomic Lua call (``workers/lua/breaker.lua``). Names are registered in ``keys.breakers()``
so listing needs no SCAN. Time is the Redis server's clock, one clock for every worker host.

- **closed**: calls go through; it opens when ``breaker_failures`` failures fall within the
  window, or when at least ``breaker_min_calls`` calls completed there and the failure ratio
  reaches ``breaker_failure_ratio``;
- **open**: calls are refused for ``breaker_open_seconds`` (the caller parks its job until the
  half-open time);
- **half-open**: ``breaker_probes`` calls go through; the first probe success closes it (counts
  reset), a probe failure opens it again with a fresh open time. A probe slot whose result never
  arrives (its worker died) is handed out again after the probe lease.

Which results count (:func:`classify`): a retryable error is a failure; a success is a success;
a :class:`~workers.errors.PermanentError` (e.g. an HTTP 400: the destination answered), a
:class:`~workers.errors.Throttled` (429: the rate limiter backs off, the host is up) and a
:class:`~workers.errors.Defer` are *neutral*: they never count, they only give back a probe slot.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from workers import keys, resources
from workers.errors import Defer, PermanentError, Throttled
from workers.resources import as_text

if TYPE_CHECKING:
    import redis

    from workers.scripts import Scripts
    from workers.settings import Settings

#: Base wait (s) of a job refused while half-open probes are out; jittered to 1x-2x.
DEFAULT_HALF_OPEN_WAIT = 1.0
#: Spread (s, at most) added to the park time of jobs refused by an open breaker, so parked
#: jobs do not all come back in the same instant (at most 10 % of the open time).
DEFAULT_PARK_SPREAD = 1.0


class Result(StrEnum):
    """What one call told us about the destination's health."""

    SUCCESS = "success"
    FAILURE = "failure"
    NEUTRAL = "neutral"


class State(StrEnum):
    """A breaker's state."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def classify(exc: BaseException | None) -> Result:
    """How a call's outcome counts: ``None`` (it returned) is a success, see module docstring."""
    if exc is None:
        return Result.SUCCESS
    if isinstance(exc, (PermanentError, Throttled, Defer)):
        return Result.NEUTRAL
    return Result.FAILURE


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When a breaker opens and how long it stays open (seconds); see ``breaker_*`` settings."""

    failures: int = 5
    failure_ratio: float = 0.5
    min_calls: int = 10
    window: float = 60.0
    open_seconds: float = 30.0
    probes: int = 3

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        """The thresholds configured by ``JOBS_BREAKER_*``."""
        return cls(
            failures=settings.breaker_failures,
            failure_ratio=settings.breaker_failure_ratio,
            min_calls=settings.breaker_min_calls,
            window=settings.breaker_window,
            open_seconds=settings.breaker_open_seconds,
            probes=settings.breaker_probes,
        )


@dataclass(frozen=True, slots=True)
class Permit:
    """The answer to "may I call this destination now?"."""

    name: str
    allowed: bool
    #: Seconds until the breaker turns half-open (0 when allowed or half-open).
    wait: float
    #: The breaker generation the call was allowed in (stale results cannot flip it).
    generation: int
    #: True when this call is one of the half-open probes.
    probe: bool
    #: The state the answer was given in: ``open`` (refused until half-open), ``half_open``
    #: (a probe, or refused because every probe slot is taken) or ``closed``.
    state: State

    def park_for(self, thresholds: Thresholds, rng: random.Random | None = None) -> float:
        """Seconds to park a refused job.

        Until half-open plus a small spread when open; a short jittered wait (1x-2x
        ``DEFAULT_HALF_OPEN_WAIT``) while the half-open probes are out.
        """
        draw = (rng or random).random()
        if self.state is State.OPEN:
            spread = min(DEFAULT_PARK_SPREAD, thresholds.open_seconds * 0.1)
            return self.wait + spread * draw
        base = min(DEFAULT_HALF_OPEN_WAIT, thresholds.open_seconds)
        return base * (1.0 + draw)


@dataclass(frozen=True, slots=True)
class BreakerState:
    """One destination's breaker as ``jobctl breakers list`` shows it."""

    name: str
    state: State
    #: Failures and calls (successes + failures) counted within the window.
    failures: int
    calls: int
    #: When it last opened, and when it turns (turned) half-open; None while closed.
    opened_at: datetime | None
    half_open_at: datetime | None
    probes_in_flight: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (ISO 8601 UTC times)."""
        return {
            "name": self.name,
            "state": self.state.value,
            "failures": self.failures,
            "calls": self.calls,
            "opened_at": self.opened_at.isoformat() if self.opened_at else None,
            "half_open_at": self.half_open_at.isoformat() if self.half_open_at else None,
            "probes_in_flight": self.probes_in_flight,
        }


def _moment(ms: int) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if ms > 0 else None


def parse_peek(name: str, reply: list[Any]) -> BreakerState | None:
    """A :class:`BreakerState` from the script's ``peek`` reply (None: no state kept)."""
    state = as_text(reply[0])
    if state == "missing":
        return None
    failures, calls, opened_at, until, inflight = (int(value) for value in reply[1:6])
    closed = state == State.CLOSED
    return BreakerState(
        name=name,
        state=State(state),
        failures=failures,
        calls=calls,
        opened_at=None if closed else _moment(opened_at),
        half_open_at=None if closed else _moment(until),
        probes_in_flight=0 if closed else inflight,
    )


def parse_allow(name: str, reply: list[Any]) -> Permit:
    """A :class:`Permit` from the script's ``allow`` reply."""
    verdict, wait_ms, generation, probe = as_text(reply[0]), *(int(v) for v in reply[1:4])
    return Permit(
        name=name,
        allowed=verdict == "allow",
        wait=wait_ms / 1000,
        generation=generation,
        probe=bool(probe),
        state=State.OPEN
        if verdict == "deny"
        else State.HALF_OPEN
        if verdict == "busy" or probe
        else State.CLOSED,
    )


class Breakers:
    """The breaker store: ``allow`` before a call, ``record`` its result; list and reset.

    Every method is one Redis round trip (``states`` one pipeline) and raises
    ``redis.RedisError`` when Redis does not answer; callers decide whether to fail open.
    """

    def __init__(
        self,
        thresholds: Thresholds,
        *,
        client: redis.Redis | None = None,
        scripts: Scripts | None = None,
    ) -> None:
        """Use this process's Redis client and scripts unless others are given."""
        self.thresholds = thresholds
        self._client = client
        self._scripts = scripts

    @classmethod
    def from_settings(cls, settings: Settings) -> Breakers:
        """A store with the thresholds of ``settings``."""
        return cls(Thresholds.from_settings(settings))

    @property
    def client(self) -> redis.Redis:
        """The Redis client in use."""
        return self._client or resources.redis_client()

    def _call(
        self,
        op: str,
        name: str,
        *,
        now: float | None = None,
        lease: float = 0.0,
        generation: int | None = None,
        probe: bool = False,
        client: Any = None,
    ) -> Any:
        limits = self.thresholds
        scripts = self._scripts or resources.scripts()
        return scripts.breaker(
            keys=[keys.breaker(name), keys.breakers()],
            args=[
                op,
                name,
                "" if now is None else int(now * 1000),
                limits.failures,
                limits.failure_ratio,
                limits.min_calls,
                int(limits.window * 1000),
                int(limits.open_seconds * 1000),
                limits.probes,
                int(lease * 1000),
                "" if generation is None else generation,
                "1" if probe else "0",
            ],
            client=client,
        )

    def allow(self, name: str, *, lease: float, now: float | None = None) -> Permit:
        """May a call to ``name`` go ahead now.

        ``lease``: seconds a half-open probe slot is held at most (the job's time limit plus a
        margin). ``now`` (unix seconds) replaces the Redis clock, for tests only.
        """
        return parse_allow(name, self._call("allow", name, now=now, lease=lease))

    def record(
        self, permit: Permit, result: Result, *, lease: float = 0.0, now: float | None = None
    ) -> State:
        """Report the result of a call made under ``permit``; returns the state after it."""
        reply = self._call(
            result.value,
            permit.name,
            now=now,
            lease=lease,
            generation=permit.generation,
            probe=permit.probe,
        )
        return State(as_text(reply[0]))

    def state(self, name: str, *, now: float | None = None) -> BreakerState | None:
        """The breaker of ``name`` (None when nothing is kept for it: closed, nothing counted)."""
        return parse_peek(name, self._call("peek", name, now=now))

    def names(self) -> list[str]:
        """Every destination with a registered breaker, sorted."""
        return sorted(as_text(member) for member in self.client.smembers(keys.breakers()))

    def states(self, *, now: float | None = None) -> list[BreakerState]:
        """Every registered breaker, sorted by name (expired ones are dropped from the registry)."""
        names = self.names()
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            self._call("peek", name, now=now, client=pipe)
        replies = pipe.execute()
        found = (parse_peek(name, reply) for name, reply in zip(names, replies, strict=True))
        return [state for state in found if state is not None]

    def reset(self, name: str) -> bool:
        """Forget ``name``'s breaker: it is closed with nothing counted. True if it had state."""
        return bool(self._call("reset", name))
