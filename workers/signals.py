"""Signal handlers: observation only (Celery logs and swallows their exceptions)."""

from __future__ import annotations

from typing import Any

from celery import signals

from workers import logs, resources
from workers.settings import get_settings


@signals.setup_logging.connect
def _our_logging(loglevel: int | str | None = None, **_: Any) -> None:
    """Celery's worker and beat use our structlog formatter (with redaction), not their own.

    With a receiver connected Celery installs no handler of its own, in particular none on
    ``celery.task`` loggers (which would not propagate to ours and would skip redaction).
    ``--loglevel`` still sets the level.
    """
    logs.configure(get_settings(), level=loglevel)


@signals.worker_process_init.connect
def _fresh_resources_after_fork(**_: Any) -> None:
    """A pool child never reuses its parent's sockets (resources also check the pid)."""
    resources.dispose()
