"""Worker liveness, pure parts: records, probes, and the stuck / busy / gone verdicts."""

from __future__ import annotations

from typing import Any

import pytest

from workers import health, keys
from workers.health import HealthRecord, Probe, Verdict

NOW = 1_000_000.0


def record(**changes: Any) -> HealthRecord:
    """A record of an idle consumer that polled a second ago, with ``changes``."""
    values: dict[str, Any] = {
        "consumer": "host-a:42:abc",
        "hostname": "host-a",
        "pid": 42,
        "queues": ("default",),
        "started_at": NOW - 600,
        "last_poll": NOW - 1,
        "last_delivery": None,
        "inflight": 0,
        "prefetch": 2,
        "updated_at": NOW - 0.5,
    }
    values.update(changes)
    return HealthRecord(**values)


def judge(rec: HealthRecord | None, heartbeat: float | None = NOW - 0.5) -> Verdict:
    """The verdict with stuck_after 60 s and dead_after 30 s."""
    return health.verdict(rec, heartbeat, NOW, stuck_after=60, dead_after=30)[0]


def test_a_record_survives_its_json_form() -> None:
    """Given a record, when written and read back, then every field is equal."""
    original = record(last_delivery=NOW - 5, queues=("default", "webhooks"))
    assert HealthRecord.from_json(original.consumer, original.to_json()) == original


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"pid": 1}', b'{"hostname": "h"}'])
def test_an_unreadable_record_is_none_not_an_error(raw: bytes) -> None:
    """Given garbage in the hash, when parsed, then it is None (readers skip it)."""
    assert HealthRecord.from_json("c", raw) is None


def test_a_consumer_that_polled_recently_is_ok() -> None:
    """Given a live consumer that polled a second ago, then it is ok."""
    assert judge(record()) is Verdict.OK


def test_a_live_consumer_silent_past_the_threshold_with_free_slots_is_stuck() -> None:
    """Given a heart-beaten consumer whose last poll is 61 s old and a free slot, then it is
    stuck, and the reason says for how long.
    """
    state, reason = health.verdict(
        record(last_poll=NOW - 61, inflight=1), NOW, NOW, stuck_after=60, dead_after=30
    )
    assert state is Verdict.STUCK
    assert "no successful poll for 61s" in reason


def test_a_consumer_whose_slots_are_all_running_jobs_is_busy_not_stuck() -> None:
    """Given no poll for 10 minutes but every prefetch slot held, then it is busy (kombu does
    not fetch while the QoS is full).
    """
    assert judge(record(last_poll=NOW - 600, inflight=2, prefetch=2)) is Verdict.BUSY


def test_a_consumer_that_just_started_is_not_stuck_before_its_first_poll() -> None:
    """Given a consumer started 5 s ago that has not polled yet, then it is ok; after the
    threshold without a poll it is stuck.
    """
    assert judge(record(started_at=NOW - 5, last_poll=None)) is Verdict.OK
    assert judge(record(started_at=NOW - 90, last_poll=None)) is Verdict.STUCK


def test_a_record_housekeeping_stopped_updating_is_stuck() -> None:
    """Given a consumer still registered (fetch.lua beats it) whose record is 2 minutes old,
    then it is stuck: nobody publishes its liveness any more.
    """
    assert judge(record(updated_at=NOW - 120, last_poll=NOW - 120)) is Verdict.STUCK


def test_a_consumer_without_a_live_heartbeat_is_gone() -> None:
    """Given a record whose consumer's heartbeat is older than dead_after (or absent), then it
    is gone, never stuck: it exited and its messages are recovered elsewhere.
    """
    assert judge(record(last_poll=NOW - 600), heartbeat=NOW - 31) is Verdict.GONE
    assert judge(record(last_poll=NOW - 600), heartbeat=None) is Verdict.GONE


def test_a_live_consumer_without_a_record_is_unknown() -> None:
    """Given a heart-beaten consumer with no record yet (its first second), then unknown."""
    assert judge(None) is Verdict.UNKNOWN


def test_assess_lists_records_and_live_consumers_sorted_by_host_and_pid() -> None:
    """Given records and heartbeats, then every record and every live heartbeat appears once,
    sorted by host then pid, and dead heartbeats without a record are left out.
    """
    records = {
        "b:7:x": record(consumer="b:7:x", hostname="b", pid=7),
        "a:9:y": record(consumer="a:9:y", hostname="a", pid=9, last_poll=NOW - 100),
    }
    beats = {"b:7:x": NOW, "a:9:y": NOW, "a:3:z": NOW, "c:1:old": NOW - 999}
    found = health.assess(records, beats, NOW, stuck_after=60, dead_after=30)
    assert [(item.consumer, item.verdict) for item in found] == [
        ("a:3:z", Verdict.UNKNOWN),
        ("a:9:y", Verdict.STUCK),
        ("b:7:x", Verdict.OK),
    ]
    assert found[0].hostname == "a"
    assert found[0].pid == 3


class FakePipe:
    """Records pipeline calls."""

    def __init__(self) -> None:
        """Nothing queued yet."""
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        """Any command: remember it."""
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))


def test_snapshot_publishes_probes_and_deletes_retired_consumers() -> None:
    """Given a registered probe stamped by a poll and a delivery, and a retired one, when the
    snapshot is published, then one HSET carries the stamps and one HDEL the retired consumer.
    """
    probe = health.register(Probe("h:1:live", lambda: ["default"], lambda: (1, 2)))
    gone = health.register(Probe("h:1:gone", lambda: ["webhooks"]))
    try:
        probe.polled(NOW - 2)
        probe.delivered(NOW - 3)
        health.retire(gone.consumer)
        records, retired = health.snapshot(NOW)
        mine = next(rec for rec in records if rec.consumer == probe.consumer)
        assert (mine.last_poll, mine.last_delivery, mine.inflight, mine.prefetch) == (
            NOW - 2,
            NOW - 3,
            1,
            2,
        )
        assert mine.queues == ("default",)
        assert mine.updated_at == NOW
        assert retired == [gone.consumer]
        pipe = FakePipe()
        health.publish(pipe, [mine], retired)
        assert pipe.calls[0][0] == "hset"
        assert pipe.calls[0][1] == (keys.worker_health(),)
        assert set(pipe.calls[0][2]["mapping"]) == {probe.consumer}
        assert pipe.calls[1] == ("hdel", (keys.worker_health(), gone.consumer), {})
        assert health.snapshot(NOW)[1] == []  # retired ones are deleted once
    finally:
        health.retire(probe.consumer)
        health.snapshot(NOW)


def test_a_probe_whose_load_fails_still_publishes() -> None:
    """Given a probe whose channel state cannot be read, then its record is still published
    (with no load): a probe never breaks the heartbeat.
    """

    def broken() -> tuple[int, int]:
        raise RuntimeError("channel closed")

    probe = health.register(Probe("h:2:broken", lambda: ["default"], broken))
    try:
        records, _ = health.snapshot(NOW)
        mine = next(rec for rec in records if rec.consumer == probe.consumer)
        assert (mine.inflight, mine.prefetch) == (0, 0)
    finally:
        health.retire(probe.consumer)
        health.snapshot(NOW)
