"""``JobsConsumer``: Celery's consumer with every poison-message path dead-lettered.

Stock Celery acknowledges undecodable messages and rejects (on Redis: deletes) unknown tasks
and disallowed content types such as pickle, after a log line. Here each becomes a dead letter
with a machine-readable reason and the raw bytes (never decoded with an unsafe serializer), and
the worker keeps consuming. If PostgreSQL is down the message moves to the delayed store and
is tried again later: nothing is dropped.
"""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Callable
from typing import Any

import structlog
from celery.worker.consumer import Consumer
from kombu.exceptions import ContentDisallowed

from workers import counters, deadletters, resources
from workers.errors import DeadLetterUnavailable
from workers.failpoints import failpoint
from workers.settings import get_settings
from workers.transport import GARBAGE_CONTENT_TYPE

log = structlog.get_logger("jobs.consumer")

#: Largest random extra wait (seconds) added before a broker reconnect attempt.
RECONNECT_JITTER_CAP = 10.0


def poison_record(
    message: Any, reason: str, exc: BaseException | None
) -> deadletters.DeadLetterRecord:
    """A dead letter for a message that cannot run, keeping its raw bytes."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    delivery = message.delivery_info or {}
    body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
    job_id = str(headers.get("id") or message.delivery_tag)
    return deadletters.DeadLetterRecord(
        job_id=job_id,
        task_name=str(headers.get("task") or "?"),
        queue=str(delivery.get("routing_key") or "?"),
        reason=reason,
        idempotency_key=header_key(headers.get("jobs")),
        raw_message=base64.b64encode(body).decode(),
        exc_type=type(exc).__name__ if exc else None,
        exc_message=(f"{exc}" if exc else f"{reason}: content-type {message.content_type!r}")[
            :2000
        ],
    )


def header_key(header: Any) -> str | None:
    """The idempotency key a (possibly malformed) ``jobs`` header carries, if any."""
    key = header.get("key") if isinstance(header, dict) else None
    return key if isinstance(key, str) else None


def jittered(
    errback: Callable[[BaseException, float], None] | None,
    *,
    rng: random.Random | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Callable[[BaseException, float], None]:
    """Wrap kombu's reconnect errback so each wait gets ``uniform(0, interval)`` added.

    kombu's reconnect intervals are deterministic (2, 4, 6, ... s), so workers that lost the
    broker together would reconnect together; the jitter spreads them out.
    """

    def errback_with_jitter(exc: BaseException, interval: float) -> None:
        if errback is not None:
            errback(exc, interval)
        if interval > 0:
            sleep((rng or random).uniform(0, min(interval, RECONNECT_JITTER_CAP)))

    return errback_with_jitter


class JobsConsumer(Consumer):  # type: ignore[misc]
    """Dead-letter decode errors, unknown tasks, disallowed content and malformed messages."""

    def ensure_connected(self, conn: Any) -> Any:
        """Connect with Celery's unbounded retry, plus jitter between attempts."""
        ensure_connection = conn.ensure_connection

        def ensure_connection_with_jitter(errback: Any = None, *args: Any, **kwargs: Any) -> Any:
            return ensure_connection(jittered(errback), *args, **kwargs)

        conn.ensure_connection = ensure_connection_with_jitter
        return super().ensure_connected(conn)

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        """Undecodable body (or bytes that are no message at all)."""
        if message.content_type == GARBAGE_CONTENT_TYPE:
            reason = "decode_error"
        elif isinstance(exc, ContentDisallowed):
            reason = "content_disallowed"
        else:
            reason = "decode_error"
        self._dead_letter(message, reason, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:  # noqa: ARG002
        """A message that is not a task message."""
        self._dead_letter(message, "invalid_message", None)

    def on_unknown_task(self, body: Any, message: Any, exc: BaseException) -> None:  # noqa: ARG002
        """A task name nobody registered."""
        self._dead_letter(message, "unknown_task", exc)

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:  # noqa: ARG002
        """Disallowed content type (pickle, yaml...) or a malformed task message."""
        if isinstance(exc, ContentDisallowed):
            reason = "content_disallowed"
        else:
            reason = getattr(exc, "reason", None) or "invalid_message"
        self._dead_letter(message, reason, exc)

    def _dead_letter(self, message: Any, reason: str, exc: BaseException | None) -> None:
        record = poison_record(message, reason, exc)
        try:
            entry_id = deadletters.write(resources.engine(), record)
        except DeadLetterUnavailable:
            defer = getattr(message.channel, "inflight_defer", None)
            if defer is None:  # a non-Redis broker: requeue and let it come back
                message.reject(requeue=True)
            else:
                defer(message.delivery_tag, time.time() + get_settings().dead_letter_retry_delay)
                message.ack()
            log.error("poison_message_deferred", reason=reason, job_id=record.job_id)
            return
        failpoint("after_dead_letter")
        counters.incr(counters.DEAD_LETTERED, record.task_name)
        message.ack()
        log.error(
            "poison_message_dead_lettered",
            reason=reason,
            job_id=record.job_id,
            dead_letter_id=entry_id,
        )
