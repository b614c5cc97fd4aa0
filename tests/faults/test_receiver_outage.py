"""A webhook receiver answering 503 to every request for a while (a real local HTTP server).

The guarantees: no delivery is attempted more often than its attempt budget (counted at the
receiver, per ``webhook-id``), the host's breaker opens (so the dead receiver gets few calls),
and once it recovers every event is delivered or dead-lettered; replaying the dead letters
delivers each of those once, so in the end each event reached the receiver with a 2xx once.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from jobs.webhooks import publish
from ops.cli import app
from tests.integration.test_webhooks import (
    WEBHOOK_TABLES,
    WORKER_ENV,
    dead_letters,
    delivery,
    endpoint,
)
from tests.support.receiver import OK, Answer, Receiver
from tests.support.worker import wait_for
from workers.breakers import Breakers, State
from workers.settings import get_settings

#: Failures that open a host's breaker (the ratio rule is out of play: min calls 1000).
BREAKER_FAILURES = 5


@pytest.fixture
def webhook_tables(clean: tuple[Any, Any]) -> tuple[Any, Any]:
    """Empty webhook tables, dead letters and Redis."""
    db, redis_client = clean
    db.execute(WEBHOOK_TABLES)
    return db, redis_client


@pytest.fixture
def http_receiver() -> Iterator[Receiver]:
    """A real HTTP receiver on 127.0.0.1 (200 OK unless scripted)."""
    with Receiver() as server:
        yield server


def requests_per_event(receiver: Receiver) -> Counter[str]:
    """Requests the receiver got, per webhook-id."""
    return Counter(request.headers["webhook-id"] for request in receiver.received())


def run_receiver_outage(
    hooks: tuple[Any, Any],
    receiver: Receiver,
    workers: Callable[..., Any],
    *,
    outage: float,
    events: int,
    schedule: tuple[float, ...],
    open_seconds: float,
    probes: int = 1,
) -> None:
    """503 for ``outage`` s to ``events`` events; recover; replay; check each budget and 2xx."""
    db, _ = hooks
    budget = len(schedule) + 1
    receiver.always("/hook", Answer(503, body=b"down for maintenance"))
    endpoint(receiver.url())
    worker = workers(
        queues="webhooks",
        pool="threads",
        concurrency=8,
        name="hooks",
        extra_env={
            **WORKER_ENV,
            "JOBS_BREAKER_FAILURES": str(BREAKER_FAILURES),
            "JOBS_BREAKER_MIN_CALLS": "1000",
            "JOBS_BREAKER_OPEN_SECONDS": str(open_seconds),
            "JOBS_BREAKER_PROBES": str(probes),
            "JOBS_WEBHOOK_RETRY_SCHEDULE": json.dumps(schedule),
        },
    )
    host = f"127.0.0.1:{receiver.port}"
    breakers = Breakers.from_settings(get_settings())

    def opened() -> Any:
        state = breakers.state(host)
        return state if state is not None and state.state is State.OPEN else None

    started = time.monotonic()
    ids = [f"evt-outage-{i}" for i in range(events)]
    for event_id in ids:
        publish("order.paid", {"event": event_id}, event_id=event_id)
    wait_for(opened, outage, "the breaker to open", interval=0.05)
    opened_after = time.monotonic() - started
    time.sleep(max(0.0, outage - (time.monotonic() - started)))  # the outage itself
    during = receiver.received()
    assert {request.status for request in during} == {503}

    receiver.always("/hook", OK)
    recovered = time.monotonic()

    def settled() -> bool:
        rows = [delivery(db, event_id) for event_id in ids]
        return all(row["status"] in {"delivered", "failed"} for row in rows) and len(
            dead_letters(db)
        ) == sum(row["status"] == "failed" for row in rows)

    wait_for(settled, 60 + open_seconds, "every event delivered or dead-lettered", interval=0.2)
    settle_seconds = time.monotonic() - recovered
    before_replay = requests_per_event(receiver)
    assert max(before_replay.values()) <= budget, before_replay
    letters = dead_letters(db)
    assert {letter["reason"] for letter in letters} <= {"exhausted"}, letters
    assert all(letter["attempts"] <= budget for letter in letters), letters
    delivered_first = len(receiver.received(status=200))
    assert delivered_first + len(letters) == events

    for _ in range(2):  # replaying twice delivers nothing twice
        result = CliRunner().invoke(app, ["dlq", "replay", "--task", "webhooks.deliver"])
        assert result.exit_code == 0, result.output
    wait_for(
        lambda: all(delivery(db, e)["status"] == "delivered" for e in ids),
        30,
        "every event delivered after the replay",
        interval=0.2,
    )
    time.sleep(1.0)  # a duplicate delivery would arrive now
    delivered = Counter(r.headers["webhook-id"] for r in receiver.received(status=200))
    assert delivered == Counter(ids), "each webhook-id delivered exactly once with a 2xx"
    assert worker.alive()
    naive = events * budget
    print(
        f"FIGURE receiver_503: receiver 503 for {outage:.0f}s, {events} events, budget {budget} "
        f"attempts: breaker opened after {opened_after:.1f}s; {len(during)} requests while down "
        f"(vs up to {naive} without the breaker), at most {max(before_replay.values())} per "
        f"webhook-id; {delivered_first} delivered and {len(letters)} dead-lettered "
        f"{settle_seconds:.1f}s after recovery; after replaying the dead letters "
        f"{events}/{events} delivered, each webhook-id once"
    )


def test_a_10_second_receiver_outage_stays_within_budgets_and_ends_delivered_once(
    webhook_tables: Any, http_receiver: Receiver, workers: Callable[..., Any]
) -> None:
    """Given a receiver answering 503 to every request for 10 s and 12 events (2 attempts
    each; the breaker opens after 5 failures for 2 s, then lets 2 probes through), then the
    breaker opens, no webhook-id reaches the receiver more than twice, every event ends
    delivered or dead-lettered (exhausted) after recovery, and after ``jobctl dlq replay``
    (twice) each webhook-id was answered 2xx exactly once.
    """
    run_receiver_outage(
        webhook_tables,
        http_receiver,
        workers,
        outage=10,
        events=12,
        schedule=(0.3,),
        open_seconds=2,
        probes=2,
    )


@pytest.mark.slow
def test_a_60_second_receiver_outage_stays_within_budgets_and_ends_delivered_once(
    webhook_tables: Any, http_receiver: Receiver, workers: Callable[..., Any]
) -> None:
    """As the 10 s variant, for 60 s, 40 events and a breaker open for 5 s at a time (events
    exhaust their budget on probes: the dead-letter and replay path carries a real share).
    """
    run_receiver_outage(
        webhook_tables,
        http_receiver,
        workers,
        outage=60,
        events=40,
        schedule=(0.5,),
        open_seconds=5,
        probes=2,
    )
