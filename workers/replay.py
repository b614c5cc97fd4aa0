"""Replay dead letters: republish them as fresh jobs with their original identity.

A replayed job keeps its job id and idempotency key and gets a fresh attempt budget
(``attempt=1``). Dead-lettered jobs never got a completion marker, so the replay runs once;
a second replay of the same entry finds the marker and is skipped by the worker: replaying
twice never runs the side effect twice. A replay that dies again updates the same row (the
store is keyed by job id) back to ``dead``.

Rows are streamed from the table in id order (keyset pages, constant memory), published in
pipelined batches, and marked replayed with one UPDATE per batch inside the transaction that
publishes, so a job that dies again before the mark commits cannot have its new failure
overwritten. Rows that carry only a raw message (poison: undecodable, unknown task, foreign
content) are skipped and reported, never guessed at.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from workers import deadletters, publisher, ratelimits
from workers.canonical import derive_key
from workers.job import Job
from workers.redaction import is_redacted

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

    from celery import Celery
    from sqlalchemy import Engine, Row

#: Jobs published (and rows marked) per round trip.
DEFAULT_BATCH = 500
#: How many refusals a summary keeps verbatim (the rest are only counted, by reason).
MAX_REFUSALS_KEPT = 100


def parse_rate(text: str) -> float:
    """Jobs per second from ``"20"``, ``"20/s"``, ``"600/m"`` or ``"3600/h"``.

    Raises :class:`InvalidJob` (a ``ValueError``) for anything else, or a rate that is not > 0.
    """
    spec = text.strip()
    if spec.replace(".", "", 1).isdigit():
        spec += "/s"  # a bare number means per second here
    return ratelimits.parse_rate(spec, field="rate").per_second


class TokenBucket:
    """Paces work to ``rate`` units per second, allowing bursts of at most one second's worth.

    :meth:`take` may run the bucket into debt (a batch larger than the burst) and then sleeps
    the debt off, so the long-run rate holds for any batch size.
    """

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """A full bucket of ``max(1, rate)`` tokens refilled at ``rate`` per second."""
        if rate <= 0:
            raise ValueError("rate must be greater than 0")
        self.rate = rate
        self.capacity = max(1.0, rate)
        self._clock, self._sleep = clock, sleep
        self._tokens = self.capacity
        self._last = clock()

    def take(self, n: int) -> float:
        """Take ``n`` tokens, sleeping as long as needed; returns the seconds slept."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= n
        if self._tokens >= 0:
            return 0.0
        wait = -self._tokens / self.rate
        self._sleep(wait)
        return wait


@dataclass(slots=True, frozen=True)
class ReplayOptions:
    """How to replay.

    ``queue`` overrides every job's queue (default: each row's original queue); ``limit`` caps
    the number replayed; ``rate`` is jobs per second; ``by`` names the operator in the history.
    """

    dry_run: bool = False
    limit: int | None = None
    rate: float | None = None
    queue: str | None = None
    by: str = "jobctl"
    batch: int = DEFAULT_BATCH


@dataclass(slots=True, frozen=True)
class Refusal:
    """A dead letter that was not replayed, and why."""

    entry_id: int
    job_id: str
    task: str
    reason: str


@dataclass(slots=True)
class ReplaySummary:
    """What a replay did (or, with ``dry_run``, would do)."""

    dry_run: bool
    replayed: int = 0
    skipped: int = 0
    skipped_by_reason: Counter[str] = field(default_factory=Counter)
    refusals: list[Refusal] = field(default_factory=list)

    @property
    def handled(self) -> int:
        """Rows looked at so far (replayed or skipped)."""
        return self.replayed + self.skipped

    def refuse(self, row: Row[Any], reason: str) -> None:
        """Count ``row`` as skipped for ``reason`` (kept verbatim for the first few)."""
        self.skipped += 1
        self.skipped_by_reason[reason] += 1
        if len(self.refusals) < MAX_REFUSALS_KEPT:
            self.refusals.append(Refusal(row.id, row.job_id, row.task_name, reason))


def effective_selector(selector: deadletters.Selector) -> deadletters.Selector:
    """``selector`` as replay reads it: filters without a status mean status ``dead``.

    Entries named by id are replayed whatever their status: the operator asked for exactly
    those, and a second replay of a finished job is a no-op at execution (done marker).
    """
    if selector.status or selector.ids:
        return selector
    return dataclasses.replace(selector, status="dead")


def planned(engine: Engine, selector: deadletters.Selector, options: ReplayOptions) -> int:
    """How many rows a replay will look at (for a progress bar's total)."""
    total = deadletters.count(engine, effective_selector(selector))
    return min(total, options.limit) if options.limit is not None else total


def refusal_reason(row: Row[Any], known_tasks: Collection[str] | None = None) -> str | None:
    """Why ``row`` cannot be replayed, or ``None`` if it can.

    Refused: poison rows (only a raw message, no decoded arguments), tasks this process does
    not know (when ``known_tasks`` is given), and arguments that were redacted when stored
    (replaying ``***`` in place of a secret would be wrong, not a fix).
    """
    if row.raw_message is not None:
        return f"not replayable: {row.reason} (only the raw message was kept)"
    if known_tasks is not None and row.task_name not in known_tasks:
        return f"not replayable: task {row.task_name!r} is not registered"
    if is_redacted(row.args) or is_redacted(row.kwargs):
        return "not replayable: arguments were redacted when dead-lettered"
    return None


def job_for(row: Row[Any], *, queue: str | None = None) -> Job:
    """The job that replays ``row``: same id and key, attempt 1, original queue and priority."""
    args = tuple(row.args or ())
    kwargs = dict(row.kwargs or {})
    return Job(
        id=row.job_id,
        task=row.task_name,
        key=row.idempotency_key or derive_key(row.task_name, args, kwargs),
        queue=queue or row.queue,
        args=args,
        kwargs=kwargs,
        attempt=1,
        priority=row.priority,
    )


def replay(
    engine: Engine,
    selector: deadletters.Selector,
    options: ReplayOptions | None = None,
    *,
    app: Celery | None = None,
    known_tasks: Collection[str] | None = None,
    on_progress: Callable[[ReplaySummary], None] | None = None,
) -> ReplaySummary:
    """Replay the dead letters ``selector`` picks (see :func:`effective_selector`).

    Streams rows in id order, publishes each batch with :func:`workers.publisher.publish` and
    marks it replayed in the same transaction. ``on_progress`` is called after every batch and
    every refusal. With ``dry_run`` nothing is published or written.

    Raises :class:`workers.errors.BrokerUnavailable` when the broker does not answer: the batch
    in flight is rolled back (not marked), earlier batches stay replayed, and running the same
    replay again is safe (same keys).
    """
    if app is None:
        from workers.app import app as default_app  # noqa: PLC0415 - the caller's process app

        app = default_app
    run = _Run(engine, options or ReplayOptions(), app, on_progress)
    for row in deadletters.iterate(engine, effective_selector(selector), batch=run.page_size):
        if run.limit_reached():
            break
        reason = refusal_reason(row, known_tasks)
        if reason is None:
            run.add(row)
        else:
            run.summary.refuse(row, reason)
            run.report()
    run.flush()
    return run.summary


class _Run:
    """One replay in progress: the pending batch, the pacing and the running summary."""

    def __init__(
        self,
        engine: Engine,
        options: ReplayOptions,
        app: Celery,
        on_progress: Callable[[ReplaySummary], None] | None,
    ) -> None:
        self.engine, self.options, self.app, self.on_progress = engine, options, app, on_progress
        self.summary = ReplaySummary(dry_run=options.dry_run)
        self.batch_size = max(1, options.batch)
        self.bucket: TokenBucket | None = None
        if options.rate is not None and not options.dry_run:
            self.bucket = TokenBucket(options.rate)
            # Batches of at most one second's worth keep the pace smooth, not bursty.
            self.batch_size = max(1, min(self.batch_size, math.floor(options.rate)))
        self.page_size = max(self.batch_size, 1000)
        self.pending: list[tuple[int, Job]] = []

    def limit_reached(self) -> bool:
        limit = self.options.limit
        return limit is not None and self.summary.replayed + len(self.pending) >= limit

    def add(self, row: Row[Any]) -> None:
        self.pending.append((row.id, job_for(row, queue=self.options.queue)))
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        if not self.options.dry_run:
            if self.bucket is not None:
                self.bucket.take(len(self.pending))
            ids = [entry_id for entry_id, _ in self.pending]
            with self.engine.begin() as conn:
                deadletters.mark_replayed_many(
                    conn, ids, queue=self.options.queue, by=self.options.by
                )
                publisher.publish(self.app, [job for _, job in self.pending])
        self.summary.replayed += len(self.pending)
        self.pending.clear()
        self.report()

    def report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.summary)


def registered_tasks(app: Celery) -> frozenset[str]:
    """Names of the tasks ``app`` knows once its catalogue modules are imported."""
    app.loader.import_default_modules()
    return frozenset(name for name in app.tasks if not name.startswith("celery."))
