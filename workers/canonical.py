"""Canonical JSON and idempotency keys derived from it (pure functions)."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from workers.errors import InvalidJob

_JSON_LEAVES = (str, int, float, bool, type(None))


def check_json(value: Any, path: str) -> None:
    """Raise :class:`InvalidJob` naming ``path`` if ``value`` is not JSON-native."""
    if isinstance(value, _JSON_LEAVES):
        if isinstance(value, float) and not math.isfinite(value):
            name = "NaN" if math.isnan(value) else f"{'-' if value < 0 else ''}Infinity"
            raise InvalidJob(f"{path} is {name}, which JSON cannot carry", field=path)
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_json(item, f"{path}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidJob(f"{path} has a non-string key {key!r}", field=path)
            check_json(item, f"{path}[{key!r}]")
        return
    raise InvalidJob(
        f"{path} is a {type(value).__name__}, not JSON-serializable "
        "(pass ids and plain values, not objects)",
        field=path,
    )


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def derive_key(task_name: str, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> str:
    """The default idempotency key: task name + SHA-256 of the canonical JSON of its arguments."""
    digest = hashlib.sha256(canonical_json([list(args), kwargs]).encode()).hexdigest()
    return f"{task_name}:{digest[:32]}"
