"""Loaders and key sources: a dotted ``"module:function"`` (imported once) or SQL text."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from workers import resources
from workers.errors import ConfigurationError, InvalidJob

#: A dotted loader name, ``"package.module:function"``; anything else is SQL text.
DOTTED = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_sql(source: str) -> bool:
    """Whether a loader / key source is SQL text (otherwise a dotted ``module:function``)."""
    return DOTTED.match(source.strip()) is None


@lru_cache(maxsize=256)
def resolve(path: str) -> Callable[..., Any]:
    """The function named ``"package.module:function"`` (imported once per process).

    Raises :class:`ConfigurationError` when it cannot be imported or is not callable.
    """
    module_name, _, attribute = path.strip().partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"loader {path!r} cannot be imported: {exc}") from None
    if not callable(target):
        raise ConfigurationError(f"loader {path!r} is not callable")
    return target  # type: ignore[no-any-return]


def dotted_name(func: Callable[..., Any]) -> str:
    """``"module:qualname"`` of ``func``, checked to import back to the same function.

    Raises :class:`InvalidJob` (field ``loader``) for lambdas, closures and methods: a
    refresh job in another process could not find them.
    """
    name = f"{getattr(func, '__module__', '?')}:{getattr(func, '__qualname__', '?')}"
    try:
        found = resolve(name) if DOTTED.match(name) else None
    except ConfigurationError:
        found = None
    if found is not func:
        raise InvalidJob(
            f"loader {name!r} is not importable by a worker (a lambda, closure or method); "
            "pass a module-level function or a 'module:function' name",
            field="loader",
        )
    return name


def query(sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rows of ``sql`` (run with psycopg parameters ``params``) as dicts."""
    with resources.engine().connect() as conn:
        # Always with parameters, so a literal % is written %% in every warmer's SQL.
        result = conn.exec_driver_sql(sql, dict(params or {}))
        return [dict(row) for row in result.mappings()]
