"""structlog setup: JSON in production, readable in a terminal, secrets always redacted.

Our structlog loggers and stdlib loggers (Celery's, Flower's, httpx's...) go through the same
processors and one formatter on the root logger, so :func:`redact_event`, the one redaction
step, covers every line. A line logged while a job runs carries ``task_id``, ``task``,
``attempt`` and ``key`` (bound by :class:`workers.task.JobTask`); Celery's own task lines
("received", "succeeded") carry ``task_id`` and ``task`` from the record Celery attaches.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from workers.redaction import REDACTED, SECRET_NAMES, redact, redact_text
from workers.settings import Settings

#: Event-dict keys that are structlog's own bookkeeping (never redacted, never rendered).
_INTERNAL = frozenset({"_record", "_from_structlog"})
#: Marks the root handler this module installed (configure() is idempotent).
_HANDLER_MARK = "_jobs_handler"


def redact_event(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Structlog processor, the only redaction step of every log line.

    Masks the values of secret-named fields (``password``, ``webhook_secret``,
    ``Authorization``...) at any depth, and inside every text value: passwords in URLs,
    ``whsec_`` webhook secrets, ``Authorization``/``Bearer`` credentials and ``name=value``
    pairs with a secret-looking name. Works on the rendered message of stdlib records too.
    """
    for key, value in list(event_dict.items()):
        if key in _INTERNAL:
            continue
        if SECRET_NAMES.search(key):
            event_dict[key] = REDACTED
        elif isinstance(value, str):
            event_dict[key] = redact_text(value)
        elif isinstance(value, dict | list | tuple):
            event_dict[key] = redact(value)
    return event_dict


def add_celery_task(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Structlog processor: ``task_id`` / ``task`` of Celery's own task lines.

    Celery logs "Task x[id] received/succeeded" outside the job's bound context (before the
    job starts, after it ends) but attaches ``{"id", "name", ...}`` to the record as ``data``.
    """
    record = event_dict.get("_record")
    data = getattr(record, "data", None)
    if isinstance(data, dict) and "id" in data and "name" in data:
        event_dict.setdefault("task_id", data["id"])
        event_dict.setdefault("task", data["name"])
    return event_dict


def shared_processors() -> list[Any]:
    """Processors both structlog and stdlib records go through (redaction last)."""
    return [
        structlog.contextvars.merge_contextvars,
        add_celery_task,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_event,
    ]


def renderer(settings: Settings) -> Any:
    """JSON (one object per line) in production, aligned text for a terminal in dev."""
    if settings.env == "production":
        return structlog.processors.JSONRenderer(sort_keys=False)
    return structlog.dev.ConsoleRenderer(colors=False)


def formatter(settings: Settings) -> structlog.stdlib.ProcessorFormatter:
    """The root handler's formatter: renders structlog events and stdlib records alike."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared_processors(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer(settings)],
    )


def configure(settings: Settings, level: str | int | None = None) -> None:
    """Route structlog through stdlib logging with one formatter on the root logger.

    Idempotent: calling it again replaces the formatter and level, never adds a handler.
    ``level`` (e.g. Celery's ``--loglevel``) wins over ``JOBS_LOG_LEVEL``.
    """
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, _HANDLER_MARK, False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        setattr(handler, _HANDLER_MARK, True)
        root.addHandler(handler)
    handler.setFormatter(formatter(settings))
    root.setLevel(level if level is not None else settings.log_level.upper())
