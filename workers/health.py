"""Worker liveness: when each consumer last polled Redis successfully, and whether it is stuck.

The failure this catches is Celery's silent one: after a broker reconnect (or on a half-open
TCP connection) a worker's consumer stops fetching while the process, its pool and its
heartbeats all look fine. Proof of life therefore comes from the consumer's own fetch path:

- the transport stamps a :class:`Probe` in memory on every fetch round trip that Redis answered
  (``last_poll``, even when nothing was waiting) and on every message handed to the pool
  (``last_delivery``) — an attribute write, no I/O;
- the worker's housekeeping thread publishes its process's probes once a second
  (:func:`publish`, in the pipeline of the consumers-zset heartbeat) into the hash
  ``keys.worker_health()``: field = consumer id, value = a JSON :class:`HealthRecord`.

A housekeeping thread that keeps running while the consumer loop is stuck keeps publishing the
*old* ``last_poll``: the record ages while the consumer still looks alive in the consumers
zset, which is exactly what :func:`assess` reports as :attr:`Verdict.STUCK`.

A consumer whose prefetch slots are all taken by running jobs does not poll, by design
(kombu only fetches when the QoS has room): it is :attr:`Verdict.BUSY`, not stuck.

Records leave the hash when their consumer closes (next heartbeat), when another worker
recovers a dead consumer, and in any case :data:`RETENTION` seconds after their last update.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, cast

from workers import keys

if TYPE_CHECKING:
    import redis

#: Seconds after its last update a record is pruned whatever its consumer's fate.
RETENTION = 86400.0
#: Seconds between prunes of old records (by any worker's housekeeping).
PRUNE_EVERY = 600.0

#: (in flight, prefetch limit; 0 = unlimited) of a consumer's channel, read by housekeeping.
Load = Callable[[], tuple[int, int]]


def _no_load() -> tuple[int, int]:
    return 0, 0


@dataclass(slots=True)
class Probe:
    """One consumer's liveness, stamped by the transport's fetch path (in memory only)."""

    consumer: str
    queues: Callable[[], Iterable[str]]
    load: Load = _no_load
    started_at: float = field(default_factory=time.time)
    last_poll: float | None = None
    last_delivery: float | None = None

    def polled(self, now: float | None = None) -> None:
        """Redis answered a fetch (with a message or without)."""
        self.last_poll = time.time() if now is None else now

    def delivered(self, now: float | None = None) -> None:
        """A fetched message was handed to the pool."""
        self.last_delivery = time.time() if now is None else now


@dataclass(frozen=True, slots=True)
class HealthRecord:
    """What the hash holds per consumer (times are unix seconds)."""

    consumer: str
    hostname: str
    pid: int
    queues: tuple[str, ...]
    started_at: float
    last_poll: float | None
    last_delivery: float | None
    inflight: int
    prefetch: int
    updated_at: float

    @property
    def saturated(self) -> bool:
        """Every prefetch slot held when last published: the consumer is not meant to poll."""
        return self.prefetch > 0 and self.inflight >= self.prefetch

    def to_json(self) -> str:
        """The hash value."""
        data = asdict(self)
        del data["consumer"]
        data["queues"] = list(self.queues)
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, consumer: str, raw: str | bytes) -> HealthRecord | None:
        """Parse a hash value; ``None`` when it is not a record (never raises)."""
        try:
            data = json.loads(raw)
            return cls(
                consumer=consumer,
                hostname=str(data["hostname"]),
                pid=int(data["pid"]),
                queues=tuple(str(queue) for queue in data.get("queues") or ()),
                started_at=float(data["started_at"]),
                last_poll=_optional_float(data.get("last_poll")),
                last_delivery=_optional_float(data.get("last_delivery")),
                inflight=int(data.get("inflight") or 0),
                prefetch=int(data.get("prefetch") or 0),
                updated_at=float(data.get("updated_at") or data["started_at"]),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


# -- this process's probes (written by the transport, published by housekeeping) ---------------

_probes: dict[str, Probe] = {}
_retired: set[str] = set()
_lock = threading.Lock()
_HOSTNAME = socket.gethostname()


def register(probe: Probe) -> Probe:
    """Publish ``probe`` from now on (idempotent per consumer id); returns the one registered."""
    with _lock:
        _retired.discard(probe.consumer)
        return _probes.setdefault(probe.consumer, probe)


def retire(consumer: str) -> None:
    """Stop publishing ``consumer``; its record is deleted on the next publish."""
    with _lock:
        if _probes.pop(consumer, None) is not None:
            _retired.add(consumer)


def snapshot(now: float) -> tuple[list[HealthRecord], list[str]]:
    """Records of this process's registered consumers, and the consumers retired since last."""
    with _lock:
        probes = list(_probes.values())
        retired = list(_retired)
        _retired.clear()
    records = []
    for probe in probes:
        try:
            inflight, prefetch = probe.load()
            queues = tuple(sorted(probe.queues()))
        except Exception:  # a probe never breaks the heartbeat
            inflight, prefetch, queues = 0, 0, ()
        records.append(
            HealthRecord(
                consumer=probe.consumer,
                hostname=_HOSTNAME,
                pid=os.getpid(),
                queues=queues,
                started_at=probe.started_at,
                last_poll=probe.last_poll,
                last_delivery=probe.last_delivery,
                inflight=inflight,
                prefetch=prefetch,
                updated_at=now,
            )
        )
    return records, retired


def publish(pipe: Any, records: Iterable[HealthRecord], retired: Iterable[str]) -> None:
    """Queue the writes of ``records`` and deletes of ``retired`` on a Redis pipeline."""
    mapping = {record.consumer: record.to_json() for record in records}
    if mapping:
        pipe.hset(keys.worker_health(), mapping=mapping)
    gone = list(retired)
    if gone:
        pipe.hdel(keys.worker_health(), *gone)


def forget(client: redis.Redis, consumers: Iterable[str]) -> None:
    """Delete the records of ``consumers`` (recovered dead consumers)."""
    gone = list(consumers)
    if gone:
        client.hdel(keys.worker_health(), *gone)


def read(client: redis.Redis) -> dict[str, HealthRecord]:
    """Every readable record by consumer id (one HGETALL: one field per consumer)."""
    found: dict[str, HealthRecord] = {}
    for raw_consumer, raw in client.hgetall(keys.worker_health()).items():
        consumer = _text(raw_consumer)
        record = HealthRecord.from_json(consumer, raw)
        if record is not None:
            found[consumer] = record
    return found


def heartbeats(client: redis.Redis) -> dict[str, float]:
    """Consumer id -> last heartbeat (unix seconds), from the consumers zset."""
    members = cast(
        "list[tuple[bytes, float]]", client.zrange(keys.consumers(), 0, -1, withscores=True)
    )
    return {_text(member): float(score) for member, score in members}


def prune(client: redis.Redis, now: float, retention: float = RETENTION) -> int:
    """Delete records not updated for ``retention`` seconds (or unreadable); returns how many."""
    found: dict[Any, Any] = client.hgetall(keys.worker_health())
    stale = [
        consumer
        for consumer, raw in found.items()
        if (record := HealthRecord.from_json("", raw)) is None
        or now - record.updated_at > retention
    ]
    if stale:
        client.hdel(keys.worker_health(), *stale)
    return len(stale)


# -- assessment (pure) ---------------------------------------------------------------------------


class Verdict(StrEnum):
    """A consumer's state as ``jobctl health`` and ``jobctl status`` show it."""

    #: Redis answered one of its fetches within ``stuck_after``.
    OK = "ok"
    #: Every prefetch slot runs a job: it does not poll until one finishes (healthy).
    BUSY = "busy"
    #: Heart-beaten (alive) with free slots, but no successful fetch for ``stuck_after``.
    STUCK = "stuck"
    #: Alive, but its first record is not published yet (its first second), or an old worker.
    UNKNOWN = "unknown"
    #: No longer heart-beaten: it exited or died (its messages are recovered by others).
    GONE = "gone"


#: Verdicts that fail ``jobctl health``.
FAILING = frozenset({Verdict.STUCK})


@dataclass(frozen=True, slots=True)
class ConsumerHealth:
    """One consumer's assessment."""

    consumer: str
    verdict: Verdict
    reason: str
    record: HealthRecord | None
    heartbeat: float | None

    @property
    def hostname(self) -> str:
        """Its host (from the record, else from the consumer id ``<host>:<pid>:<random>``)."""
        return self.record.hostname if self.record else self.consumer.rsplit(":", 2)[0]

    @property
    def pid(self) -> int | None:
        """Its worker's main process id."""
        if self.record:
            return self.record.pid
        parts = self.consumer.rsplit(":", 2)
        return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None  # noqa: PLR2004

    def as_dict(self, now: float) -> dict[str, Any]:
        """JSON-ready form (ages in seconds, ``None`` when unknown)."""
        record = self.record
        return {
            "consumer": self.consumer,
            "hostname": self.hostname,
            "pid": self.pid,
            "state": self.verdict.value,
            "reason": self.reason,
            "queues": list(record.queues) if record else [],
            "last_poll_age": age(record.last_poll, now) if record else None,
            "last_delivery_age": age(record.last_delivery, now) if record else None,
            "heartbeat_age": age(self.heartbeat, now),
            "started_at": record.started_at if record else None,
            "inflight": record.inflight if record else None,
            "prefetch": record.prefetch if record else None,
        }


def age(moment: float | None, now: float) -> float | None:
    """Seconds since ``moment`` (never negative; ``None`` stays ``None``)."""
    return None if moment is None else round(max(now - moment, 0.0), 3)


def verdict(
    record: HealthRecord | None,
    heartbeat: float | None,
    now: float,
    *,
    stuck_after: float,
    dead_after: float,
) -> tuple[Verdict, str]:
    """The state of one consumer and a one-line reason.

    ``heartbeat`` is its consumers-zset score (``None``: not registered). A consumer is judged
    from the newer of its last successful poll and its start, so one that just started is not
    stuck; a record that housekeeping stopped updating ages like a silent poll.
    """
    if heartbeat is None or now - heartbeat > dead_after:
        since = "never heart-beaten" if heartbeat is None else f"silent for {now - heartbeat:.0f}s"
        return Verdict.GONE, f"no consumer heartbeat ({since})"
    if record is None:
        return Verdict.UNKNOWN, "alive, no health record yet"
    reference = max(record.last_poll or -math.inf, record.started_at)
    silent = now - reference
    stale_record = now - record.updated_at
    if stale_record > stuck_after:
        return Verdict.STUCK, (
            f"health record not updated for {stale_record:.0f}s (housekeeping thread stopped?)"
        )
    if silent <= stuck_after:
        return Verdict.OK, "polling" if record.last_poll is not None else "starting"
    if record.saturated:
        return Verdict.BUSY, f"all {record.prefetch} prefetch slots running jobs"
    polled = "never polled" if record.last_poll is None else f"no successful poll for {silent:.0f}s"
    return Verdict.STUCK, f"{polled} while alive with free slots"


def assess(
    records: Mapping[str, HealthRecord],
    beats: Mapping[str, float],
    now: float,
    *,
    stuck_after: float,
    dead_after: float,
) -> list[ConsumerHealth]:
    """Every consumer that has a record or a live heartbeat, sorted by host, pid, consumer id."""
    alive = {consumer for consumer, beat in beats.items() if now - beat <= dead_after}
    found = []
    for consumer in sorted(set(records) | alive):
        record, beat = records.get(consumer), beats.get(consumer)
        state, reason = verdict(record, beat, now, stuck_after=stuck_after, dead_after=dead_after)
        found.append(ConsumerHealth(consumer, state, reason, record, beat))
    return sorted(found, key=lambda item: (item.hostname, item.pid or 0, item.consumer))
