"""The job catalogue and the producer API: what application code imports.

import jobs
ref = jobs.enqueue(jobs.demo.charge_order, order_id=42, amount_cents=1999)
"""

from __future__ import annotations

from jobs.enqueue import Call, JobRef, enqueue, enqueue_many
from workers.errors import (
    BatchQueueFull,
    BrokerUnavailable,
    Defer,
    InvalidJob,
    JobsError,
    PermanentError,
    QueueFull,
    Retry,
    Throttled,
)

__all__ = [
    "BatchQueueFull",
    "BrokerUnavailable",
    "Call",
    "Defer",
    "InvalidJob",
    "JobRef",
    "JobsError",
    "PermanentError",
    "QueueFull",
    "Retry",
    "Throttled",
    "enqueue",
    "enqueue_many",
]
