"""``publish``: store an event once and fan it out to every subscribed, active endpoint."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from jobs.webhooks import store
from jobs.webhooks.tasks import deliver_webhook
from workers import admission, resources
from workers.admission import Call, JobRef
from workers.canonical import check_json
from workers.errors import InvalidJob, JobsError


@dataclass(frozen=True, slots=True)
class Published:
    """What ``publish`` did: the event id (the ``webhook-id``) and one job per delivery."""

    event_id: str
    jobs: list[JobRef]


def delivery_key(event_id: str, endpoint_id: int) -> str:
    """The idempotency key of a delivery: (event id, endpoint)."""
    return f"webhooks.deliver:{event_id}:{endpoint_id}"


def host_of(url: str) -> str:
    """``host:port`` of a URL (the breaker and rate-limit key of its deliveries)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{(parts.hostname or '').lower()}:{port}"


def new_event_id() -> str:
    """A fresh event id (``msg_`` + 32 hex digits)."""
    return f"msg_{uuid.uuid4().hex}"


def encode_event(event_type: str, payload: dict[str, Any], *, at: datetime) -> bytes:
    """The body of every delivery of an event (Standard Webhooks' type/timestamp/data)."""
    return json.dumps(
        {"type": event_type, "timestamp": at.isoformat(), "data": payload},
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode()


def publish(event_type: str, payload: dict[str, Any], event_id: str | None = None) -> Published:
    """Fan ``event_type`` out to every active endpoint subscribed to it.

    The event and one delivery row per endpoint are committed first, then one
    ``webhooks.deliver`` job per delivery not yet delivered is enqueued, keyed by (event id,
    endpoint). Calling ``publish`` again with the same ``event_id`` is safe: nothing is stored
    twice, a delivered endpoint is not sent to again, and enqueue deduplicates. So when
    enqueue fails (``QueueFull``, ``BrokerUnavailable``: the event id is in the error's notes),
    publish again with that ``event_id``.

    Raises ``InvalidJob`` naming the field for a bad event type, id or payload (which must be a
    JSON object).
    """
    store.check_name(event_type, "event_type")
    event_id = store.check_name(event_id, "event_id") if event_id is not None else new_event_id()
    if not isinstance(payload, dict):
        raise InvalidJob(
            f"payload must be a JSON object, got {type(payload).__name__}", field="payload"
        )
    check_json(payload, "payload")
    body = encode_event(event_type, payload, at=datetime.now(UTC))
    with resources.engine().begin() as conn:
        store.store_message(conn, event_id=event_id, event_type=event_type, body=body)
        endpoints = dict(store.subscribed(conn, event_type))
        pending = store.store_deliveries(conn, event_id, sorted(endpoints))
    calls = [
        Call(
            kwargs={"event_id": event_id, "endpoint_id": endpoint_id, "host": host_of(url)},
            key=delivery_key(event_id, endpoint_id),
        )
        for endpoint_id, url in endpoints.items()
        if endpoint_id in pending
    ]
    try:
        refs = admission.enqueue_many(deliver_webhook, calls) if calls else []
    except JobsError as exc:
        exc.add_note(f"event_id={event_id}: publish again with this event_id to finish the fan-out")
        raise
    return Published(event_id=event_id, jobs=refs)
