"""Secret redaction for anything shown to people: logs, Flower's argsrepr, dead letters."""

from __future__ import annotations

import re
from typing import Any

#: Argument names whose values are never shown.
SECRET_NAMES = re.compile(
    r"(secret|password|passwd|token|api[_-]?key|authorization|signature)", re.IGNORECASE
)
#: ``scheme://user:password@host`` → password hidden.
_URL_PASSWORD = re.compile(r"(?P<pre>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@/\s]+@", re.IGNORECASE)
REDACTED = "***"


def redact(value: Any) -> Any:
    """A copy of ``value`` with secret-named fields and URL passwords masked."""
    if isinstance(value, dict):
        return {
            k: REDACTED if isinstance(k, str) and SECRET_NAMES.search(k) else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact_text(text: str) -> str:
    """Mask passwords embedded in URLs inside ``text``."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group('pre')}{REDACTED}@", text)


def safe_repr(value: Any, limit: int = 1024) -> str:
    """``repr`` of the redacted value, truncated: what Flower shows as argsrepr/kwargsrepr."""
    text = repr(redact(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."
