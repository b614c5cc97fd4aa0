"""Exactly one active beat: a Redis lease with fencing, around a scheduler whose state is in Redis.

Start ``jobctl beat`` (``celery beat -S scheduler.leader:LeaderScheduler``) on as many hosts as
you like:

- **Lease.** ``jobs:beat:leader`` holds ``"<fence> <identity>"`` and expires after
  ``JOBS_BEAT_LEASE`` seconds (``beat_lease.lua``). Taking it increments ``jobs:beat:fence``,
  so every leadership has its own number. The leader renews it at least every third of the
  lease; a standby tries to take it every ``JOBS_BEAT_STANDBY_POLL`` seconds. A leader that
  dies is replaced within ``beat_lease + beat_standby_poll`` seconds; one stopped gracefully
  releases the lease, and a standby takes over at its next poll.
- **Fencing.** The leader renews, reads and records only through ``beat_tick.lua``, which
  changes nothing unless the lease is still its own value: a leader deposed while paused
  notices at its next step and stands by without firing.
- **State in Redis.** Each entry's last run is in ``jobs:beat:runs``, so a new leader goes on
  where the old one stopped: a leader change neither repeats a tick nor skips one, and after
  downtime a missed entry fires once (Celery's ``is_due`` from its last run), not once per
  missed period. An entry that never ran fires at once. Run times are on the Redis server's
  clock, so beats on hosts with skewed clocks agree on when an entry is due.
- **One key per tick.** A tick is enqueued with the idempotency key ``beat:<entry>:<last run>``
  (the same whichever leader fires it): if a leader dies after publishing a tick but before
  recording it, the next leader's publish of that tick is deduplicated by admission (within
  ``JOBS_DEDUP_WINDOW``). Ticks go through admission like ``JobTask.apply_async`` (dedup,
  backpressure); Celery's own ``Scheduler.apply_async`` is not used: it adds options (a
  producer, headers) admission refuses by design.
- **Never crashes on load.** A full queue (``QueueFull``) postpones that entry by its
  ``retry_after`` (logged ``beat_tick_refused``), an unreachable Redis is logged and retried.

``leader_info()``, ``last_tick()`` and ``last_runs()`` read the state for ``jobctl`` and the
exporter.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from celery.beat import Scheduler

from scheduler.schedule import build_beat_schedule
from workers import admission, keys, resources
from workers.errors import BrokerUnavailable, ConfigurationError, InvalidJob, QueueFull
from workers.publisher import REDIS_ERRORS
from workers.resources import as_text
from workers.settings import Settings, get_settings
from workers.task import JobTask

if TYPE_CHECKING:
    import redis
    from celery import Celery

log = structlog.get_logger("jobs.beat")

#: The ``--scheduler`` value that runs this module's scheduler.
SCHEDULER_PATH = "scheduler.leader:LeaderScheduler"
#: The tick key of an entry's first run (no last run recorded).
FIRST_RUN = "first"


def default_identity() -> str:
    """``<host>:<pid>:<random>``: who holds the lease (readable in ``leader_info``)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def tick_key(entry: str, last_run: str | None) -> str:
    """The idempotency key of the tick of ``entry`` that follows ``last_run``."""
    return f"beat:{entry}:{last_run or FIRST_RUN}"


# -- state readers ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    """The active beat: its identity, fencing number, and seconds left on its lease."""

    identity: str
    fence: int
    expires_in: float

    @property
    def pid(self) -> int | None:
        """The leader's process id (from ``<host>:<pid>:<random>``), when it has one."""
        parts = self.identity.split(":")
        return int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else None  # noqa: PLR2004


def leader_info(client: redis.Redis | None = None) -> LeaderInfo | None:
    """The current beat leader, or ``None`` when no beat holds the lease."""
    client = client or resources.redis_client()
    with client.pipeline(transaction=True) as pipe:
        pipe.get(keys.beat_leader())
        pipe.pttl(keys.beat_leader())
        value, ttl = pipe.execute()
    if value is None:
        return None
    fence, _, identity = as_text(value).partition(" ")
    return LeaderInfo(identity=identity, fence=int(fence), expires_in=max(int(ttl), 0) / 1000)


def last_tick(client: redis.Redis | None = None) -> float | None:
    """Unix time of the active beat's latest tick (``None``: no beat has ticked yet)."""
    value = (client or resources.redis_client()).get(keys.beat_last_tick())
    return None if value is None else float(as_text(value))


def last_runs(client: redis.Redis | None = None) -> dict[str, float]:
    """Entry name -> unix time it last fired."""
    raw = (client or resources.redis_client()).hgetall(keys.beat_runs())
    return {as_text(name): float(as_text(at)) for name, at in raw.items()}


# -- the lease --------------------------------------------------------------------------------


class Leadership:
    """One beat's side of the lease: acquire, renew-and-read, record, release (all fenced)."""

    def __init__(self, identity: str, lease: float) -> None:
        """``lease`` in seconds; nothing is held until :meth:`acquire` succeeds."""
        self.identity = identity
        self.lease_ms = max(1, int(lease * 1000))
        self.held: str | None = None
        #: Redis server clock minus this host's clock (s), measured at each step.
        self.offset = 0.0

    @property
    def fence(self) -> int | None:
        """This leadership's fencing number (``None`` while standing by)."""
        return int(self.held.partition(" ")[0]) if self.held else None

    def acquire(self) -> bool:
        """Take the lease if nobody holds it; True when this beat is now the leader."""
        reply = resources.scripts().beat_lease(
            keys=[keys.beat_leader(), keys.beat_fence()],
            args=["acquire", self.identity, self.lease_ms],
        )
        if reply is None:
            return False
        self.held = as_text(reply)
        return True

    def read(self) -> dict[str, str] | None:
        """Renew the lease and return the last runs; ``None`` (and stand by) if it is lost."""
        reply = self._tick("read", [])
        if reply is None:
            return None
        flat = [as_text(item) for item in reply[1]]
        return dict(zip(flat[::2], flat[1::2], strict=True))

    def record(self, fired: dict[str, str]) -> bool:
        """Renew the lease and record the entries fired; False (and stand by) if it is lost.

        ``fired`` maps entry names to the (server clock) time they fired.
        """
        pairs = [item for name, at in fired.items() for item in (name, at)]
        return self._tick("write", pairs) is not None

    def server_time(self) -> float:
        """Now by the Redis server's clock, as measured at the last step."""
        return time.time() + self.offset

    def _tick(self, mode: str, pairs: list[str]) -> Any:
        if self.held is None:
            return None
        reply = resources.scripts().beat_tick(
            keys=[keys.beat_leader(), keys.beat_runs(), keys.beat_last_tick()],
            args=[self.held, self.lease_ms, mode, *pairs],
        )
        if reply is None:
            self.held = None
            return None
        self.offset = float(as_text(reply[0])) - time.time()
        return reply

    def release(self) -> bool:
        """Give the lease up (a standby takes over at its next poll); True if it was ours."""
        if self.held is None:
            return False
        held, self.held = self.held, None
        reply = resources.scripts().beat_lease(
            keys=[keys.beat_leader(), keys.beat_fence()], args=["release", held]
        )
        return bool(reply)


# -- the scheduler ----------------------------------------------------------------------------


class LeaderScheduler(Scheduler):  # type: ignore[misc]
    """Celery beat scheduler that fires only while it holds the lease (see module docstring).

    ``settings`` (default: the environment), ``entries`` (default: :func:`build_beat_schedule`)
    and ``identity`` are seams for tests.
    """

    def __init__(
        self,
        app: Celery,
        *args: Any,
        settings: Settings | None = None,
        entries: dict[str, dict[str, Any]] | None = None,
        identity: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Build the schedule and validate every entry (a bad one fails beat at start)."""
        self.settings = settings or get_settings()
        self._table = entries
        self.leadership = Leadership(identity or default_identity(), self.settings.beat_lease)
        self._tasks: dict[str, JobTask] = {}
        self._not_before: dict[str, float] = {}
        kwargs["max_interval"] = self.settings.beat_lease / 3
        super().__init__(app, *args, **kwargs)

    # celery hooks ------------------------------------------------------------------------

    def setup_schedule(self) -> None:
        """Load the schedule; no Celery default entries (they would bypass admission)."""
        table = self._table if self._table is not None else build_beat_schedule(self.settings)
        self.data = {}
        for name, spec in table.items():
            entry = self.Entry(
                name=name,
                task=spec["task"],
                schedule=spec["schedule"],
                args=(),
                kwargs=dict(spec.get("kwargs") or {}),
                options=dict(spec.get("options") or {}),
                app=self.app,
            )
            self._tasks[name] = self._job_task(entry)
            self.data[name] = entry
        log.info("beat_schedule_loaded", entries=sorted(self.data))

    def tick(self, *args: Any, **kwargs: Any) -> float:  # noqa: ARG002 - celery's signature
        """One scheduler step; returns the seconds to sleep before the next one."""
        try:
            return self._step()
        except REDIS_ERRORS as exc:
            log.warning("beat_redis_unavailable", error=str(exc))
            return self.settings.beat_standby_poll

    def close(self) -> None:
        """Release the lease (a standby takes over at once), then Celery's own cleanup."""
        try:
            if self.leadership.release():
                log.info("beat_leader_released", identity=self.leadership.identity)
        except REDIS_ERRORS as exc:
            log.warning("beat_release_failed", error=str(exc))
        super().close()

    @property
    def info(self) -> str:
        """Shown in ``celery beat``'s banner (the entries are logged once loaded)."""
        return (
            f"    . leader lease -> {keys.beat_leader()} ({self.settings.beat_lease:g}s, "
            f"standby poll {self.settings.beat_standby_poll:g}s)"
        )

    # the step ----------------------------------------------------------------------------

    def _step(self) -> float:
        poll = self.settings.beat_standby_poll
        lease = self.leadership
        if lease.held is None:
            if not lease.acquire():
                return poll
            log.info("beat_leader_acquired", identity=lease.identity, fence=lease.fence)
        runs = lease.read()
        if runs is None:
            log.warning("beat_leadership_lost", identity=lease.identity)
            return poll
        fired: dict[str, str] = {}
        waits = [float(self.max_interval)]
        for name, entry in self.data.items():
            waits.append(self._maybe_fire(name, entry, runs.get(name), fired))
        if fired and not lease.record(fired):
            log.warning("beat_leadership_lost", identity=lease.identity, unrecorded=sorted(fired))
            return poll
        return max(min(waits), 0.0)

    def _maybe_fire(self, name: str, entry: Any, last: str | None, fired: dict[str, str]) -> float:
        """Fire ``entry`` if due; the seconds until it should be looked at again."""
        blocked = self._not_before.get(name, 0.0) - time.monotonic()
        if blocked > 0:
            return blocked
        if last is None:
            due, next_in = True, entry.schedule.is_due(self.app.now())[1]
        else:
            # Last runs are on the server's clock; Celery's is_due compares with this host's.
            last_here = float(last) - self.leadership.offset
            due, next_in = entry.schedule.is_due(datetime.fromtimestamp(last_here, UTC))
        if not due:
            return float(next_in)
        fired_at = self.leadership.server_time()
        if not self._fire(name, entry, tick_key(name, last)):
            return max(self._not_before.get(name, 0.0) - time.monotonic(), 0.0)
        fired[name] = f"{fired_at:.6f}"
        return float(next_in)

    def _fire(self, name: str, entry: Any, key: str) -> bool:
        """Enqueue one tick through admission; False when it must be tried again later."""
        options = entry.options
        try:
            ref = admission.enqueue(
                self._tasks[name],
                (),
                dict(entry.kwargs),
                key=key,
                queue=options.get("queue"),
                priority=options.get("priority"),
            )
        except QueueFull as exc:
            retry = max(exc.retry_after, self.settings.beat_standby_poll)
            self._not_before[name] = time.monotonic() + retry
            log.warning(
                "beat_tick_refused", entry=name, queue=exc.queue, retry_after=round(retry, 3)
            )
            return False
        except BrokerUnavailable as exc:
            self._not_before[name] = time.monotonic() + self.settings.beat_standby_poll
            log.warning("beat_enqueue_failed", entry=name, error=str(exc))
            return False
        except Exception:
            self._not_before[name] = time.monotonic() + float(self.max_interval)
            log.exception("beat_enqueue_error", entry=name)
            return False
        self._not_before.pop(name, None)
        log.info(
            "beat_tick_deduplicated" if ref.deduplicated else "beat_tick_fired",
            entry=name,
            job_id=ref.id,
            tick=key,
        )
        return True

    def _job_task(self, entry: Any) -> JobTask:
        """The registered job of ``entry``, with its kwargs and options checked by admission."""
        task = self.app.tasks.get(entry.task)
        if not isinstance(task, JobTask):
            raise ConfigurationError(
                f"beat entry {entry.name!r}: {entry.task!r} is not a registered job "
                "(is its module in the catalogue or JOBS_EXTRA_TASK_MODULES?)"
            )
        try:
            admission.prepare(
                task,
                (),
                dict(entry.kwargs),
                key=tick_key(entry.name, None),
                queue=entry.options.get("queue"),
                priority=entry.options.get("priority"),
            )
        except InvalidJob as exc:
            raise ConfigurationError(f"beat entry {entry.name!r}: {exc}") from None
        return task
