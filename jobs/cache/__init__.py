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

Modules: ``values`` (versioned read and compare-and-set write), ``locks`` (per-key load locks),
``loaders`` (dotted functions or SQL), ``registry`` (the warmers and chunk loading), ``runs``
(single-flight warm runs, fan-out, load slots), ``reader`` (:func:`get_or_load`), ``tasks``
(``cache.warm``, ``cache.load``, ``cache.refresh`` and beat entries).
"""

from __future__ import annotations

from jobs.cache.loaders import DOTTED, dotted_name, is_sql, resolve
from jobs.cache.locks import WAIT_PAUSE_MAX, WAIT_PAUSE_MIN, refresh_value
from jobs.cache.reader import get_or_load, refresh_key, request_refresh
from jobs.cache.registry import (
    ChunkLoader,
    KeySource,
    Warmer,
    get_warmer,
    list_keys,
    load_chunk,
    load_items,
    register_warmer,
    unregister_warmer,
    warmers,
)
from jobs.cache.runs import (
    WarmResult,
    acquire_slot,
    chunk_key,
    finish_chunk,
    release_slot,
    warm_cache,
)
from jobs.cache.tasks import load, refresh, schedule_entries, warm
from jobs.cache.values import (
    STORE_BATCH,
    Cached,
    encode,
    get,
    jittered_ttl_ms,
    new_version,
    plain,
    store,
)

__all__ = [
    "DOTTED",
    "STORE_BATCH",
    "WAIT_PAUSE_MAX",
    "WAIT_PAUSE_MIN",
    "Cached",
    "ChunkLoader",
    "KeySource",
    "WarmResult",
    "Warmer",
    "acquire_slot",
    "chunk_key",
    "dotted_name",
    "encode",
    "finish_chunk",
    "get",
    "get_or_load",
    "get_warmer",
    "is_sql",
    "jittered_ttl_ms",
    "list_keys",
    "load",
    "load_chunk",
    "load_items",
    "new_version",
    "plain",
    "refresh",
    "refresh_key",
    "refresh_value",
    "register_warmer",
    "release_slot",
    "request_refresh",
    "resolve",
    "schedule_entries",
    "store",
    "unregister_warmer",
    "warm",
    "warm_cache",
    "warmers",
]
