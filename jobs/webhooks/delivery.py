"""One delivery attempt: load, sign, send, classify, record (the task is a thin adapter).

The outcome of every attempt is stored on the delivery row before the attempt's error is
raised to the policy chain, so ``jobctl webhooks deliveries`` always shows the last attempt.
At-least-once: a worker that dies after the receiver answered but before the row and the
idempotency marker are written sends the same ``webhook-id`` again; receivers de-duplicate
on it, as the Standard Webhooks convention asks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import structlog
from sqlalchemy.exc import OperationalError

from jobs.webhooks import outcome, signing, store
from jobs.webhooks.outcome import Verdict
from jobs.webhooks.sender import HttpResult, sender
from jobs.webhooks.store import Status
from workers import ratelimits, resources
from workers.errors import Defer, PermanentError, Retry, SsrfBlocked, Throttled
from workers.redaction import redact_text
from workers.settings import get_settings

log = structlog.get_logger("jobs.webhooks")

#: Characters of a receiver's answer kept in ``last_error``.
ERROR_EXCERPT = 200


@dataclass(frozen=True, slots=True)
class AttemptContext:
    """Who is attempting: the job's id (rate-limit reservations) and attempt numbers."""

    job_id: str
    attempt: int
    max_attempts: int


def endpoint_limit_name(endpoint_id: int) -> str:
    """Name of an endpoint's own rate limit (``jobctl limits`` shows it)."""
    return ratelimits.limit_name("webhooks.deliver", f"endpoint:{endpoint_id}")


def deliver(*, event_id: str, endpoint_id: int, context: AttemptContext) -> Status:
    """Make one attempt to deliver ``event_id`` to ``endpoint_id``.

    Returns the new status on success (delivered, or already delivered). Raises ``Retry`` /
    ``Throttled`` (retry on the schedule), ``PermanentError`` (dead letter; reasons
    ``ssrf_blocked``, ``receiver_rejected``, ``endpoint_gone``, ``endpoint_disabled``,
    ``delivery_not_found``) or ``Defer`` (the endpoint's own rate limit, or the database is
    unreachable: no attempt spent).
    """
    try:
        return _deliver(event_id=event_id, endpoint_id=endpoint_id, context=context)
    except OperationalError as exc:
        delay = get_settings().dead_letter_retry_delay
        log.warning("webhook_database_unavailable", error=type(exc.orig).__name__)
        raise Defer(delay, "database_unavailable") from exc


def _deliver(*, event_id: str, endpoint_id: int, context: AttemptContext) -> Status:
    settings = get_settings()
    engine = resources.engine()
    loaded = store.load_attempt(engine, event_id=event_id, endpoint_id=endpoint_id)
    if loaded is None:
        raise PermanentError(
            f"no delivery of event {event_id} to endpoint {endpoint_id}",
            reason="delivery_not_found",
        )
    if loaded.status is Status.DELIVERED:
        log.info("webhook_already_delivered", event_id=event_id, endpoint_id=endpoint_id)
        return Status.DELIVERED
    endpoint = loaded.endpoint
    if not endpoint.active:
        message = f"endpoint {endpoint_id} is disabled ({endpoint.disabled_reason or 'no reason'})"
        _record(loaded, context, Status.FAILED, None, message, None)
        raise PermanentError(message, reason="endpoint_disabled")
    if endpoint.rate_limit:
        wait = ratelimits.acquire(
            resources.scripts(),
            endpoint_limit_name(endpoint_id),
            declared=ratelimits.parse_rate(endpoint.rate_limit),
            job_id=context.job_id,
            recovery=settings.throttle_recovery,
        )
        if wait > 0:
            raise Defer(wait, "rate_limited")

    now = time.time()
    headers = signing.signed_headers(
        endpoint.valid_secrets(datetime.fromtimestamp(now, UTC)),
        message_id=event_id,
        timestamp=int(now),
        body=loaded.body,
        attempt=context.attempt,
    )
    started = time.monotonic()
    try:
        result = sender().post(endpoint.url, body=loaded.body, headers=headers)
    except SsrfBlocked as exc:
        _record(loaded, context, Status.FAILED, None, str(exc), _ms_since(started))
        raise
    except httpx.TimeoutException as exc:
        _retry(loaded, context, None, f"timeout: {type(exc).__name__}", _ms_since(started), None)
    except httpx.TransportError as exc:
        error = f"connection failed: {type(exc).__name__}: {redact_text(str(exc))}"
        _retry(loaded, context, None, error, _ms_since(started), None)
    return _settle(loaded, context, result, now=now)


def _settle(
    loaded: store.Attempt, context: AttemptContext, result: HttpResult, *, now: float
) -> Status:
    settings = get_settings()
    decision = outcome.decide(
        result.status, result.headers, now=now, cap=settings.webhook_retry_after_cap
    )
    duration = round(result.elapsed * 1000)
    code = result.status
    if decision.verdict is Verdict.DELIVERED:
        _record(loaded, context, Status.DELIVERED, code, None, duration)
        log.info("webhook_delivered", status=code, duration_ms=duration)
        return Status.DELIVERED
    answer = _excerpt(result)
    if decision.verdict is Verdict.GONE:
        reason = "receiver answered 410 Gone"
        store.set_active(resources.engine(), loaded.endpoint.id, active=False, reason=reason)
        _record(loaded, context, Status.FAILED, code, f"{reason}: {answer}", duration)
        log.warning("webhook_endpoint_disabled", endpoint_id=loaded.endpoint.id, status=code)
        raise PermanentError(
            f"endpoint {loaded.endpoint.id} disabled: {reason}", reason="endpoint_gone"
        )
    if decision.verdict is Verdict.REJECTED:
        error = f"receiver answered {code}: {answer}"
        _record(loaded, context, Status.FAILED, code, error, duration)
        raise PermanentError(error, reason="receiver_rejected")
    if 300 <= code < 400:  # noqa: PLR2004 - the 3xx range
        error = f"receiver answered {code} (redirects are not followed)"
    else:
        error = f"receiver answered {code}: {answer}"
    _retry(
        loaded,
        context,
        code,
        error,
        duration,
        decision.retry_after,
        throttled=decision.verdict is Verdict.THROTTLED,
    )
    raise AssertionError("unreachable")  # pragma: no cover - _retry always raises


def _retry(  # noqa: PLR0917 - one attempt's facts
    loaded: store.Attempt,
    context: AttemptContext,
    code: int | None,
    error: str,
    duration: int | None,
    retry_after: float | None,
    *,
    throttled: bool = False,
) -> None:
    """Record a retryable failure and raise the matching ``Retry`` (always raises)."""
    settings = get_settings()
    final = context.attempt >= context.max_attempts
    delay = outcome.retry_delay(
        context.attempt,
        retry_after,
        settings.webhook_retry_schedule,
        jitter=settings.webhook_retry_jitter,
    )
    _record(
        loaded,
        context,
        Status.FAILED if final else Status.RETRYING,
        code,
        error,
        duration,
        next_attempt_in=None if final else delay,
    )
    log.warning("webhook_attempt_failed", status=code, error=error[:ERROR_EXCERPT], final=final)
    if throttled:
        exc: Retry = Throttled(retry_after=retry_after, message=error)
        exc.delay = delay  # the schedule's delay, or Retry-After when longer
        raise exc from None
    raise Retry(delay, error) from None


def _record(  # noqa: PLR0917 - one attempt's facts
    loaded: store.Attempt,
    context: AttemptContext,
    status: Status,
    code: int | None,
    error: str | None,
    duration: int | None,
    *,
    next_attempt_in: float | None = None,
) -> None:
    store.record_attempt(
        resources.engine(),
        loaded.delivery_id,
        attempt=context.attempt,
        status=status,
        status_code=code,
        error=None if error is None else redact_text(error),
        duration_ms=duration,
        next_attempt_in=next_attempt_in,
    )


def _excerpt(result: HttpResult) -> str:
    text = result.body[:ERROR_EXCERPT].decode("utf-8", "replace").strip()
    return redact_text(text) or "(empty body)"


def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
