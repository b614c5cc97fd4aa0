"""Redis key builder: the only place the ``jobs:`` prefix appears."""

from __future__ import annotations

PREFIX = "jobs:"


def dedup(key: str) -> str:
    """Enqueue-time dedup marker for an idempotency key (value: the first job's id)."""
    return f"{PREFIX}dedup:{key}"


def claim(key: str) -> str:
    """Execution claim (value: owner token) for an idempotency key."""
    return f"{PREFIX}claim:{key}"


def done(key: str) -> str:
    """Completion marker for an idempotency key."""
    return f"{PREFIX}done:{key}"


def starts(run: str) -> str:
    """How many times one publication (``run``) of a job has started (worker-loss counter)."""
    return f"{PREFIX}starts:{run}"


def delayed() -> str:
    """Sorted set of messages due later (score: due time, unix seconds)."""
    return f"{PREFIX}delayed"


def wake(queue_key: str) -> str:
    """Wake-up tokens for consumers blocked on an empty queue list."""
    return f"{PREFIX}wake:{queue_key}"


def inflight(consumer_id: str) -> str:
    """Hash of messages a consumer has fetched and not yet acknowledged."""
    return f"{PREFIX}inflight:{consumer_id}"


def consumers() -> str:
    """Sorted set of consumer ids by last heartbeat (unix seconds)."""
    return f"{PREFIX}consumers"


def counter(name: str) -> str:
    """A monotonically increasing counter (``duplicates_skipped``, ...)."""
    return f"{PREFIX}counter:{name}"


def rate(name: str) -> str:
    """Rate-limiter state (GCRA theoretical arrival time etc.) of a limit name."""
    return f"{PREFIX}rate:{name}"


def limits() -> str:
    """Hash of run-time rate-limit overrides (limit name -> "N/s[,burst]")."""
    return f"{PREFIX}limits"


def breaker(name: str) -> str:
    """Circuit-breaker state of a destination."""
    return f"{PREFIX}breaker:{name}"


def breakers() -> str:
    """Set of destination names that have a breaker (for listing without SCAN)."""
    return f"{PREFIX}breakers"


def queue_stats(queue: str) -> str:
    """Hash of a queue's measured figures (drain rate, ...)."""
    return f"{PREFIX}queue:{queue}:stats"


def queue_full(queue: str) -> str:
    """Marker set while a queue is over its high watermark (hysteresis until the low one)."""
    return f"{PREFIX}queue:{queue}:full"


# -- write buffers (issue 5) -----------------------------------------------------------------


def buffer(name: str) -> str:
    """List of a write buffer's rows, oldest at the head (compact JSON each)."""
    return f"{PREFIX}buffer:{name}"


def buffer_claims(name: str) -> str:
    """Sorted set of a buffer's claimed batches: flush token -> claim deadline (unix seconds)."""
    return f"{PREFIX}buffer:{name}:claims"


def buffer_processing(name: str, token: str) -> str:
    """The rows one flush (``token``) has claimed and not yet committed (newline-joined)."""
    return f"{PREFIX}buffer:{name}:processing:{token}"


def buffer_flush_requested(name: str) -> str:
    """Marker set while a size-triggered flush of a buffer is enqueued and not yet started."""
    return f"{PREFIX}buffer:{name}:flush"


# -- cache warming (issue 5) ------------------------------------------------------------------


def cache_value(key: str) -> str:
    """Hash of one cached value: ``v`` version, ``d`` JSON data, ``f`` fresh-until (ms)."""
    return f"{PREFIX}cache:value:{key}"


def cache_lock(key: str) -> str:
    """Per-key load lock of a cached value (value: owner token, with a lease)."""
    return f"{PREFIX}cache:lock:{key}"


def cache_version() -> str:
    """Counter handing out cache load versions (taken before a load starts)."""
    return f"{PREFIX}cache:version"


def cache_slots(warmer: str) -> str:
    """Sorted set of a warmer's running chunk loads (member: token, score: lease end, ms)."""
    return f"{PREFIX}cache:slots:{warmer}"


def cache_run(warmer: str) -> str:
    """Hash of a warmer's current run (owner token, chunk total) held while it goes on."""
    return f"{PREFIX}cache:run:{warmer}"


def cache_run_done(warmer: str) -> str:
    """Set of the chunk numbers of a warmer's current run that have finished."""
    return f"{PREFIX}cache:run:{warmer}:done"


# -- beat (issue 5) ---------------------------------------------------------------------------


def beat_leader() -> str:
    """The beat leader's lease (value: ``<fence> <identity>``, with an expiry)."""
    return f"{PREFIX}beat:leader"


def beat_fence() -> str:
    """Counter of beat leaderships: each new leader gets the next (fencing) number."""
    return f"{PREFIX}beat:fence"


def beat_runs() -> str:
    """Hash of schedule entry name -> unix time it last fired (kept across leaders)."""
    return f"{PREFIX}beat:runs"


def beat_last_tick() -> str:
    """Unix time of the active beat's latest tick (liveness for status and the exporter)."""
    return f"{PREFIX}beat:last_tick"


# -- operators (issue 6) ----------------------------------------------------------------------


def counters() -> str:
    """Hash of event counters (field: ``<event>:<label>``, e.g. ``dead_lettered:<task>``).

    One hash, so the exporter reads every counter with one HGETALL (no SCAN).
    """
    return f"{PREFIX}counters"


def worker_health() -> str:
    """Hash of worker liveness: worker id -> JSON (``last_poll``, ``last_delivery``, ...)."""
    return f"{PREFIX}workers:health"


def paused_queues() -> str:
    """Set of paused queue names: consumers skip them (fetch.lua); enqueue still accepts."""
    return f"{PREFIX}queues:paused"


def paused_since() -> str:
    """Hash of paused queue name -> unix time it was paused (for operators)."""
    return f"{PREFIX}queues:paused:since"


def envelope(envelope_id: str) -> str:
    """Progress of an envelope: how many of its jobs are settled (its "current job" marker)."""
    return f"{PREFIX}envelope:{envelope_id}"
