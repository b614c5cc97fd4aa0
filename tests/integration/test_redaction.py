"""Secrets never leak: a webhook secret and a URL password, followed everywhere they could go.

One scenario with real processes: Flower (``jobctl flower``), one worker consuming ``default``
and ``webhooks`` with events on, and a webhook receiver that rejects (400) with a body echoing
both secrets. Then the sentinels are looked for in the worker's and Flower's logs, in every
Redis key of the test DB (queued messages, in-flight hashes, the delayed store: raw bytes and
decoded message bodies), in every database table except ``webhook_endpoints`` (where the
secret belongs) and in Flower's task API.

A secret a producer passes *as a task argument* necessarily travels in that message's body
while the job waits or runs (the task needs it); everything derived from it (argsrepr and
kwargsrepr, Flower, logs, dead letters) is redacted, and nothing of it stays in Redis after
the job. Webhooks pass references instead, so their secret never enters Redis at all.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any

import pytest
from psycopg import sql

from jobs.webhooks import publish, store
from tests import tasks
from tests.integration.test_flower import (
    EventsWorker,
    FlowerProcess,
    events_workers,
    running_flower,
    task_seen,
)
from tests.support.receiver import Answer, Receiver
from tests.support.worker import wait_for
from workers import keys, resources

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from pathlib import Path

    import psycopg
    import redis

#: The HMAC key inside the sentinel secret (what a careless log of the decoded key would show).
WEBHOOK_KEY = b"SENTINEL-WEBHOOK-KEY-0123456789abcdef"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(WEBHOOK_KEY).decode()
URL_PASSWORD = "SENTINELPW"  # noqa: S105 - a sentinel
SECRET_URL = f"redis://app:{URL_PASSWORD}@cache.internal:6379/0"
#: Every spelling of the secrets that must not appear.
NEEDLES = (
    WEBHOOK_SECRET,
    WEBHOOK_SECRET.removeprefix("whsec_"),
    WEBHOOK_KEY.decode(),
    URL_PASSWORD,
)
WORKER_ENV = {
    "JOBS_WEBHOOK_ALLOW_HOSTS": json.dumps(["127.0.0.1"]),
    "JOBS_WEBHOOK_RETRY_SCHEDULE": json.dumps([0.5]),
    "JOBS_WEBHOOK_TIMEOUT": "5",
}
#: The receiver holds its answer this long: the delivery is in flight while Redis is scanned.
ANSWER_DELAY = 1.5


def found(text: str) -> list[str]:
    """The sentinels present in ``text``."""
    return [needle for needle in NEEDLES if needle in text]


def message_bodies(value: Any) -> Iterator[str]:
    """Decoded bodies of kombu envelopes anywhere inside a parsed JSON value."""
    if isinstance(value, dict):
        body = value.get("body")
        if isinstance(body, str) and "properties" in value:
            try:
                yield base64.b64decode(body).decode(errors="replace")
            except binascii.Error:
                yield body
        for item in value.values():
            yield from message_bodies(item)
    elif isinstance(value, list):
        for item in value:
            yield from message_bodies(item)


def readable(raw: bytes) -> Iterator[tuple[str, str]]:
    """``("raw", text)`` and ``("body", decoded body)`` for each message held in ``raw``."""
    text = raw.decode("latin-1")
    yield "raw", text
    for candidate in (text, text.partition("\n")[2]):  # delayed members: "<list>\n<message>"
        try:
            parsed = json.loads(candidate)
        except ValueError:
            continue
        for body in message_bodies(parsed):
            yield "body", body
        return


def redis_values(client: redis.Redis, key: bytes) -> list[bytes]:
    """Every value held by ``key`` (members, fields, elements) plus its DUMP serialization."""
    kind = client.type(key).decode()
    values: list[bytes] = []
    if kind == "string":
        values = [client.get(key) or b""]
    elif kind == "list":
        values = list(client.lrange(key, 0, -1))
    elif kind == "hash":
        values = [part for pair in client.hgetall(key).items() for part in pair]
    elif kind == "set":
        values = list(client.smembers(key))
    elif kind == "zset":
        values = [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
    elif kind == "stream":
        values = [json.dumps(client.xrange(key), default=repr).encode()]
    return [key, *values, client.dump(key) or b""]


def redis_hits(client: redis.Redis) -> dict[str, set[str]]:
    """Where sentinels are in the test Redis DB: ``{"<key> raw|body": {sentinel...}}``."""
    hits: dict[str, set[str]] = {}
    for key in client.scan_iter(count=1000):
        for value in redis_values(client, key):
            for where, text in readable(value):
                if needles := found(text):
                    hits.setdefault(f"{key.decode()} {where}", set()).update(needles)
    return hits


def database_hits(db: psycopg.Connection[Any]) -> dict[str, list[str]]:
    """Tables (every schema but the system's; not ``webhook_endpoints``) holding a sentinel."""
    tables = db.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition "
        "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg_toast%%' AND c.relname <> 'webhook_endpoints'"
    ).fetchall()
    hits: dict[str, list[str]] = {}
    for schema, table in tables:
        query = sql.SQL("SELECT count(*) FROM {} t WHERE t::text LIKE %s").format(
            sql.Identifier(schema, table)
        )
        for needle in NEEDLES:
            for spelling in (needle, needle.encode().hex()):  # bytea renders as hex
                row = db.execute(query, (f"%{spelling}%",)).fetchone()
                if row and row[0]:
                    hits.setdefault(f"{schema}.{table}", []).append(needle)
    return hits


def dead_letters(db: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Every dead letter as a dict (all columns)."""
    cursor = db.execute("SELECT * FROM dead_letters ORDER BY id")
    names = [column.name for column in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def lines_about(log: str, job_id: str) -> Iterable[str]:
    """Log lines mentioning ``job_id``."""
    return [line for line in log.splitlines() if job_id in line]


@pytest.fixture
def flower(worker_env: dict[str, str], tmp_path: Path) -> Iterator[FlowerProcess]:
    """A running Flower with basic auth (as in test_flower)."""
    with running_flower(worker_env, tmp_path / "flower.log") as process:
        yield process


@pytest.fixture
def events_worker(
    worker_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., EventsWorker]]:
    """Factory of ``-E`` workers (as in test_flower)."""
    with events_workers(worker_env, tmp_path) as start:
        yield start


def test_a_webhook_secret_and_a_url_password_appear_in_no_log_redis_key_row_or_flower_api(
    clean: tuple[psycopg.Connection[Any], redis.Redis],
    flower: FlowerProcess,
    events_worker: Callable[..., EventsWorker],
) -> None:
    """Given an endpoint whose signing secret is a sentinel, a receiver that answers 400 echoing
    that secret and a URL password, and a job whose argument is a URL with a password:
    when the event is published, the job enqueued and both end dead-lettered, then neither
    sentinel is in the worker's or Flower's log, in Redis (before, during and after the
    deliveries; the URL password only inside its own job's body while that job waits), in any
    table but webhook_endpoints, or in Flower's task API, while the redacted forms are there.
    """
    db, redis_client = clean
    db.execute("TRUNCATE webhook_deliveries, webhook_messages, webhook_endpoints RESTART IDENTITY")
    with Receiver() as receiver:
        echo = f"bad signature, expected {WEBHOOK_SECRET}; callback {SECRET_URL}".encode()
        receiver.always("/hook", Answer(status=400, body=echo, delay=ANSWER_DELAY))
        store.add_endpoint(resources.engine(), url=receiver.url("/hook"), secret=WEBHOOK_SECRET)
        publish("order.paid", {"order_id": 42}, event_id="evt-redaction")
        job = tasks.fail_permanently.apply_async(kwargs={"name": SECRET_URL})

        # Queued: the password is only in its own job's body; the webhook secret nowhere.
        assert redis_hits(redis_client) == {"default body": {URL_PASSWORD}}

        worker = events_worker(
            queues="default,webhooks", pool="threads", concurrency=4, name="redaction",
            extra_env=WORKER_ENV,
        )  # fmt: skip
        # In flight: the receiver holds its answer while the message sits in an in-flight hash.
        wait_for(lambda: receiver.accepts > 0, 30, "the delivery attempt")
        in_flight = redis_hits(redis_client)
        held = [
            value
            for key in redis_client.scan_iter(match=keys.inflight("*"))
            for value in redis_client.hvals(key)
        ]
        assert any(b"webhooks.deliver" in value for value in held), "not sampled in flight"
        assert not [where for where, needles in in_flight.items() if WEBHOOK_SECRET in needles]
        assert all(where.endswith(" body") for where in in_flight), in_flight

        wait_for(lambda: len(dead_letters(db)) == 2, 30, "two dead letters")

    # After: nothing in Redis, the database (but the endpoint's own row) or the logs.
    wait_for(lambda: not redis_hits(redis_client), 10, "Redis free of sentinels")
    assert database_hits(db) == {}
    entries = {entry["task_name"]: entry for entry in dead_letters(db)}
    assert entries["tests.fail_permanently"]["kwargs"] == {
        "name": "redis://app:***@cache.internal:6379/0"
    }
    assert "redis://app:***@" in entries["tests.fail_permanently"]["exc_message"]
    assert entries["webhooks.deliver"]["reason"] == "receiver_rejected"

    worker_log = worker.log_path.read_text(errors="replace")
    assert found(worker_log) == []
    assert found(flower.log()) == []
    # Every line about the job names it (Celery's own lines too); ours carry attempt and key.
    about_job = lines_about(worker_log, job.id)
    assert any("received" in line for line in about_job), worker_log[-3000:]
    assert all(f"task_id={job.id}" in line for line in about_job), about_job
    assert any(
        "job_failed" in line and "attempt=1" in line and "key=" in line for line in about_job
    )

    shown = wait_for(task_seen(flower, job.id), 30, "the job in Flower", interval=0.3)
    assert "redis://app:***@cache.internal:6379/0" in shown["kwargs"]
    everything = json.dumps(flower.tasks())
    assert "webhooks.deliver" in everything
    assert found(everything) == []
