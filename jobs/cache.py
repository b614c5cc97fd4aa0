"""Cache warming and stampede-safe reads: warmers, their jobs, and :func:`get_or_load`.

Jobs: ``cache.warm`` (one run of a warmer), ``cache.load`` (one chunk of a run) and
``cache.refresh`` (one stale key, for :func:`get_or_load`).

Layout in Redis (see :mod:`workers.keys`): each value is a hash ``jobs:cache:value:<key>``
holding its version ``v``, its JSON data ``d`` and the time it stays fresh until ``f`` (by the
Redis server's clock). The hash itself expires ``stale_while_revalidate`` seconds after the
TTL, so a stale value can still be served while it is refreshed.

Guarantees:

- **Versioned writes.** Every load takes a version (``INCR jobs:cache:version``) *before* it
  reads its source, and ``cache_set.lua`` writes a value only if the stored version is older:
  a slow load that started earlier never overwrites the value of a load that started later.
- **Per-key lock (stampede safety).** On a miss only the holder of ``jobs:cache:lock:<key>``
  (``SET NX PX`` with an owner token; compare-and-delete release in ``cache_unlock.lua``)
  loads; other callers poll the key for up to ``cache_lock_wait`` seconds and get the holder's
  value, or load themselves after that (bounded: a holder that died never blocks readers).
- **Stale while revalidate.** A stale value is returned at once and one ``cache.refresh`` job
  is enqueued with the idempotency key ``cache.refresh:<key digest>:<stale version>``, so all
  the readers of one stale value enqueue one refresh. We chose a job over a reader-side thread:
  the refresh outlives the reader's process (web request, CLI), is retried and rate limited and
  shows up like any job. In exchange the loader must be importable by workers (a module-level
  function or ``"module:function"``) and its ``params`` JSON-native.
- **Warm runs.** A run of a warmer is single-flight (``cache_run.lua``: a run lock with an owner
  token and a lease of ``run_timeout``, released when its last chunk finishes): a second warm
  while one runs is skipped. A run lists its keys, then fans out ``cache.load`` jobs of
  ``chunk_size`` keys with ``enqueue_many`` and per-chunk idempotency keys derived from the
  run (a re-run of the same warm job deduplicates). At most ``max_concurrency`` chunk loads of
  a warmer run at once (``cache_slot.lua``, a semaphore with leases: a chunk job without a
  slot is deferred, spending no attempt), and chunk starts follow the warmer's ``rate``
  through the cluster-wide limiter (``jobctl limits`` shows it as ``cache.load:<warmer>``).

Failure modes: Redis unreachable → :class:`~workers.errors.BrokerUnavailable` (readers) or a
retried job; a loader error reaches the caller of :func:`get_or_load` (nothing is cached) and
is retried in jobs; a value that is not JSON-serializable is refused with
:class:`~workers.errors.InvalidJob` naming its key.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import random
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any
from uuid import UUID

import structlog

from jobs.enqueue import Call, enqueue, enqueue_many
from workers import keys as redis_keys
from workers import ratelimits, resources
from workers.canonical import check_json
from workers.errors import (
    BatchQueueFull,
    BrokerUnavailable,
    ConfigurationError,
    Defer,
    InvalidJob,
    PermanentError,
    QueueFull,
)
from workers.policies.idempotency import owner_prefix
from workers.publisher import REDIS_ERRORS
from workers.resources import as_text
from workers.settings import WARMER_NAME_PATTERN, Settings, get_settings, template_fields
from workers.task import current_job, current_key, job

log = structlog.get_logger("jobs.cache")

#: A dotted loader name, ``"package.module:function"``; anything else is SQL text.
DOTTED = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
#: Values written per ``cache_set.lua`` call (bounds the time Redis spends in one script).
STORE_BATCH = 500
#: First and longest pause (s) between two looks at a key another caller is loading.
WAIT_PAUSE_MIN = 0.005
WAIT_PAUSE_MAX = 0.1

#: A key source: lists the parameter dicts of a run's keys.
KeySource = Callable[[], Iterable[Mapping[str, Any]]]
#: A chunk loader: ``loader(keys=[params, ...])`` -> ``{cache_key: value}`` or pairs.
ChunkLoader = Callable[..., Any]


# -- values -----------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def encode(value: Any, key: str = "value") -> str:
    """``value`` as compact JSON (dates as ISO text, decimals as numbers, UUIDs as text).

    Raises :class:`InvalidJob` naming ``key`` when the value cannot be serialized.
    """
    try:
        return json.dumps(value, default=_json_default, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidJob(
            f"cache value of {key!r} is not JSON-serializable: {exc}", field=key
        ) from None


def plain(value: Any) -> Any:
    """``value`` as JSON-native data (the form it has after a trip through the cache)."""
    return json.loads(encode(value))


@dataclass(frozen=True, slots=True)
class Cached:
    """A value read from the cache: its data, its version, whether it is still fresh."""

    value: Any
    version: int
    fresh: bool


def get(key: str) -> Cached | None:
    """The cached value of ``key`` (fresh or stale), or ``None`` when there is none.

    Raises :class:`BrokerUnavailable` when Redis does not answer.
    """
    try:
        reply = resources.scripts().cache_get(keys=[redis_keys.cache_value(key)])
    except REDIS_ERRORS as exc:
        raise BrokerUnavailable(f"cache unavailable: {exc}") from exc
    state = as_text(reply[0])
    if state == "miss":
        return None
    return Cached(value=json.loads(reply[2]), version=int(reply[1]), fresh=state == "fresh")


def new_version() -> int:
    """A load version, higher than every version handed out before (take it BEFORE loading)."""
    return int(resources.redis_client().incr(redis_keys.cache_version()))


def jittered_ttl_ms(ttl: float, jitter: float) -> int:
    """``ttl`` in ms minus a random share of up to ``jitter`` of it (never above ``ttl``)."""
    return max(1, int(ttl * (1 - random.uniform(0, jitter)) * 1000))  # noqa: S311 - not crypto


def store(
    items: Iterable[tuple[str, Any]],
    *,
    version: int,
    ttl: float,
    ttl_jitter: float = 0.0,
    stale_while_revalidate: float = 0.0,
) -> int:
    """Write ``(key, value)`` items loaded under ``version``; returns how many were written.

    An item whose stored version is newer (or equal) is left alone. Each key gets its own
    jittered TTL; the value stays readable as stale ``stale_while_revalidate`` seconds longer.
    """
    written = 0
    batch: list[tuple[str, str]] = []
    for key, value in items:
        batch.append((key, encode(value, key)))
        if len(batch) >= STORE_BATCH:
            written += _store_encoded(batch, version, ttl, ttl_jitter, stale_while_revalidate)
            batch = []
    if batch:
        written += _store_encoded(batch, version, ttl, ttl_jitter, stale_while_revalidate)
    return written


def _store_encoded(
    batch: list[tuple[str, str]], version: int, ttl: float, jitter: float, stale: float
) -> int:
    args: list[Any] = [version, int(stale * 1000)]
    for _, data in batch:
        args += [data, jittered_ttl_ms(ttl, jitter)]
    written = resources.scripts().cache_set(
        keys=[redis_keys.cache_value(key) for key, _ in batch], args=args
    )
    return int(written)


# -- per-key lock -----------------------------------------------------------------------------


def _token() -> str:
    return f"{owner_prefix()}{uuid.uuid4().hex[:12]}"


def _try_lock(key: str, token: str, lease: float) -> bool:
    return bool(
        resources.redis_client().set(
            redis_keys.cache_lock(key), token, nx=True, px=max(1, int(lease * 1000))
        )
    )


def _unlock(key: str, token: str) -> None:
    resources.scripts().cache_unlock(keys=[redis_keys.cache_lock(key)], args=[token])


# -- loaders ----------------------------------------------------------------------------------


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


def _query(sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    with resources.engine().connect() as conn:
        # Always with parameters, so a literal % is written %% in every warmer's SQL.
        result = conn.exec_driver_sql(sql, dict(params or {}))
        return [dict(row) for row in result.mappings()]


# -- warmers ----------------------------------------------------------------------------------


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
        rows: Iterable[Mapping[str, Any]] = _query(source)
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
        for row in _query(loader, binds):
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


# -- warm runs --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WarmResult:
    """What one warm did: skipped (a run was going on), or how many keys and chunks it sent."""

    warmer: str
    run: str
    skipped: bool = False
    keys: int = 0
    chunks: int = 0
    resumed: bool = False


def _run(mode: str, warmer: str, token: str, arg: int = 0) -> int:
    reply = resources.scripts().cache_run(
        keys=[redis_keys.cache_run(warmer), redis_keys.cache_run_done(warmer)],
        args=[mode, token, arg],
    )
    return int(reply)


def chunk_key(warmer: str, run: str, chunk: int) -> str:
    """The idempotency key of one chunk job of a run."""
    return f"cache.load:{warmer}:{run}:{chunk}"


def warm_cache(warmer: str, *, run: str | None = None) -> WarmResult:
    """Start a run of ``warmer``: list its keys, enqueue one ``cache.load`` job per chunk.

    Skipped (``skipped=True``, nothing enqueued) while a previous run of the same warmer is
    still going, i.e. until its last chunk finished or its ``run_timeout`` passed. ``run``
    names the run: the same name resumes that run (its chunk jobs come back deduplicated).
    Raises :class:`~workers.errors.BatchQueueFull` when the cache queue refuses chunks (the
    run stays held: call again with the same ``run`` to finish the fan-out).
    """
    spec = get_warmer(warmer)
    token = run or uuid.uuid4().hex
    started = _run("start", spec.name, token, int(spec.run_timeout * 1000))
    if started == 0:
        resources.redis_client().incr(redis_keys.counter("cache_warm_skipped"))
        log.info("cache_warm_skipped", warmer=spec.name, reason="previous_run_going")
        return WarmResult(warmer=spec.name, run=token, skipped=True)
    try:
        params = list_keys(spec)
        chunks = [params[i : i + spec.chunk_size] for i in range(0, len(params), spec.chunk_size)]
        _run("total", spec.name, token, len(chunks))
        if chunks:
            enqueue_many(
                load,
                [
                    Call(
                        kwargs={"warmer": spec.name, "keys": chunk, "run": token, "chunk": n},
                        key=chunk_key(spec.name, token, n),
                    )
                    for n, chunk in enumerate(chunks)
                ],
            )
    except BatchQueueFull:
        raise
    except Exception:
        with contextlib.suppress(*REDIS_ERRORS):  # the original error is the one to report
            _run("end", spec.name, token)
        raise
    log.info(
        "cache_warm_started",
        warmer=spec.name,
        keys=len(params),
        chunks=len(chunks),
        resumed=started == 2,  # noqa: PLR2004 - cache_run.lua's "resumed"
    )
    return WarmResult(
        warmer=spec.name,
        run=token,
        keys=len(params),
        chunks=len(chunks),
        resumed=started == 2,  # noqa: PLR2004
    )


def finish_chunk(warmer: str, run: str, chunk: int) -> bool:
    """Mark chunk ``chunk`` of run ``run`` finished; True when that ended the run."""
    return _run("finish", warmer, run, chunk) == 1


def acquire_slot(warmer: Warmer, token: str, lease: float) -> bool:
    """Take one of ``warmer``'s ``max_concurrency`` load slots for ``lease`` seconds."""
    taken = resources.scripts().cache_slot(
        keys=[redis_keys.cache_slots(warmer.name)],
        args=["acquire", token, warmer.max_concurrency, max(1, int(lease * 1000))],
    )
    return bool(int(taken))


def release_slot(warmer: Warmer, token: str) -> None:
    """Give a load slot back."""
    resources.scripts().cache_slot(
        keys=[redis_keys.cache_slots(warmer.name)], args=["release", token]
    )


# -- reads ------------------------------------------------------------------------------------


def get_or_load(
    key: str,
    loader: Callable[..., Any] | str,
    ttl: float,
    *,
    stale_while_revalidate: float = 0.0,
    params: Mapping[str, Any] | None = None,
    ttl_jitter: float = 0.0,
    wait: float | None = None,
) -> Any:
    """The value of ``key``: cached if fresh, else loaded once by ``loader(**params)``.

    - fresh → returned;
    - stale and ``stale_while_revalidate`` > 0 → the stale value is returned at once and one
      ``cache.refresh`` job is enqueued per stale version (deduplicated), which reloads the
      key under its lock; the loader must then be importable (a module-level function or
      ``"module:function"``) and ``params`` JSON-native, else :class:`InvalidJob`;
    - missing (or stale without a window) → loaded under the per-key lock: of many
      concurrent callers one loads, the others wait up to ``wait`` seconds (default
      ``cache_lock_wait``) for its value, then load themselves.

    The value is stored for ``ttl`` seconds (minus up to ``ttl_jitter`` of it) and kept
    ``stale_while_revalidate`` seconds longer. The returned value is always the JSON form
    (tuples become lists). A loader error propagates and nothing is cached; an unreachable
    Redis raises :class:`BrokerUnavailable`.
    """
    if not ttl > 0:
        raise InvalidJob("ttl must be > 0 seconds", field="ttl")
    arguments = dict(params or {})
    loader_name: str | None = None
    if stale_while_revalidate > 0:
        loader_name = loader.strip() if isinstance(loader, str) else dotted_name(loader)
        check_json(arguments, "params")
    cached = get(key)
    if cached is not None:
        if cached.fresh:
            return cached.value
        if loader_name is not None:
            request_refresh(
                key,
                loader_name,
                arguments,
                version=cached.version,
                ttl=ttl,
                ttl_jitter=ttl_jitter,
                stale_while_revalidate=stale_while_revalidate,
            )
            return cached.value
    func = resolve(loader) if isinstance(loader, str) else loader
    try:
        return _load_locked(
            key,
            lambda: func(**arguments),
            ttl=ttl,
            ttl_jitter=ttl_jitter,
            stale_while_revalidate=stale_while_revalidate,
            wait=get_settings().cache_lock_wait if wait is None else wait,
        )
    except REDIS_ERRORS as exc:
        raise BrokerUnavailable(f"cache unavailable: {exc}") from exc


def _load_locked(
    key: str,
    call: Callable[[], Any],
    *,
    ttl: float,
    ttl_jitter: float,
    stale_while_revalidate: float,
    wait: float,
) -> Any:
    """Load ``key`` as the lock holder, or wait (bounded) for the holder's value."""
    settings = get_settings()
    token = _token()
    deadline = time.monotonic() + wait
    pause = WAIT_PAUSE_MIN
    while True:
        if _try_lock(key, token, settings.cache_lock_lease):
            try:
                cached = get(key)  # the previous holder may have just stored it
                if cached is not None and cached.fresh:
                    return cached.value
                return _load_and_store(key, call, ttl, ttl_jitter, stale_while_revalidate)
            finally:
                _unlock(key, token)
        cached = get(key)
        if cached is not None and cached.fresh:
            return cached.value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(pause * random.uniform(0.5, 1.0), remaining))  # noqa: S311
        pause = min(pause * 1.5, WAIT_PAUSE_MAX)
    log.warning("cache_lock_wait_exceeded", cache_key=key, waited=wait)
    return _load_and_store(key, call, ttl, ttl_jitter, stale_while_revalidate)


def _load_and_store(
    key: str, call: Callable[[], Any], ttl: float, ttl_jitter: float, stale: float
) -> Any:
    version = new_version()
    data = encode(call(), key)
    _store_encoded([(key, data)], version, ttl, ttl_jitter, stale)
    return json.loads(data)


def refresh_key(key: str) -> str:
    """The idempotency-key stem of refreshes of ``key`` (a digest: keys may be long)."""
    return f"cache.refresh:{hashlib.sha256(key.encode()).hexdigest()[:32]}"


def request_refresh(
    key: str,
    loader: str,
    params: dict[str, Any],
    *,
    version: int,
    ttl: float,
    ttl_jitter: float,
    stale_while_revalidate: float,
) -> bool:
    """Enqueue the one ``cache.refresh`` of ``key``'s stale ``version``; False if refused.

    A full queue or an unreachable broker is logged, not raised: the reader keeps its stale
    value, and the next reader asks again.
    """
    try:
        ref = enqueue(
            refresh,
            key=f"{refresh_key(key)}:{version}",
            cache_key=key,
            loader=loader,
            params=params,
            ttl=ttl,
            ttl_jitter=ttl_jitter,
            stale_while_revalidate=stale_while_revalidate,
        )
    except (QueueFull, BrokerUnavailable) as exc:
        log.warning("cache_refresh_not_enqueued", cache_key=key, error=type(exc).__name__)
        return False
    if not ref.deduplicated:
        log.info("cache_refresh_enqueued", cache_key=key, stale_version=version)
    return True


def refresh_value(
    key: str,
    loader: str,
    params: Mapping[str, Any],
    *,
    ttl: float,
    ttl_jitter: float = 0.0,
    stale_while_revalidate: float = 0.0,
) -> bool:
    """Reload ``key`` under its lock; returns whether it did.

    Nothing is done (False) when a load holds the key's lock already or the value is fresh
    again by the time the lock is taken.
    """
    token = _token()
    if not _try_lock(key, token, get_settings().cache_lock_lease):
        log.info("cache_refresh_skipped", cache_key=key, reason="load_in_progress")
        return False
    try:
        cached = get(key)
        if cached is not None and cached.fresh:
            return False
        func = resolve(loader)
        _load_and_store(key, lambda: func(**params), ttl, ttl_jitter, stale_while_revalidate)
        return True
    finally:
        _unlock(key, token)


# -- schedule ---------------------------------------------------------------------------------


def schedule_entries(settings: Settings) -> dict[str, dict[str, Any]]:
    """Beat entries: one ``cache.warm`` per warmer, every ``interval`` seconds.

    The default interval is 80 % of the TTL (4 min for 5 min), so values never go stale.
    """
    return {
        f"cache.warm:{name}": {
            "task": "cache.warm",
            "schedule": warmer.interval,
            "kwargs": {"warmer": name},
            "options": {"queue": "cache"},
        }
        for name, warmer in sorted(warmers(settings).items())
    }


# -- tasks ------------------------------------------------------------------------------------


def _final_failure(exc: BaseException) -> bool:
    """Whether ``exc`` ends the current job for good (no retry will follow)."""
    if isinstance(exc, Defer):
        return False
    if isinstance(exc, PermanentError):
        return True
    return current_job().attempt >= int(load.resolved_options()["max_attempts"])


@job(name="cache.warm", queue="cache", time_limit=300, max_attempts=3)
def warm(*, warmer: str) -> None:
    """Start a run of ``warmer`` (see :func:`warm_cache`); skipped while one is going on.

    The run is named after this job's idempotency key, so a redelivered warm resumes its run
    and its chunk jobs deduplicate. A full cache queue defers the warm (no attempt spent).
    """
    run = hashlib.sha256(current_key().encode()).hexdigest()[:16]
    try:
        warm_cache(warmer, run=run)
    except BatchQueueFull as exc:
        raise Defer(max(exc.retry_after, 1.0), "queue_full") from exc


@job(name="cache.load", queue="cache", time_limit=120, max_attempts=3)
def load(
    *, warmer: str, keys: list[dict[str, Any]], run: str | None = None, chunk: int | None = None
) -> None:
    """Load and store one chunk of ``warmer``'s keys.

    Takes a start slot of the warmer's ``rate`` (else deferred to its reserved slot) and one
    of its ``max_concurrency`` load slots (else deferred ``cache_slot_wait`` seconds,
    jittered); neither spends an attempt. Marks its chunk finished in the run when it is done
    or has failed for good.
    """
    spec = get_warmer(warmer)
    settings = get_settings()
    if spec.rate:
        wait = ratelimits.acquire(
            resources.scripts(),
            ratelimits.limit_name("cache.load", spec.name),
            declared=ratelimits.declared_rate(spec.rate, None),
            job_id=current_job().id,
            recovery=settings.throttle_recovery,
        )
        if wait > 0:
            raise Defer(wait, "rate_limited")
    token = _token()
    lease = float(load.time_limit or settings.time_limit) + settings.claim_lease_margin
    if not acquire_slot(spec, token, lease):
        delay = settings.cache_slot_wait * random.uniform(0.5, 1.5)  # noqa: S311
        raise Defer(delay, "cache_concurrency")
    try:
        load_chunk(spec, keys)
    except Exception as exc:
        if run is not None and chunk is not None and _final_failure(exc):
            finish_chunk(spec.name, run, chunk)
        raise
    finally:
        release_slot(spec, token)
    if run is not None and chunk is not None:
        finish_chunk(spec.name, run, chunk)


@job(name="cache.refresh", queue="cache", time_limit=60, max_attempts=3)
def refresh(
    *,
    cache_key: str,
    loader: str,
    params: dict[str, Any],
    ttl: float,
    ttl_jitter: float = 0.0,
    stale_while_revalidate: float = 0.0,
) -> None:
    """Reload a stale ``cache_key`` for :func:`get_or_load` (see :func:`refresh_value`)."""
    refresh_value(
        cache_key,
        loader,
        params,
        ttl=ttl,
        ttl_jitter=ttl_jitter,
        stale_while_revalidate=stale_while_revalidate,
    )
