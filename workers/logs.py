"""structlog setup: JSON in production, readable in a terminal, secrets always redacted.

Both our structlog loggers and stdlib loggers (Celery's) go through the same processors, so
one redaction step covers every line.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from workers.redaction import redact, redact_text
from workers.settings import Settings

#: Event-dict keys whose values are never logged.
_SECRET_KEYS = ("secret", "password", "token", "authorization", "api_key", "signature")


def redact_event(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Structlog processor: mask secret-named fields and passwords inside URLs."""
    for key, value in list(event_dict.items()):
        if any(name in key.lower() for name in _SECRET_KEYS):
            event_dict[key] = "***"
        elif isinstance(value, str):
            event_dict[key] = redact_text(value)
        elif isinstance(value, dict | list | tuple):
            event_dict[key] = redact(value)
    return event_dict


def shared_processors() -> list[Any]:
    """Processors both structlog and stdlib records go through."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_event,
    ]


def configure(settings: Settings) -> None:
    """Route structlog through stdlib logging with one formatter on the root logger."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if settings.env == "production"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
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
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared_processors(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    root = logging.getLogger()
    if not any(getattr(h, "_jobs_handler", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
        handler._jobs_handler = True  # type: ignore[attr-defined]  # noqa: SLF001
        root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
