"""Names shared by the benchmark driver and both worker-side task modules.

Both no-op tasks pay the same side effect (one ``INCR`` of :data:`COUNTER`), both stamp tasks
the same one (one ``HSET`` of their start time into :data:`STARTED`), and every benchmark worker
process appends ``time.time()`` to :data:`READY_LIST` from Celery's ``worker_ready`` signal, so
the driver can time a drain from the moment all of its workers consume.
"""

from __future__ import annotations

#: Incremented once by every no-op job that ran (ours and bare alike).
COUNTER = "bench:done"
#: Every benchmark worker process appends ``time.time()`` here when it is ready to consume.
READY_LIST = "bench:ready"
#: Hash ``n -> time.time()`` written by the stamp tasks when they start (end-to-end latency).
STARTED = "bench:started"
#: Environment variable carrying the Redis URL to the bare app (ours reads ``JOBS_REDIS_URL``).
REDIS_URL_ENV = "BENCH_REDIS_URL"
#: The queue the bare app consumes (ours must use one of ``workers.queues.QUEUE_NAMES``).
BARE_QUEUE = "bench"
#: Our queue: "default", on a dedicated Redis database so nothing else interferes.
OURS_QUEUE = "default"
