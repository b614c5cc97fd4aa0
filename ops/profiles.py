"""Worker profiles: how a ``celery worker`` is tuned, chosen per queue at start.

``standard`` (the default) is Celery's behaviour plus task events (``-E``): Flower shows every
task live, workers find each other (mingle, gossip) and send heartbeats Flower uses to mark
them online. Right for interactive queues and for anything an operator watches task by task.

``throughput`` is for bulk queues fed by ``enqueue_many`` (envelopes): it turns off what costs
per message or per second without guarding a job:

=====================  ==========================  =====================================
setting                throughput                  what you give up
=====================  ==========================  =====================================
task events (``-E``)   off                         Flower's live task list and task pages
                                                   for this worker (``jobctl status``,
                                                   metrics and dead letters still count
                                                   every logical job)
worker heartbeats      off (``--without-           Flower shows the worker offline; our own
                       heartbeat``)                consumer heartbeat (recovery, ``jobctl
                                                   health``) is unaffected
mingle, gossip         off                         revokes are not synced between workers
                                                   at start (we do not use revoke)
prefetch               multiplier 4                up to 4 messages (envelopes) held per
                                                   pool process: a slow job delays the
                                                   ones prefetched behind it
pool                   prefork, one process per    as ``standard``
                       CPU
=====================  ==========================  =====================================

Guarantees are the same in both: late acks, claims, retries, dead letters, the lease fence.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WorkerProfile:
    """Extra ``celery worker`` options of one profile."""

    name: str
    options: tuple[str, ...]
    summary: str


PROFILES: dict[str, WorkerProfile] = {
    "standard": WorkerProfile(
        "standard",
        ("-E",),
        "task events on (Flower shows every task), Celery's heartbeats, mingle and gossip",
    ),
    "throughput": WorkerProfile(
        "throughput",
        (
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
            "--prefetch-multiplier",
            "4",
        ),
        "no task events, heartbeats, mingle or gossip; prefetch 4 (bulk queues, envelopes)",
    ),
}


#: Prefetch multiplier of ``-P threads`` workers (I/O-bound queues: webhooks) unless a profile
#: or the command line sets one. With 1, a thread that finishes waits for the main loop to ack
#: and fetch (two round trips, behind a GIL the other threads keep busy); with 2 the next
#: message is already in the pool's queue (webhooks bench, N=8: 0.69 -> 0.75 of raw httpx).
#: The cost: up to N more messages held per worker, put back at shutdown or recovered if it dies.
THREADS_PREFETCH_MULTIPLIER = 2


def pool_options(pool: str, chosen: list[str]) -> list[str]:
    """Options ``pool`` adds to a worker command line whose other options are ``chosen``."""
    if pool == "threads" and "--prefetch-multiplier" not in chosen:
        return ["--prefetch-multiplier", str(THREADS_PREFETCH_MULTIPLIER)]
    return []


def profile_options(name: str) -> list[str]:
    """The options of profile ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return list(PROFILES[name].options)
    except KeyError:
        raise ValueError(f"unknown worker profile {name!r}; known: {sorted(PROFILES)}") from None
