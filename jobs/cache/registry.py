"""The warmer registry (``JOBS_WARMERS`` and warmers registered in code) and chunk loading."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from jobs.cache.loaders import is_sql, query, resolve
from jobs.cache.values import new_version, plain, store
from workers import ratelimits
from workers.errors import ConfigurationError, InvalidJob, PermanentError
from workers.registries import WARMER_NAME_PATTERN, template_fields
from workers.settings import Settings, get_settings

log = structlog.get_logger("jobs.cache")

#: A key source: lists the parameter dicts of a run's keys.
KeySource = Callable[[], Iterable[Mapping[str, Any]]]
#: A chunk loader: ``loader(keys=[params, ...])`` -> ``{cache_key: value}`` or pairs.
ChunkLoader = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class Warmer:
    """A registered warmer (from ``JOBS_WARMERS`` or :func:`register_warmer`).

    ``key_source`` and ``loader`` are dotted names, SQL text, or (registered in code) functions.
    """

    name: str
    key_source: str | KeySource
    loader: str | ChunkLoader
    key_template: str
    ttl: float = 300.0
    ttl_jitter: float = 0.1
    stale_while_revalidate: float = 60.0
    chunk_size: int = 500
    max_concurrency: int = 2
    interval: float = 240.0
    rate: str | None = None
    run_timeout: float = 480.0

    @property
    def fields(self) -> tuple[str, ...]:
        """The key template's field names."""
        return template_fields(self.key_template)

    def key(self, params: Mapping[str, Any]) -> str:
        """The cache key of one item; raises :class:`InvalidJob` when a field is missing."""
        try:
            return self.key_template.format(**{name: params[name] for name in self.fields})
        except KeyError as exc:
            raise InvalidJob(
                f"warmer {self.name!r}: key params {dict(params)!r} lack field {exc}",
                field="keys",
            ) from None


_REGISTERED: dict[str, Warmer] = {}


def register_warmer(
    name: str,
    *,
    key_source: str | KeySource,
    loader: str | ChunkLoader,
    key_template: str,
    ttl: float = 300.0,
    ttl_jitter: float = 0.1,
    stale_while_revalidate: float = 60.0,
    chunk_size: int = 500,
    max_concurrency: int = 2,
    interval: float | None = None,
    rate: str | None = None,
    run_timeout: float | None = None,
) -> Warmer:
    """Register a warmer in code (Python callables instead of dotted names or SQL).

    The registering module must be imported by workers and beat too (list it in the catalogue
    or ``JOBS_EXTRA_TASK_MODULES``). Raises :class:`ConfigurationError` for an invalid name,
    template, number or rate, or a name ``JOBS_WARMERS`` already uses.
    """
    if not re.match(WARMER_NAME_PATTERN, name):
        raise ConfigurationError(f"warmer name {name!r} must match {WARMER_NAME_PATTERN}")
    if name in get_settings().warmers:
        raise ConfigurationError(f"warmer {name!r} is already configured in JOBS_WARMERS")
    interval = interval if interval is not None else ttl * 0.8
    warmer = Warmer(
        name=name,
        key_source=key_source,
        loader=loader,
        key_template=key_template,
        ttl=ttl,
        ttl_jitter=ttl_jitter,
        stale_while_revalidate=stale_while_revalidate,
        chunk_size=chunk_size,
        max_concurrency=max_concurrency,
        interval=interval,
        rate=rate,
        run_timeout=run_timeout if run_timeout is not None else interval * 2,
    )
    _check(warmer)
    _REGISTERED[name] = warmer
    return warmer


def unregister_warmer(name: str) -> None:
    """Forget a warmer registered in code (tests)."""
    _REGISTERED.pop(name, None)


def _check(warmer: Warmer) -> None:
    try:
        template_fields(warmer.key_template)
    except ValueError as exc:
        raise ConfigurationError(f"warmer {warmer.name!r}: {exc}") from None
    numbers_ok = (
        warmer.ttl > 0
        and 0 <= warmer.ttl_jitter < 1
        and warmer.stale_while_revalidate >= 0
        and warmer.chunk_size >= 1
        and warmer.max_concurrency >= 1
        and warmer.interval > 0
        and warmer.run_timeout > 0
    )
    if not numbers_ok:
        raise ConfigurationError(f"warmer {warmer.name!r}: a ttl, size or interval is out of range")
    if warmer.rate is not None:
        try:
            ratelimits.declared_rate(warmer.rate, None)
        except InvalidJob as exc:
            raise ConfigurationError(f"warmer {warmer.name!r}: {exc}") from None


def warmers(settings: Settings | None = None) -> dict[str, Warmer]:
    """Every warmer: ``JOBS_WARMERS`` plus those registered in code, by name."""
    settings = settings or get_settings()
    found: dict[str, Warmer] = {}
    for name, spec in settings.warmers.items():
        warmer = Warmer(
            name=name,
            key_source=spec.key_source,
            loader=spec.loader,
            key_template=spec.key_template,
            ttl=spec.ttl,
            ttl_jitter=spec.ttl_jitter,
            stale_while_revalidate=spec.stale_while_revalidate,
            chunk_size=spec.chunk_size,
            max_concurrency=spec.max_concurrency,
            interval=spec.effective_interval,
            rate=spec.rate,
            run_timeout=spec.effective_run_timeout,
        )
        _check(warmer)
        found[name] = warmer
    for name, warmer in _REGISTERED.items():
        if name in found:
            raise ConfigurationError(f"warmer {name!r} is both registered and in JOBS_WARMERS")
        found[name] = warmer
    return found


def get_warmer(name: str, settings: Settings | None = None) -> Warmer:
    """The warmer ``name``; an unknown name is a :class:`PermanentError` (dead-lettered)."""
    found = warmers(settings).get(name)
    if found is None:
        raise PermanentError(f"unknown warmer {name!r} (known: {sorted(warmers(settings))})")
    return found


def list_keys(warmer: Warmer) -> list[dict[str, Any]]:
    """The parameter dicts of the keys one run of ``warmer`` loads (JSON-native)."""
    source = warmer.key_source
    if isinstance(source, str) and is_sql(source):
        rows: Iterable[Mapping[str, Any]] = query(source)
    else:
        rows = (resolve(source) if isinstance(source, str) else source)()
    found = []
    for row in rows:
        params = plain(dict(row))
        warmer.key(params)  # every field present
        found.append(params)
    return found


def load_items(warmer: Warmer, params: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """Load one chunk: ``(cache key, value)`` for each key the loader returned.

    SQL is run with each template field bound to the chunk's list of values; its rows carry
    those fields and a ``value`` column (without one, the other columns are the value). A
    function gets ``keys=params`` and returns ``{cache_key: value}`` or ``(params, value)``
    pairs (params as a dict, or the cache key itself).
    """
    loader = warmer.loader
    if isinstance(loader, str) and is_sql(loader):
        binds = {name: [p[name] for p in params] for name in warmer.fields}
        items = []
        for row in query(loader, binds):
            key = warmer.key(plain({name: row[name] for name in warmer.fields}))
            value = row["value"] if "value" in row else {k: row[k] for k in row}
            items.append((key, value))
        return items
    result = (resolve(loader) if isinstance(loader, str) else loader)(keys=params)
    pairs = result.items() if isinstance(result, Mapping) else result
    return [
        (ident if isinstance(ident, str) else warmer.key(ident), value) for ident, value in pairs
    ]


def load_chunk(warmer: Warmer, params: list[dict[str, Any]]) -> int:
    """Load and store one chunk of ``warmer``'s keys; returns how many values were written.

    The version is taken before the loader runs, so a newer load's values are never
    overwritten by this one.
    """
    version = new_version()
    items = load_items(warmer, params)
    written = store(
        items,
        version=version,
        ttl=warmer.ttl,
        ttl_jitter=warmer.ttl_jitter,
        stale_while_revalidate=warmer.stale_while_revalidate,
    )
    log.info(
        "cache_chunk_loaded",
        warmer=warmer.name,
        keys=len(params),
        written=written,
        kept_newer=len(items) - written,
    )
    return written
