"""A logical job: its identity and per-job state, kept apart from Celery's request object.

The state travels in one message header, ``jobs``: ``{"key", "attempt", "run", "dl"}``.
``run`` changes on every (re)publication but survives redelivery of the same message, so
"how often did this run start" counts worker deaths; ``dl`` carries a dead letter whose write
failed (database down), so the job is dead-lettered later without running again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

#: Name of the message header carrying per-job state.
HEADER = "jobs"


class Outcome(StrEnum):
    """How one execution of a job ended."""

    DONE = "done"
    SKIPPED = "skipped"  # already done: an idempotent no-op
    RETRIED = "retried"
    DEFERRED = "deferred"  # comes back later without spending an attempt
    DEAD = "dead_lettered"


#: Field of the ``jobs`` header -> the types its value may have (``None`` is always allowed).
HEADER_FIELDS: dict[str, tuple[type, ...]] = {
    "key": (str,),
    "attempt": (int,),
    "run": (str,),
    "dl": (dict,),
}


def header_problem(header: Any) -> str | None:
    """What is wrong with a received ``jobs`` header, or ``None`` when it can be used."""
    if header is None:
        return None
    if not isinstance(header, dict):
        return f"the {HEADER!r} header is a {type(header).__name__}, not an object"
    return fields_problem(header, HEADER_FIELDS, HEADER)


def fields_problem(
    value: dict[str, Any], fields: dict[str, tuple[type, ...]], prefix: str
) -> str | None:
    """The first of ``fields`` in ``value`` with a type it may not have, or a bad ``attempt``.

    Shared by the ``jobs`` header and an envelope's job fragments (``workers.envelopes``).
    """
    for name, kinds in fields.items():
        item = value.get(name)
        if item is not None and (isinstance(item, bool) or not isinstance(item, kinds)):
            return f"{prefix}.{name} is {item!r:.80}, not a {kinds[0].__name__}"
    attempt = value.get("attempt")
    if attempt is not None and attempt < 1:
        return f"{prefix}.attempt is {attempt}, not a positive count"
    return None


@dataclass(slots=True)
class Job:
    """One logical job as the worker runs it."""

    id: str
    task: str
    key: str
    queue: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    attempt: int = 1
    run: str = field(default_factory=lambda: uuid.uuid4().hex)
    priority: int | None = None
    pending_dead_letter: dict[str, Any] | None = None
    outcome: Outcome | None = None
    reason: str | None = None

    def header(self) -> dict[str, Any]:
        """The ``jobs`` header for publishing this job."""
        return {
            "key": self.key,
            "attempt": self.attempt,
            "run": self.run,
            "dl": self.pending_dead_letter,
        }

    def next_publication(self, *, attempt: int | None = None) -> Job:
        """The same job as a new message (new run id), e.g. a retry or a deferral."""
        return Job(
            id=self.id,
            task=self.task,
            key=self.key,
            queue=self.queue,
            args=self.args,
            kwargs=self.kwargs,
            attempt=self.attempt if attempt is None else attempt,
            priority=self.priority,
        )

    @classmethod
    def from_header(
        cls,
        header: dict[str, Any] | None,
        *,
        job_id: str,
        task: str,
        queue: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        priority: int | None,
        fallback_key: Callable[[], str],
    ) -> Job:
        """Rebuild the job from a received message (a foreign producer may omit the header)."""
        header = header or {}
        return cls(
            id=job_id,
            task=task,
            key=str(header.get("key") or fallback_key()),
            queue=queue,
            args=args,
            kwargs=kwargs,
            attempt=int(header.get("attempt") or 1),
            run=str(header.get("run") or job_id),
            priority=priority,
            pending_dead_letter=header.get("dl"),
        )
