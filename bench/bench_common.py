"""Names shared by the benchmark driver and both worker-side task modules.

Both no-op tasks pay the same side effect (one ``INCR`` of :data:`COUNTER`) and both workers
stamp :data:`READY_KEY` from Celery's ``worker_ready`` signal, so the driver can time a drain
from the moment each worker starts consuming.
"""

from __future__ import annotations

#: Incremented once by every no-op job that ran (ours and bare alike).
COUNTER = "bench:done"
#: Set by a benchmark worker to ``time.time()`` when it is ready to consume.
READY_KEY = "bench:ready"
#: Environment variable carrying the Redis URL to the bare app (ours reads ``JOBS_REDIS_URL``).
REDIS_URL_ENV = "BENCH_REDIS_URL"
#: The queue the bare app consumes (ours must use one of ``workers.queues.QUEUE_NAMES``).
BARE_QUEUE = "bench"
#: Our queue: "default", on a dedicated Redis database so nothing else interferes.
OURS_QUEUE = "default"
