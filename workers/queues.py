"""Queues: names, declarations, and the priority layout."""

from __future__ import annotations

from kombu.entity import Exchange, Queue

#: Every queue the system consumes, in the order a default worker listens to them.
QUEUE_NAMES = ("default", "webhooks", "maintenance", "cache", "buffers")
#: Highest priority is 0 on Redis (kombu's sub-queue order); 9 is the lowest.
PRIORITY_RANGE = range(10)


def declarations() -> tuple[Queue, ...]:
    """Kombu declarations: one direct exchange per queue, routing key = queue name."""
    return tuple(
        Queue(
            name,
            Exchange(name, type="direct"),
            routing_key=name,
            queue_arguments={"x-max-priority": 10},
        )
        for name in QUEUE_NAMES
    )
