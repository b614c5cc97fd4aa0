"""Bad input: malformed messages on a queue and bad ``enqueue`` arguments.

Every malformed message is dead-lettered with a machine-readable reason and its raw bytes (or,
for the one kind that is a valid if old message, runs once); every bad ``enqueue`` call raises
``InvalidJob`` naming the field. The worker that consumed the poison is the same process at
the end and still runs a good job.

``tests/integration/test_poison.py`` covers garbage bytes, a pickle payload, an unknown task,
arguments that do not bind and a JSON-typed body that is not JSON; the kinds here are the
others, so together they make the issue's table.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jobs
from ops.workerproc import READY_MARKER
from tests import tasks
from tests.integration.test_execution import effects
from tests.support.worker import wait_for
from workers import publisher
from workers.errors import InvalidJob
from workers.job import Job

#: Size of the huge (and cut-off) message: larger than any sane job message.
HUGE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Poison:
    """One malformed queue entry: the bytes pushed, the body the worker sees, the outcome."""

    kind: str
    raw: bytes
    body: bytes
    #: The dead letter's reason; ``None``: the message is valid after all and runs once.
    reason: str | None


def envelope(kind: str, **kwargs: Any) -> dict[str, Any]:
    """A well-formed envelope of ``tests.record`` (job id = ``kind``) to spoil."""
    job = Job(
        id=kind,
        task="tests.record",
        key=f"bad-input:{kind}",
        queue="default",
        args=(),
        kwargs=kwargs or {"name": kind},
    )
    return publisher.envelope(job)


def with_body(message: dict[str, Any], body: bytes) -> dict[str, Any]:
    """``message`` carrying ``body`` (base64-encoded as kombu expects)."""
    return {**message, "body": base64.b64encode(body).decode()}


def spoiled(kind: str, change: Callable[[dict[str, Any]], None], reason: str | None) -> Poison:
    """An envelope changed in place by ``change``; the body is whatever it then carries."""
    message = envelope(kind)
    change(message)
    body = message.get("body", "")
    try:
        decoded = base64.b64decode(body, validate=True) if isinstance(body, str) else b""
    except ValueError:
        decoded = body.encode() if isinstance(body, str) else b""
    return Poison(kind, json.dumps(message).encode(), decoded, reason)


def enveloped(kind: str, body: bytes, reason: str | None, **changes: Any) -> Poison:
    """A well-formed envelope around ``body``, with top-level ``changes``."""
    message = {**with_body(envelope(kind), body), **changes}
    return Poison(kind, json.dumps(message).encode(), body, reason)


def garbage(kind: str, raw: bytes) -> Poison:
    """Bytes that are no kombu envelope at all: dead-lettered as ``decode_error``, kept whole."""
    return Poison(kind, raw, raw, "decode_error")


def no_envelope_after_all(kind: str, change: Callable[[dict[str, Any]], None]) -> Poison:
    """An envelope spoiled so kombu could not read it: dead-lettered whole as ``decode_error``."""
    message = envelope(kind)
    change(message)
    raw = json.dumps(message).encode()
    return Poison(kind, raw, raw, "decode_error")


def delivery_info_not_a_dict(message: dict[str, Any]) -> None:
    """Properties whose delivery_info is a string."""
    message["properties"]["delivery_info"] = "default"


def headers(**changes: Any) -> Callable[[dict[str, Any]], None]:
    """A change that sets message headers."""

    def change(message: dict[str, Any]) -> None:
        message["headers"].update(changes)

    return change


def drop_headers(message: dict[str, Any]) -> None:
    """Remove every header (a foreign producer's message)."""
    message["headers"] = {}


def poison_table() -> list[Poison]:
    """The malformed kinds the worker handles (each body unique: found by id or bytes)."""
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    huge = json.dumps(with_body(envelope("huge"), b"[" + b"1," * (HUGE_BYTES // 2)))
    proto1 = {"task": "tests.record", "id": "proto1", "args": [], "kwargs": {"name": "proto1"}}
    yaml = b"!!python/object/apply:os.system ['true']"
    return [
        garbage("json_not_a_dict", b'["json", "but", "a list"]'),
        garbage("json_dict_not_an_envelope", b'{"kind": "a dict without properties"}'),
        garbage("empty_bytes", b""),
        garbage("huge_and_cut_off", huge.encode()[: HUGE_BYTES + 1000]),
        spoiled("missing_headers", drop_headers, "invalid_message"),
        enveloped("text_plain", b"name=x", "content_disallowed", **{"content-type": "text/plain"}),
        enveloped(
            "yaml_content", yaml, "content_disallowed", **{"content-type": "application/x-yaml"}
        ),
        enveloped("invalid_utf8", b"\xff\xfe[[], {}, {}]", "decode_error"),
        enveloped("args_not_a_list", json.dumps([{"a": 1}, {}, embed]).encode(), "invalid_args"),
        enveloped(
            "body_not_a_triple", json.dumps({"args": [], "kwargs": {}}).encode(), "invalid_args"
        ),
        spoiled("eta_not_a_date", headers(eta="next tuesday"), "invalid_message"),
        spoiled("task_not_a_string", headers(task=12345), "unknown_task"),
        enveloped("protocol_1_body", json.dumps(proto1).encode(), None, headers={}),
        no_envelope_after_all("headers_not_a_dict", lambda m: m.update(headers="not a dict")),
        no_envelope_after_all("delivery_info_not_a_dict", delivery_info_not_a_dict),
        no_envelope_after_all("body_not_base64", lambda m: m.update(body="abc")),
        spoiled("jobs_header_garbage", headers(jobs={"attempt": "many"}), "invalid_message"),
        spoiled("jobs_header_not_a_dict", headers(jobs=["key", 1]), "invalid_message"),
        enveloped("kwargs_not_a_dict", json.dumps([[], ["name"], embed]).encode(), "invalid_args"),
    ]


def dead_letter_reasons(db: Any, table: list[Poison]) -> dict[str, str]:
    """Each kind's dead-letter reason ("(none)" if it has none yet).

    Found by job id (an envelope's id is its kind) or else by the raw bytes kept with it.
    """
    rows = db.execute("SELECT job_id, reason, raw_message FROM dead_letters").fetchall()
    by_id = {job_id: reason for job_id, reason, _ in rows}
    by_body = {base64.b64decode(raw): reason for _, reason, raw in rows if raw is not None}
    return {
        entry.kind: by_id.get(entry.kind) or by_body.get(entry.body) or "(none)" for entry in table
    }


def test_every_kind_of_malformed_message_is_dead_lettered_with_its_reason(
    clean: Any, workers: Any
) -> None:
    """Given 19 kinds of malformed entries pushed raw into the default queue (not JSON, JSON
    but no envelope, empty, huge and cut off, no headers, text/plain and YAML content, invalid
    UTF-8, args not a list, kwargs not an object, a body that is no triple, an eta that is no
    date, a task name that is no string, headers or delivery_info of the wrong type, a body
    that is no base64, a jobs header that does not parse or is no object, a protocol-1 body),
    when one worker consumes them, then each is dead-lettered with its reason (the protocol-1
    message, valid but old, runs once instead), the worker's main process is the one that
    started, it never restarted its consumer, and a good job after them runs.
    """
    db, redis_client = clean
    table = poison_table()
    redis_client.lpush("default", *[entry.raw for entry in reversed(table)])
    worker = workers(concurrency=1)
    pid = worker.pid
    started = time.monotonic()
    expected_letters = [entry for entry in table if entry.reason is not None]
    wanted = {entry.kind: entry.reason or "(none)" for entry in table}
    try:
        wait_for(lambda: dead_letter_reasons(db, table) == wanted, 30, "a dead letter per kind")
    except AssertionError:
        outcomes = dead_letter_reasons(db, table)
        assert outcomes == wanted, (json.dumps(outcomes, indent=1), worker.log())
    wait_for(lambda: effects(db, "proto1"), 20, "the protocol-1 message to run")

    jobs.enqueue(tasks.record, name="after-bad-input")
    wait_for(lambda: effects(db, "after-bad-input"), 20, "a good job after the poison")
    seconds = time.monotonic() - started
    assert worker.alive()
    assert worker.pid == pid
    log = worker.log_path.read_bytes()
    assert log.count(READY_MARKER) == 1, worker.log()
    assert b"Unrecoverable error" not in log
    assert redis_client.llen("default") == 0
    reasons = sorted({entry.reason for entry in expected_letters if entry.reason})
    print(
        f"FIGURE bad_messages: {len(table)} malformed kinds -> {len(expected_letters)} dead "
        f"letters ({', '.join(reasons)}), 1 valid protocol-1 message ran; worker pid {pid} "
        f"never restarted; all handled {seconds:.1f}s after it started"
    )


# -- bad enqueue arguments ------------------------------------------------------------------


def plain_function(*, name: str) -> None:
    """Not a job: no @job declaration."""


NAIVE = datetime(2030, 1, 1, 12, 0)  # noqa: DTZ001 - the point of the case
#: (kind, the call, the field InvalidJob must name).
BAD_CALLS: list[tuple[str, Callable[[], Any], str]] = [
    ("datetime value", lambda: jobs.enqueue(tasks.record, name=NAIVE), "argument 'name'"),
    ("NaN", lambda: jobs.enqueue(tasks.record, name="x", sleep=float("nan")), "argument 'sleep'"),
    ("inf", lambda: jobs.enqueue(tasks.record, name="x", sleep=float("inf")), "argument 'sleep'"),
    ("bytes", lambda: jobs.enqueue(tasks.record, name=b"x"), "argument 'name'"),
    ("set", lambda: jobs.enqueue(tasks.record, name={"x"}), "argument 'name'"),
    ("object", lambda: jobs.enqueue(tasks.record, name=object()), "argument 'name'"),
    (
        "non-string dict key",
        lambda: jobs.enqueue(tasks.record, name={"nested": {1: "x"}}),
        "argument 'name'['nested']",
    ),
    ("unknown kwarg", lambda: jobs.enqueue(tasks.record, name="x", nope=1), "args"),
    ("missing required kwarg", lambda: jobs.enqueue(tasks.record), "args"),
    ("positional to keyword-only", lambda: jobs.enqueue(tasks.record, "x"), "args"),
    ("unknown queue", lambda: jobs.enqueue(tasks.record, name="x", queue="nope"), "queue"),
    ("priority 10", lambda: jobs.enqueue(tasks.record, name="x", priority=10), "priority"),
    ("priority -1", lambda: jobs.enqueue(tasks.record, name="x", priority=-1), "priority"),
    ("priority str", lambda: jobs.enqueue(tasks.record, name="x", priority="high"), "priority"),  # type: ignore[arg-type]
    ("empty key", lambda: jobs.enqueue(tasks.record, name="x", key=""), "key"),
    ("key too long", lambda: jobs.enqueue(tasks.record, name="x", key="k" * 513), "key"),
    ("key not a string", lambda: jobs.enqueue(tasks.record, name="x", key=5), "key"),  # type: ignore[arg-type]
    ("countdown < 0", lambda: jobs.enqueue(tasks.record, name="x", countdown=-1), "countdown"),
    ("naive eta", lambda: jobs.enqueue(tasks.record, name="x", eta=NAIVE), "eta"),
    (
        "countdown and eta",
        lambda: jobs.enqueue(tasks.record, name="x", countdown=1, eta=datetime.now(UTC)),
        "countdown",
    ),
    ("bad on_full", lambda: jobs.enqueue(tasks.record, name="x", on_full="drop"), "on_full"),  # type: ignore[arg-type]
    (
        "wait_max without waiting",
        lambda: jobs.enqueue(tasks.record, name="x", wait_max=1.0),
        "wait_max",
    ),
    ("not a job", lambda: jobs.enqueue(plain_function, name="x"), "task"),  # type: ignore[arg-type]
    (
        "bad item in enqueue_many",
        lambda: jobs.enqueue_many(tasks.record, [{"name": "ok"}, {"name": b"bad"}]),
        "argument 'name'",
    ),
    (
        "apply_async with link",
        lambda: tasks.record.apply_async(kwargs={"name": "x"}, link="callback"),
        "link",
    ),
]


def test_every_kind_of_bad_enqueue_argument_raises_invalid_job_naming_the_field(
    redis_client: Any,
) -> None:
    """Given 25 bad calls (values JSON cannot carry: datetime, NaN, infinity, bytes, set, object, a
    non-string key; arguments that do not bind: unknown, missing, positional; bad queue,
    priority, key, countdown, eta, on_full, wait_max; a function that is not a job; a bad item
    in a batch; an option Celery would ignore), when each is made, then each raises InvalidJob
    whose ``field`` names the argument or option, its message says it, and nothing reaches
    the queue.
    """
    wrong: dict[str, str] = {}
    for kind, call, field in BAD_CALLS:
        try:
            call()
        except InvalidJob as exc:
            if exc.field != field or not str(exc):
                wrong[kind] = f"field {exc.field!r}: {exc}"
        else:
            wrong[kind] = "accepted"
    assert wrong == {}
    assert redis_client.dbsize() == 0 or all(
        not key.startswith(b"default") for key in redis_client.keys("*")
    )
    fields = sorted(
        {field.split("[")[0].split("'")[0].strip() or field for _, _, field in BAD_CALLS}
    )
    print(
        f"FIGURE bad_enqueue: {len(BAD_CALLS)} kinds of bad enqueue arguments -> "
        f"{len(BAD_CALLS)} InvalidJob naming the field ({len(fields)} distinct fields), "
        "0 published"
    )
