"""fetch.lua against a real Redis: several messages per round trip, each recorded in flight."""

from __future__ import annotations

import json
from typing import Any

from workers import keys
from workers.publisher import list_key
from workers.scripts import Scripts
from workers.transport import PRIORITY_SEP, STATS_KEY_PARTS

CONSUMER = "test-consumer"
URGENT = list_key("default", 9)


def message(tag: str) -> bytes:
    """A kombu-shaped message whose delivery tag is ``tag``."""
    return json.dumps({"properties": {"delivery_tag": tag}, "headers": {}, "body": ""}).encode()


def fetch(redis_client: Any, *lists: str, count: int | None = None) -> list[tuple[str, str]]:
    """Run fetch.lua over ``lists`` (in that order); returns ``(list key, tag)`` per message."""
    args = [CONSUMER, "1000.0", *STATS_KEY_PARTS, PRIORITY_SEP]
    if count is not None:
        args.append(count)
    reply = Scripts(redis_client).fetch(
        keys=[keys.inflight(CONSUMER), keys.consumers(), keys.paused_queues(), *lists],
        args=args,
    )
    if not reply:
        return []
    return [(reply[i].decode(), reply[i + 2].decode()) for i in range(0, len(reply), 3)]


def test_one_fetch_takes_up_to_its_count_in_list_order_and_records_each_in_flight(
    clean: Any,
) -> None:
    """Given 2 messages on the first list and 5 on the second, when one fetch may take 4,
    then it returns both of the first list, then the oldest 2 of the second; all 4 are in the
    consumer's in-flight hash, the drain counter counts 4, and 3 stay queued.
    """
    _, redis_client = clean
    for index in range(2):
        redis_client.lpush(URGENT, message(f"u{index}"))
    for index in range(5):
        redis_client.lpush("default", message(f"d{index}"))

    taken = fetch(redis_client, URGENT, "default", count=4)

    assert taken == [(URGENT, "u0"), (URGENT, "u1"), ("default", "d0"), ("default", "d1")]
    assert sorted(redis_client.hkeys(keys.inflight(CONSUMER))) == [b"d0", b"d1", b"u0", b"u1"]
    assert redis_client.llen("default") == 3
    assert int(redis_client.hget(keys.queue_stats("default"), "fetched")) == 4


def test_a_fetch_without_a_count_takes_one_message(clean: Any) -> None:
    """The synchronous ``basic_get`` path passes no count: one message, as before."""
    _, redis_client = clean
    for index in range(3):
        redis_client.lpush("default", message(f"d{index}"))
    assert fetch(redis_client, "default") == [("default", "d0")]
    assert redis_client.llen("default") == 2


def test_identical_garbage_bodies_fetched_together_keep_distinct_in_flight_entries(
    clean: Any,
) -> None:
    """Two identical undecodable bodies in one fetch get two synthetic tags: neither entry
    overwrites the other, so both can be dead-lettered.
    """
    _, redis_client = clean
    redis_client.lpush("default", b"\xff garbage", b"\xff garbage")
    taken = fetch(redis_client, "default", count=8)
    tags = [tag for _, tag in taken]
    assert len(tags) == 2
    assert len(set(tags)) == 2
    assert all(tag.startswith("garbage:") for tag in tags)
    assert redis_client.hlen(keys.inflight(CONSUMER)) == 2


def test_an_empty_fetch_returns_nothing_and_records_nothing(clean: Any) -> None:
    """Every list empty: no reply, no in-flight entry."""
    _, redis_client = clean
    assert fetch(redis_client, URGENT, "default", count=4) == []
    assert redis_client.hlen(keys.inflight(CONSUMER)) == 0
