"""Reliable Redis transport: kombu's Redis transport with an atomic fetch and a delayed store.

Stock kombu pops a message with BRPOP and only then records it as unacknowledged, so a worker
killed in between loses it. Here a Lua script pops the message and records it in this
consumer's in-flight hash in one step (``fetch.lua``); when every queue is empty the consumer
blocks on wake-up tokens that publishers push, so idle latency stays low. A consumer's in-flight
messages go back to their queue when it acknowledges nothing (reject/requeue), shuts down warm,
or stops heart-beating (recovered by any other worker's housekeeping).

Messages published with a future ``eta`` go to the delayed store (a sorted set) instead of the
queue, so no worker holds ETA messages in memory and no visibility timeout is involved.

Paused queues (``jobctl queues pause``): ``fetch.lua`` skips every list of a queue named in
``keys.paused_queues()``, in the same script that pops (:mod:`workers.pausing`).

Liveness: every fetch round trip Redis answers stamps the consumer's
:class:`workers.health.Probe` (``last_poll``), every message handed to the pool its
``last_delivery``; housekeeping publishes the probes (:mod:`workers.health`), so a consumer
loop that silently stopped is visible even while the process and its heartbeats look fine.

Also: one Redis client per channel instead of one per publish/ack (kombu builds a new
``redis.Redis`` for each, ~55 µs measured).
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from functools import cached_property
from queue import Empty
from typing import TYPE_CHECKING, Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from redis.exceptions import NoScriptError

from workers import health, keys
from workers.failpoints import failpoint
from workers.scripts import Scripts, source

if TYPE_CHECKING:
    from collections.abc import Iterator

#: Content type given to a queue entry that is not a kombu envelope at all (garbage bytes).
GARBAGE_CONTENT_TYPE = "application/x-jobs-undecodable"
#: Wake tokens kept per queue: enough to wake every idle consumer of a burst.
WAKE_TOKENS = 64
#: kombu's separator between a queue name and its priority suffix.
PRIORITY_SEP = "\x06\x16"

_FETCH_SHA = hashlib.sha1(source("fetch").encode(), usedforsecurity=False).hexdigest()
#: A queue's stats key cut around the queue name (the Lua scripts derive it per queue).
STATS_KEY_PARTS = tuple(keys.queue_stats("\x00").split("\x00"))
#: fetch.lua's drain-counter arguments (backpressure): the stats key's parts, and the priority
#: separator (also how it finds a list key's queue for pausing).
_DRAIN_COUNTER_ARGS = (*STATS_KEY_PARTS, PRIORITY_SEP)

#: Most messages one fetch takes (a consumer never takes more than its prefetch headroom).
FETCH_BATCH_MAX = 64

#: Consumer ids in this process; the housekeeping thread heart-beats them.
ACTIVE_CONSUMERS: set[str] = set()
_active_lock = threading.Lock()


def queue_of(list_key: str) -> str:
    """The queue name of a (possibly priority-suffixed) list key."""
    return list_key.split(PRIORITY_SEP, 1)[0]


def due_time(message: dict[str, Any]) -> float | None:
    """The unix time a message is due at, if its Celery ``eta`` header is in the future."""
    headers = message.get("headers") or {}
    eta = headers.get("eta")
    if not eta:
        return None
    moment = datetime.fromisoformat(eta)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    due = moment.timestamp()
    return due if due > time.time() else None


def put_commands(
    list_key: str, queue: str, raw: str, due: float | None
) -> list[tuple[str, tuple[Any, ...]]]:
    """Redis commands that publish ``raw`` now (list + wake token) or at ``due`` (delayed store)."""
    if due:
        return [("zadd", (keys.delayed(), {f"{list_key}\n{raw}": due}))]
    wake = keys.wake(queue)
    return [
        ("lpush", (list_key, raw)),
        ("lpush", (wake, "1")),
        ("ltrim", (wake, 0, WAKE_TOKENS - 1)),
    ]


def garbage_envelope(raw: bytes, tag: str, queue: str) -> dict[str, Any]:
    """Wrap bytes that are not a kombu envelope so the consumer can dead-letter them."""
    return {
        "body": base64.b64encode(raw).decode(),
        "content-encoding": "binary",
        "content-type": GARBAGE_CONTENT_TYPE,
        "headers": {},
        "properties": {
            "body_encoding": "base64",
            "delivery_tag": tag,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "delivery_mode": 2,
            "priority": 0,
        },
    }


def decode_fetched(raw: bytes, tag: str, queue: str) -> dict[str, Any]:
    """The kombu envelope of a fetched entry, or a garbage envelope when it is not one."""
    try:
        message: dict[str, Any] = loads(bytes_to_str(raw))
    except (ValueError, UnicodeDecodeError):
        return garbage_envelope(raw, tag, queue)
    if not is_kombu_envelope(message):
        return garbage_envelope(raw, tag, queue)
    message["properties"]["delivery_tag"] = tag
    return message


def is_kombu_envelope(message: Any) -> bool:
    """Whether ``message`` has the shape kombu's ``Message`` reads without crashing.

    A field of the wrong type (headers that are a string, say) would otherwise raise inside
    the consumer loop, which Celery treats as unrecoverable: the worker exits, and so does
    every worker that recovers the message after it.
    """
    if not isinstance(message, dict):
        return False
    properties = message.get("properties")
    if not isinstance(properties, dict):
        return False
    optional_types: list[tuple[Any, type | tuple[type, ...]]] = [
        (properties.get("delivery_info"), dict),
        (properties.get("body_encoding"), str),
        (message.get("headers"), dict),
        (message.get("body"), str),
        (message.get("content-type"), str),
        (message.get("content-encoding"), str),
    ]
    if not all(value is None or isinstance(value, kind) for value, kind in optional_types):
        return False
    return properties.get("body_encoding") != "base64" or decodes_as_base64(message.get("body"))


def decodes_as_base64(body: str | None) -> bool:
    """Whether kombu's base64 codec accepts ``body`` (it raises on bad padding)."""
    try:
        base64.b64decode(body or "")
    except ValueError:
        return False
    return True


class ReliableQoS(kombu_redis.QoS):
    """Acknowledgement bookkeeping on the consumer's in-flight hash (written by ``fetch.lua``)."""

    def append(self, message: Any, delivery_tag: str) -> None:
        """Track the delivery locally; ``fetch.lua`` already recorded it in Redis."""
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        """Forget the message: it has a durable outcome."""
        self.channel.inflight_forget(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        """Requeue at the front, or forget."""
        if requeue:
            self.channel.inflight_restore(delivery_tag)
        else:
            self.channel.inflight_forget(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def restore_unacked(self, client: Any = None) -> None:  # noqa: ARG002 - kombu's signature
        """Warm shutdown: every unacknowledged message goes back to its queue."""
        self.channel.inflight_restore(None)
        self._delivered.clear()

    def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False) -> None:  # noqa: ARG002
        """Requeue one message at the front of its queue."""
        self.channel.inflight_restore(tag)

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        """Disabled: heartbeat-based recovery replaces the visibility timeout."""


class ReliableChannel(kombu_redis.Channel):
    """A kombu Redis channel whose fetch is atomic and whose delays live in Redis."""

    QoS = ReliableQoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Give the channel a consumer id: ``<host>:<pid>:<random>``."""
        super().__init__(*args, **kwargs)
        self.consumer_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._waiting_for_wake = False
        self._probe = health.Probe(self.consumer_id, lambda: self.active_queues, self._load)

    # -- one client per channel --------------------------------------------------------------

    @cached_property
    def _shared_client(self) -> Any:
        return self._create_client()

    @cached_property
    def _scripts(self) -> Scripts:
        return Scripts(self._shared_client)

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """The given client, or this channel's shared one (thread-safe via its pool)."""
        yield client or self._shared_client

    # -- consuming ----------------------------------------------------------------------------

    @property
    def inflight_key(self) -> str:
        """This consumer's in-flight hash."""
        return keys.inflight(self.consumer_id)

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        """Start consuming; from a queue list, the consumer is heart-beaten from now on.

        A fanout queue (Celery's remote-control pidbox) is consumed with SUBSCRIBE, never
        fetched: such a channel is no consumer of jobs and is neither heart-beaten nor probed.
        """
        if queue not in self._fanout_queues:
            with _active_lock:
                ACTIVE_CONSUMERS.add(self.consumer_id)
            self._probe = health.register(self._probe)
        return super().basic_consume(queue, *args, **kwargs)

    def close(self) -> None:
        """Stop heart-beating this consumer (its unacked messages are restored by kombu)."""
        try:
            super().close()
        finally:
            with _active_lock:
                ACTIVE_CONSUMERS.discard(self.consumer_id)
            health.retire(self.consumer_id)

    def _load(self) -> tuple[int, int]:
        """(messages held, prefetch limit) of this channel, for the health record.

        Read from the housekeeping thread: only lengths, no iteration of kombu's state.
        """
        qos = self._qos
        if qos is None:
            return 0, 0
        held = len(qos._delivered) - len(qos._dirty)  # noqa: SLF001 - kombu keeps no public count
        return max(held, 0), int(qos.prefetch_count or 0)

    def _list_keys(self, queues: list[str]) -> list[str]:
        return [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]

    def _brpop_start(self, timeout: float | None = None) -> None:
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]  # kombu annotates None
        if self._waiting_for_wake:
            wake_keys = [keys.wake(queue) for queue in queues]
            self.client.connection.send_command("BRPOP", *wake_keys, timeout or 0)
            return
        list_keys = self._list_keys(queues)
        self.client.connection.send_command(
            "EVALSHA",
            _FETCH_SHA,
            3 + len(list_keys),
            self.inflight_key,
            keys.consumers(),
            keys.paused_queues(),
            *list_keys,
            self.consumer_id,
            repr(time.time()),
            *_DRAIN_COUNTER_ARGS,
            self._fetch_batch(),
        )

    def _fetch_batch(self) -> int:
        """How many messages one fetch may take: the prefetch headroom, capped.

        One round trip fills a threads pool's free slots, instead of one message per turn of
        the event loop.
        """
        headroom = self.qos.can_consume_max_estimate() or 1
        return max(1, min(int(headroom), FETCH_BATCH_MAX))

    def _brpop_read(self, **options: Any) -> bool:
        command = "BRPOP" if self._waiting_for_wake else "EVALSHA"
        try:
            try:
                reply = self.client.parse_response(self.client.connection, command, **options)
            except NoScriptError:
                self._shared_client.script_load(source("fetch"))
                raise Empty from None
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            self._probe.polled()
            if self._waiting_for_wake:
                self._waiting_for_wake = False
                raise Empty
            if not reply:
                self._waiting_for_wake = True
                raise Empty
            self._deliver_fetched(reply)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu's own reset value
            self._flush_brpop_reauth()

    def _deliver_fetched(self, reply: list[bytes]) -> None:
        """Hand every fetched message to the consumer, in the order fetch.lua took them."""
        entries = [
            (bytes_to_str(reply[index]), reply[index + 1], bytes_to_str(reply[index + 2]))
            for index in range(0, len(reply), 3)
        ]
        for position, (list_key, raw, tag) in enumerate(entries):
            queue = queue_of(list_key)
            self._queue_cycle.rotate(queue)
            failpoint("after_fetch")
            self._probe.delivered()
            try:
                self.connection._deliver(decode_fetched(raw, tag, queue), queue)  # noqa: SLF001
            except BaseException:
                # The rest were never handed over: back to the front of their queues now,
                # not when this consumer's in-flight hash is next recovered.
                # Last first, so the earliest ends up at the front. A failed restore leaves it
                # in flight, recovered with this consumer's other messages.
                for _, _, undelivered in reversed(entries[position + 1 :]):
                    with suppress(Exception):
                        self.inflight_restore(undelivered)
                raise

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:  # noqa: ARG002
        reply = self._scripts.fetch(
            keys=[
                self.inflight_key,
                keys.consumers(),
                keys.paused_queues(),
                *self._list_keys([queue]),
            ],
            args=[self.consumer_id, repr(time.time()), *_DRAIN_COUNTER_ARGS],
        )
        self._probe.polled()
        if not reply:
            raise Empty
        self._probe.delivered()
        # No count: fetch.lua takes one message.
        list_key, raw, tag = bytes_to_str(reply[0]), reply[1], bytes_to_str(reply[2])
        return decode_fetched(raw, tag, queue_of(list_key))

    # -- in-flight bookkeeping ----------------------------------------------------------------

    def inflight_forget(self, delivery_tag: str) -> None:
        """Drop an acknowledged message from the in-flight hash."""
        self._shared_client.hdel(self.inflight_key, delivery_tag)

    def inflight_restore(self, delivery_tag: str | None) -> int:
        """Put one (or, with ``None``, every) in-flight message back at the front of its queue."""
        return int(
            self._scripts.restore(
                keys=[self.inflight_key, keys.consumers()],
                args=[
                    self.consumer_id,
                    delivery_tag or "",
                    keys.wake(""),
                    PRIORITY_SEP,
                    "",
                    *STATS_KEY_PARTS,
                ],
            )
        )

    def inflight_defer(self, delivery_tag: str, due: float) -> bool:
        """Move an in-flight message to the delayed store, due at ``due`` (unix seconds)."""
        return bool(
            self._scripts.defer(keys=[self.inflight_key, keys.delayed()], args=[delivery_tag, due])
        )

    # -- publishing ---------------------------------------------------------------------------

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        if self._expires and queue in self._expires:
            super()._put(queue, message, **kwargs)
            return
        batch = kwargs.pop("_publish_batch", None)
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        due = due_time(message)
        if due is not None:
            message["headers"]["eta"] = None  # the promoter delivers it on time
        commands = put_commands(key, queue, dumps(message), due)
        if batch is not None:
            for name, args in commands:
                batch.add(name, *args)
            return
        with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            for name, args in commands:
                getattr(pipe, name)(*args)
            pipe.execute()


class ReliableRedisTransport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`ReliableChannel`."""

    Channel = ReliableChannel
