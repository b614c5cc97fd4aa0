"""Secret redaction for anything shown to people: logs, Flower's argsrepr, dead letters.

Two kinds of rule, used everywhere the same way:

- **by name** (structures, any depth): the value of a key that looks secret (``password``,
  ``webhook_secret``, ``Authorization``, ``api_key``...) becomes ``***``;
- **by shape** (any text): passwords in URLs (``redis://user:***@host``), Standard Webhooks
  secrets (``whsec_***``), credentials after ``Authorization:`` / ``Bearer`` / ``Basic``, and
  ``name=value`` / ``"name": "value"`` pairs whose name looks secret (query strings, DSNs,
  reprs of settings).

Redaction is one-way: a redacted value cannot be replayed (see :func:`is_redacted`).
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***"

_SECRETISH = (
    r"(?:secret|password|passwd|token|api[_-]?key|access[_-]?key|private[_-]?key"
    r"|authorization|signature|credential|cookie)"
)
#: Names (dict keys, keyword arguments, log fields) whose values are never shown.
SECRET_NAMES = re.compile(_SECRETISH, re.IGNORECASE)
#: The same names inside text (``Authorization`` has its own rule that keeps the scheme).
_SECRETISH_IN_TEXT = _SECRETISH.replace("|authorization", "")

#: ``scheme://user:password@host`` → password hidden.
_URL_PASSWORD = re.compile(r"(?P<pre>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@/\s]+@", re.IGNORECASE)
#: Standard Webhooks signing secrets: ``whsec_`` + base64.
_WEBHOOK_SECRET = re.compile(r"(?P<pre>whsec_)[A-Za-z0-9+/=_-]+")
#: ``Authorization: Bearer abc`` / ``authorization='Basic abc'`` → scheme kept, credentials hidden.
_AUTHORIZATION = re.compile(
    r"(?P<pre>\b(?:proxy-)?authorization['\"]?\s*[:=]\s*['\"]?(?:[a-z]+\s+)?)"
    r"(?P<value>[^\s'\",;]+)",
    re.IGNORECASE,
)
#: A bare ``Bearer <token>`` anywhere (e.g. a header dumped into an error message).
_BEARER = re.compile(r"(?P<pre>\bbearer\s+)(?P<value>[a-z0-9\-._~+/]+=*)", re.IGNORECASE)
#: ``password=x``, ``password: x``, ``"api_key":"x"``, ``'cookie_secret': 'x'``, ``?token=x&``
#: → value hidden. A bare colon needs a space after it (``jobs:token:x`` is a Redis key).
_NAMED_VALUE = re.compile(
    r"(?P<pre>\b[\w.-]*" + _SECRETISH_IN_TEXT + r"[\w-]*"
    r"(?:['\"]\s*[:=]|\s*=(?!=)|:\s)\s*['\"]?)"
    r"(?P<value>[^\s'\",;&}\])]+)",
    re.IGNORECASE,
)


def redact(value: Any) -> Any:
    """A copy of ``value`` with secret-named fields masked at any depth and text redacted."""
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


def _keep_prefix(match: re.Match[str]) -> str:
    return f"{match.group('pre')}{REDACTED}"


def redact_text(text: str) -> str:
    """Mask secrets inside free text: URL passwords, ``whsec_`` secrets, credentials."""
    if not text:
        return text
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('pre')}{REDACTED}@", text)
    text = _WEBHOOK_SECRET.sub(_keep_prefix, text)
    text = _AUTHORIZATION.sub(_keep_prefix, text)
    text = _BEARER.sub(_keep_prefix, text)
    return _NAMED_VALUE.sub(_keep_prefix, text)


def is_redacted(value: Any) -> bool:
    """Whether ``value`` (text or structure) holds something :func:`redact` masked."""
    if isinstance(value, str):
        return REDACTED in value
    if isinstance(value, dict):
        return any(is_redacted(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(is_redacted(v) for v in value)
    return False


def safe_repr(value: Any, limit: int = 1024) -> str:
    """``repr`` of the redacted value, truncated: what Flower shows as argsrepr/kwargsrepr."""
    text = repr(redact(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."
