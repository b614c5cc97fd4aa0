"""Webhook delivery: endpoints, signed deliveries, the SSRF guard, retries on a schedule.

    from jobs import webhooks
    endpoint, secret = webhooks.add_endpoint("https://hooks.example.com/in", event_types=["a.b"])
    webhooks.publish("order.paid", {"order_id": 42}, event_id="order-42-paid")

Modules: ``signing`` (Standard Webhooks signatures), ``ssrf`` (the guard), ``sender`` (the
HTTP client), ``outcome`` (what an answer means), ``store`` (Postgres), ``delivery`` (one
attempt), ``tasks`` (``webhooks.deliver``), ``publish`` and ``endpoints`` (the producer side).
"""

from __future__ import annotations

from jobs.webhooks.endpoints import (
    add_endpoint,
    check_destination,
    disable_endpoint,
    enable_endpoint,
    rotate_secret,
)
from jobs.webhooks.publish import Published, publish
from jobs.webhooks.tasks import deliver_webhook

__all__ = [
    "Published",
    "add_endpoint",
    "check_destination",
    "deliver_webhook",
    "disable_endpoint",
    "enable_endpoint",
    "publish",
    "rotate_secret",
]
