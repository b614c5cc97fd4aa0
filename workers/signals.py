"""Signal handlers: observation only (Celery logs and swallows their exceptions)."""

from __future__ import annotations

from typing import Any

from celery import signals

from workers import resources


@signals.worker_process_init.connect
def _fresh_resources_after_fork(**_: Any) -> None:
    """A pool child never reuses its parent's sockets (resources also check the pid)."""
    resources.dispose()
