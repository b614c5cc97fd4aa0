"""Webhook delivery end to end: real workers (threads pool) POST to a real receiver on 127.0.0.1.

The workers allow-list 127.0.0.1 (``JOBS_WEBHOOK_ALLOW_HOSTS``) and use a short retry schedule
so the Standard Webhooks timing (5 s ... 24 h) shrinks to fractions of a second.
"""

from __future__ import annotations

import itertools
import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from standardwebhooks.webhooks import Webhook

from jobs.webhooks import publish, store
from jobs.webhooks.signing import ATTEMPT_HEADER
from tests.support.receiver import OK, Answer, Receiver, hang
from tests.support.worker import wait_for
from workers import keys, resources
from workers.breakers import Breakers, State
from workers.settings import get_settings

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import psycopg

#: Retry delays of the test workers (seconds): attempts 1..4.
SCHEDULE = (0.4, 0.8, 1.2)
JITTER = 0.2
#: Promotion from the delayed store happens every 0.25 s; a loaded machine adds more.
PROMOTION_SLACK = 1.0
WORKER_ENV = {
    "JOBS_WEBHOOK_ALLOW_HOSTS": json.dumps(["127.0.0.1"]),
    "JOBS_WEBHOOK_RETRY_SCHEDULE": json.dumps(SCHEDULE),
    "JOBS_WEBHOOK_RETRY_JITTER": str(JITTER),
    "JOBS_WEBHOOK_TIMEOUT": "1",
}
WEBHOOK_TABLES = "TRUNCATE webhook_deliveries, webhook_messages, webhook_endpoints RESTART IDENTITY"


@pytest.fixture
def hooks(clean: tuple[Any, Any]) -> tuple[Any, Any]:
    """Empty webhook tables, dead letters and Redis."""
    db, redis_client = clean
    db.execute(WEBHOOK_TABLES)
    return db, redis_client


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A receiver on 127.0.0.1 (200 OK unless scripted)."""
    with Receiver() as server:
        yield server


@pytest.fixture
def hook_worker(workers: Callable[..., Any]) -> Callable[..., Any]:
    """Start a webhooks worker (threads pool) with the test schedule and allow-list."""

    def start(**env: str) -> Any:
        return workers(
            queues="webhooks",
            pool="threads",
            concurrency=8,
            name="hooks",
            extra_env={**WORKER_ENV, **env},
        )

    return start


def endpoint(url: str, **fields: Any) -> tuple[store.Endpoint, str]:
    """Register an endpoint directly in the store (the registration-time guard is tested apart)."""
    return store.add_endpoint(resources.engine(), url=url, **fields)


def delivery(db: psycopg.Connection[Any], event_id: str) -> dict[str, Any]:
    """The delivery row(s) of an event, as a dict (the only one) ."""
    cursor = db.execute(
        "SELECT status, attempts, last_status_code, last_error FROM webhook_deliveries "
        "WHERE event_id = %s",
        (event_id,),
    )
    names = [column.name for column in cursor.description or ()]
    rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    assert len(rows) == 1, rows
    return rows[0]


def settled(db: psycopg.Connection[Any], event_id: str, status: str) -> Callable[[], bool]:
    """Condition: the event's delivery has ``status``."""
    return lambda: delivery(db, event_id)["status"] == status


def dead_letters(db: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Dead letters of webhooks.deliver: reason, kwargs, attempts."""
    rows = db.execute(
        "SELECT reason, kwargs, attempts FROM dead_letters WHERE task_name = 'webhooks.deliver' "
        "ORDER BY id"
    ).fetchall()
    return [{"reason": r[0], "kwargs": r[1], "attempts": r[2]} for r in rows]


def test_a_delivery_is_signed_so_that_standardwebhooks_verifies_it(
    hooks: Any, receiver: Receiver, hook_worker: Callable[..., Any]
) -> None:
    """Given an endpoint and its secret, when an event is published, then the receiver gets
    the exact JSON body with webhook-id = event id, attempt 1, our User-Agent, and the
    ``standardwebhooks`` package verifies the signature with the secret.
    """
    db, _ = hooks
    _, secret = endpoint(receiver.url())
    hook_worker()
    published = publish("order.paid", {"order_id": 42, "amount": "19.99"}, event_id="evt-1")
    wait_for(settled(db, "evt-1", "delivered"), 20, "delivered")
    [request] = receiver.received()
    assert request.headers["webhook-id"] == published.event_id == "evt-1"
    assert request.headers[ATTEMPT_HEADER] == "1"
    assert request.headers["user-agent"].startswith("jobs-platform-webhooks/")
    assert request.headers["content-type"] == "application/json"
    payload = Webhook(secret).verify(request.body, request.headers)
    assert payload["type"] == "order.paid"
    assert payload["data"] == {"order_id": 42, "amount": "19.99"}
    assert len(request.headers["webhook-signature"].split()) == 1


def test_during_a_secret_rotation_both_secrets_sign_and_both_verify(
    hooks: Any, receiver: Receiver, hook_worker: Callable[..., Any]
) -> None:
    """Given an endpoint whose secret was rotated with a grace period, when an event is
    delivered, then the request carries two v1 signatures and a receiver holding either the
    old or the new secret verifies it.
    """
    db, _ = hooks
    created, old_secret = endpoint(receiver.url())
    new_secret = store.rotate_secret(resources.engine(), created.id, grace=_hours(1))
    assert new_secret is not None
    assert new_secret != old_secret
    hook_worker()
    publish("user.created", {"id": 7}, event_id="evt-rot")
    wait_for(settled(db, "evt-rot", "delivered"), 20, "delivered")
    [request] = receiver.received()
    assert len(request.headers["webhook-signature"].split()) == 2
    for secret in (old_secret, new_secret):
        assert Webhook(secret).verify(request.body, request.headers)["data"] == {"id": 7}


def test_three_5xx_then_success_is_delivered_on_attempt_4_within_the_schedule(
    hooks: Any, receiver: Receiver, hook_worker: Callable[..., Any]
) -> None:
    """Given a receiver failing 500, 502, 503 then answering 200, when an event is published,
    then it is delivered on attempt 4, the attempt header counts 1..4, and each gap between
    attempts lies within the schedule's delay ± jitter (plus promotion slack).
    """
    db, _ = hooks
    receiver.script("/hook", [Answer(500), Answer(502), Answer(503)])
    endpoint(receiver.url())
    hook_worker()
    publish("order.paid", {"order_id": 1}, event_id="evt-retry")
    wait_for(settled(db, "evt-retry", "delivered"), 30, "delivered")
    requests = receiver.received()
    assert [r.headers[ATTEMPT_HEADER] for r in requests] == ["1", "2", "3", "4"]
    assert {r.headers["webhook-id"] for r in requests} == {"evt-retry"}
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(requests)]
    for gap, delay in zip(gaps, SCHEDULE, strict=True):
        assert delay * (1 - JITTER) - 0.05 <= gap <= delay * (1 + JITTER) + PROMOTION_SLACK, gaps
    row = delivery(db, "evt-retry")
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("delivered", 4, 200)
    assert dead_letters(db) == []


def test_a_400_is_dead_lettered_at_once(
    hooks: Any, receiver: Receiver, hook_worker: Callable[..., Any]
) -> None:
    """Given a receiver answering 400, when an event is published, then there is exactly one
    attempt and the delivery is dead-lettered (reason receiver_rejected), its message carrying
    ids only: no secret.
    """
    db, _ = hooks
    receiver.always("/hook", Answer(400, body=b"bad schema"))
    created, secret = endpoint(receiver.url())
    hook_worker()
    publish("order.paid", {"order_id": 2}, event_id="evt-400")
    wait_for(lambda: dead_letters(db), 20, "a dead letter")
    [letter] = dead_letters(db)
    assert letter["reason"] == "receiver_rejected"
    assert letter["kwargs"] == {
        "event_id": "evt-400",
        "endpoint_id": created.id,
        "host": f"127.0.0.1:{receiver.port}",
    }
    assert secret not in json.dumps(letter)
    assert len(receiver.received()) == 1
    row = delivery(db, "evt-400")
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("failed", 1, 400)
    assert "bad schema" in row["last_error"]


def test_a_410_disables_the_endpoint(
    hooks: Any, receiver: Receiver, hook_worker: Callable[..., Any]
) -> None:
    """Given a receiver answering 410 Gone, when an event is published, then the endpoint is
    disabled with the reason, the delivery is dead-lettered (endpoint_gone), and a later
    event is not even enqueued for it.
    """
    db, _ = hooks
    receiver.always("/hook", Answer(410))
    created, _ = endpoint(receiver.url())
    hook_worker()
    publish("order.paid", {"order_id": 3}, event_id="evt-410")
    wait_for(lambda: dead_letters(db), 20, "a dead letter")
    assert dead_letters(db)[0]["reason"] == "endpoint_gone"
    disabled = store.get_endpoint(resources.engine(), created.id)
    assert disabled is not None
    assert not disabled.active
    assert "410" in (disabled.disabled_reason or "")
    assert publish("order.paid", {"order_id": 4}).jobs == []


def test_a_hanging_receiver_times_out_and_the_retry_delivers(
    hooks: Any, receiver: Receiver, hook_worker: Callable[..., Any]
) -> None:
    """Given a receiver that hangs on the first request (timeout 1 s), when an event is
    published, then attempt 1 ends in a timeout recorded on the delivery, and attempt 2 is
    delivered.
    """
    db, _ = hooks
    receiver.script("/hook", [hang(5.0)])
    endpoint(receiver.url())
    hook_worker()
    started = time.monotonic()
    publish("order.paid", {"order_id": 5}, event_id="evt-hang")
    wait_for(settled(db, "evt-hang", "delivered"), 30, "delivered")
    assert time.monotonic() - started < 5.0, "the hang was waited out instead of timed out"
    attempts = [r.headers[ATTEMPT_HEADER] for r in receiver.received(status=200)]
    assert attempts == ["2"]
    assert delivery(db, "evt-hang")["attempts"] == 2


def test_a_429_retry_after_is_honoured(
    hooks: Any, receiver: Receiver, hook_worker: Callable[..., Any]
) -> None:
    """Given a receiver answering 429 with Retry-After: 2 once, when an event is published,
    then the second attempt comes no sooner than 2 s after the first (the schedule says 0.4 s).
    """
    db, _ = hooks
    receiver.script("/hook", [Answer(429, headers={"Retry-After": "2"})])
    endpoint(receiver.url())
    hook_worker()
    publish("order.paid", {"order_id": 6}, event_id="evt-429")
    wait_for(settled(db, "evt-429", "delivered"), 30, "delivered")
    first, second = receiver.received()
    assert second.at - first.at >= 2.0 - 0.05


def test_a_redirect_is_not_followed(
    hooks: Any, receiver: Receiver, hook_worker: Callable[..., Any]
) -> None:
    """Given a receiver answering 302 to another local path, when an event is published, then
    the redirect target sees nothing and the delivery records the 3xx as a retryable failure.
    """
    db, _ = hooks
    receiver.always("/hook", Answer(302, headers={"Location": receiver.url("/internal")}))
    endpoint(receiver.url())
    hook_worker()
    publish("order.paid", {"order_id": 7}, event_id="evt-302")
    wait_for(lambda: delivery(db, "evt-302")["attempts"] >= 1, 20, "an attempt")
    row = delivery(db, "evt-302")
    assert row["last_status_code"] == 302
    assert "not followed" in row["last_error"]
    assert receiver.received("/internal") == []


def test_without_the_allow_list_loopback_is_refused_before_any_connection(
    hooks: Any, receiver: Receiver, hook_worker: Callable[..., Any]
) -> None:
    """Given a worker WITHOUT the allow-list, when an event is published to a 127.0.0.1
    endpoint, then the delivery is dead-lettered with reason ssrf_blocked and the receiver
    accepted no connection at all.
    """
    db, _ = hooks
    endpoint(receiver.url())
    hook_worker(JOBS_WEBHOOK_ALLOW_HOSTS="[]")
    publish("order.paid", {"order_id": 8}, event_id="evt-ssrf")
    wait_for(lambda: dead_letters(db), 20, "a dead letter")
    assert dead_letters(db)[0]["reason"] == "ssrf_blocked"
    assert receiver.accepts == 0
    assert delivery(db, "evt-ssrf")["status"] == "failed"


def test_publish_fans_out_to_subscribed_active_endpoints_once(
    hooks: Any, receiver: Receiver, hook_worker: Callable[..., Any]
) -> None:
    """Given endpoints subscribed to order.paid, to everything, to another type, and a
    disabled one, when order.paid is published twice with the same event id, then the two
    matching endpoints get exactly one request each, and queued messages hold no secret.
    """
    _db, redis_client = hooks
    _, s1 = endpoint(receiver.url("/a"), event_types=["order.paid"])
    _, s2 = endpoint(receiver.url("/b"))
    endpoint(receiver.url("/c"), event_types=["user.created"])
    off, _ = endpoint(receiver.url("/d"))
    store.set_active(resources.engine(), off.id, active=False, reason="test")
    first = publish("order.paid", {"order_id": 9}, event_id="evt-fan")
    queued = b"".join(redis_client.lrange("webhooks", 0, -1))
    assert len(first.jobs) == 2
    assert s1.encode() not in queued
    assert s2.encode() not in queued
    again = publish("order.paid", {"order_id": 9}, event_id="evt-fan")
    assert all(ref.deduplicated for ref in again.jobs)
    hook_worker()
    wait_for(lambda: len(receiver.received(status=200)) == 2, 20, "two deliveries")
    wait_for(
        lambda: store.delivery_counts(resources.engine()).get("delivered") == 2, 10, "recorded"
    )
    assert sorted(r.path for r in receiver.received()) == ["/a", "/b"]
    assert publish("order.paid", {"order_id": 9}, event_id="evt-fan").jobs == []


def test_publish_refuses_bad_input_naming_the_field(hooks: Any) -> None:
    """Given bad input, when published, then InvalidJob names the field: event type, event id,
    payload type, a payload value JSON cannot carry, an event id reused for another type.
    """
    from workers.errors import InvalidJob  # noqa: PLC0415

    cases: list[tuple[Callable[[], Any], str]] = [
        (lambda: publish("", {}), "event_type"),
        (lambda: publish("a b", {}), "event_type"),
        (lambda: publish("x", {}, event_id="has space"), "event_id"),
        (lambda: publish("x", [1, 2]), "payload"),  # type: ignore[arg-type]
        (lambda: publish("x", {"when": datetime.now(UTC)}), "payload"),
    ]
    for call, field in cases:
        with pytest.raises(InvalidJob) as caught:
            call()
        assert (caught.value.field or "").startswith(field), (field, caught.value)
    publish("x", {}, event_id="evt-reuse")
    with pytest.raises(InvalidJob) as caught:
        publish("y", {}, event_id="evt-reuse")
    assert caught.value.field == "event_id"


def test_a_dead_host_opens_its_breaker_parks_jobs_then_everything_is_delivered(
    hooks: Any, receiver: Receiver, hook_worker: Callable[..., Any]
) -> None:
    """Given a receiver down (503) and a breaker opening after 3 failures for 3 s, when 8
    events are published, then the breaker opens; while it is open the receiver gets no call
    and the jobs wait parked in the delayed store without spending attempts. After the
    receiver recovers every event is delivered, each webhook-id exactly once with a 2xx.
    """
    db, redis_client = hooks
    receiver.always("/hook", Answer(503))
    endpoint(receiver.url())
    hook_worker(
        JOBS_BREAKER_FAILURES="3",
        JOBS_BREAKER_MIN_CALLS="1000",
        JOBS_BREAKER_OPEN_SECONDS="3",
        JOBS_BREAKER_PROBES="1",
        JOBS_WEBHOOK_RETRY_SCHEDULE="[0.2, 0.2, 0.2, 0.2, 0.2]",
    )
    ids = [f"evt-down-{i}" for i in range(8)]
    for event_id in ids:
        publish("order.paid", {"n": event_id}, event_id=event_id)
    breakers = Breakers.from_settings(get_settings())

    def open_state() -> Any:
        state = breakers.state(f"127.0.0.1:{receiver.port}")
        return state if state is not None and state.state is State.OPEN else None

    opened = wait_for(open_state, 20, "the breaker to open")
    wait_for(lambda: redis_client.zcard(keys.delayed()) > 0, 5, "parked jobs")
    assert opened.opened_at is not None
    assert opened.half_open_at is not None
    window = (opened.opened_at.timestamp() + 0.5, opened.half_open_at.timestamp())
    # Count the attempts and let the receiver recover just before the breaker half-opens: a
    # probe sent at that moment must not meet a 503 the test has not switched off yet.
    wait_for(lambda: time.time() > window[1] - 0.5, 10, "the open period to near its end")
    attempts_while_open = sum(delivery(db, e)["attempts"] for e in ids)
    receiver.always("/hook", OK)
    wait_for(lambda: time.time() > window[1], 10, "the open period to pass")
    during = [r for r in receiver.received() if window[0] < r.at < window[1]]
    assert during == [], "calls reached a host whose breaker was open"

    wait_for(
        lambda: all(delivery(db, e)["status"] == "delivered" for e in ids), 60, "all delivered"
    )
    delivered_ids = [r.headers["webhook-id"] for r in receiver.received(status=200)]
    assert sorted(delivered_ids) == sorted(ids), "each webhook-id delivered exactly once"
    assert dead_letters(db) == []
    # Parking spent nothing: at most one more attempt per event than before recovery.
    assert sum(delivery(db, e)["attempts"] for e in ids) <= attempts_while_open + len(ids)


def test_dead_lettered_deliveries_replay_once_each_keeping_their_webhook_id(
    hooks: Any, receiver: Receiver, hook_worker: Callable[..., Any]
) -> None:
    """Given a receiver down long enough for 4 deliveries to exhaust their 2 attempts (dead
    letters, reason exhausted), when it recovers and ``jobctl dlq replay`` runs twice, then
    each event is delivered exactly once, with its original webhook-id.
    """
    from typer.testing import CliRunner  # noqa: PLC0415

    from ops.cli import app  # noqa: PLC0415

    db, _ = hooks
    receiver.always("/hook", Answer(503))
    endpoint(receiver.url())
    hook_worker(JOBS_WEBHOOK_RETRY_SCHEDULE="[0.2]", JOBS_BREAKER_FAILURES="1000")
    ids = [f"evt-dl-{i}" for i in range(4)]
    for event_id in ids:
        publish("order.paid", {"n": event_id}, event_id=event_id)
    wait_for(lambda: len(dead_letters(db)) == 4, 30, "four dead letters")
    assert {letter["reason"] for letter in dead_letters(db)} == {"exhausted"}
    assert all(delivery(db, e)["status"] == "failed" for e in ids)

    receiver.always("/hook", OK)
    for _ in range(2):
        result = CliRunner().invoke(app, ["dlq", "replay", "--task", "webhooks.deliver"])
        assert result.exit_code == 0, result.output
    wait_for(
        lambda: all(delivery(db, e)["status"] == "delivered" for e in ids), 30, "all delivered"
    )
    delivered = sorted(r.headers["webhook-id"] for r in receiver.received(status=200))
    assert delivered == sorted(ids)


def _hours(n: float) -> Any:
    from datetime import timedelta  # noqa: PLC0415

    return timedelta(hours=n)
