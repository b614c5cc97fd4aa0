"""Endpoint registration with the SSRF guard applied up front (the producer/operator side).

The guard runs again at every delivery (names can start resolving elsewhere); checking at
registration only gives the operator an early, clear refusal.
"""

from __future__ import annotations

import socket
from datetime import timedelta

from jobs.webhooks import ssrf, store
from jobs.webhooks.store import Endpoint
from workers import resources
from workers.settings import get_settings


def check_destination(url: str) -> None:
    """Refuse ``url`` (``SsrfBlocked``, reason ``ssrf_blocked``) unless it is a public http(s) URL.

    A name that does not resolve yet is accepted (it is checked again at delivery); one that
    resolves to any non-public address is refused.
    """
    settings = get_settings()
    allow = ssrf.AllowList.parse(settings.webhook_allow_hosts)
    target = ssrf.check_url(url, allow, settings.webhook_denied_ports)
    try:
        ssrf.resolve_checked(target.host, target.port, allow)
    except socket.gaierror:
        return


def add_endpoint(
    url: str,
    *,
    event_types: list[str] | None = None,
    description: str = "",
    rate_limit: str | None = None,
) -> tuple[Endpoint, str]:
    """Register a subscriber; returns it and its new ``whsec_`` secret (shown once).

    Raises ``SsrfBlocked`` for a non-public URL and ``InvalidJob`` (naming the field) for a bad
    event type or rate limit.
    """
    check_destination(url)
    return store.add_endpoint(
        resources.engine(),
        url=url,
        event_types=event_types,
        description=description,
        rate_limit=rate_limit,
    )


def disable_endpoint(endpoint_id: int, *, reason: str = "disabled by an operator") -> bool:
    """Stop deliveries to an endpoint (queued ones are dead-lettered, reason endpoint_disabled)."""
    return store.set_active(resources.engine(), endpoint_id, active=False, reason=reason)


def enable_endpoint(endpoint_id: int) -> bool:
    """Deliver to the endpoint again (replay its dead letters with ``jobctl dlq replay``)."""
    return store.set_active(resources.engine(), endpoint_id, active=True, reason=None)


def rotate_secret(endpoint_id: int, *, grace: timedelta = timedelta(hours=24)) -> str | None:
    """A new secret; the old ones keep signing (two signatures per request) for ``grace``."""
    return store.rotate_secret(resources.engine(), endpoint_id, grace=grace)
