"""Logs: one redaction processor, job context on every line, JSON in production."""

from __future__ import annotations

import io
import json
import logging
from typing import TYPE_CHECKING, Any

import pytest
import structlog
from structlog.testing import capture_logs

import workers.task
from tests import tasks
from workers import logs
from workers.job import HEADER
from workers.redaction import is_redacted, redact_text
from workers.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Iterator

#: A Standard Webhooks secret and a password: neither may survive in any log line.
WEBHOOK_SECRET = "whsec_U0VOVElORUwtV0VCSE9PSy1TRUNSRVQtMDEyMzQ1Njc4OQ=="  # noqa: S105 - a sentinel
PASSWORD = "SENTINELPW"  # noqa: S105 - a sentinel


@pytest.fixture
def json_lines() -> Iterator[tuple[Any, logging.Logger, io.StringIO]]:
    """A structlog logger and a stdlib logger rendered by the production formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter(Settings(env="production")))
    stdlib = logging.getLogger(f"tests.logs.{id(stream)}")
    stdlib.addHandler(handler)
    stdlib.propagate = False
    stdlib.setLevel(logging.INFO)
    ours = structlog.wrap_logger(
        stdlib,
        processors=[
            *logs.shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    yield ours, stdlib, stream
    stdlib.removeHandler(handler)


def rendered(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every line written so far, parsed (each must be one JSON object)."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_secret_named_fields_are_masked_at_any_depth() -> None:
    """Given fields named like secrets (top level, nested dicts, lists of dicts), when logged,
    then their values are ``***`` and the other fields are untouched.
    """
    with capture_logs(processors=[logs.redact_event]) as captured:
        structlog.get_logger("t").info(
            "endpoint_added",
            password="hunter2",  # noqa: S106 - a sentinel
            endpoint={"id": 7, "secrets": [{"secret": WEBHOOK_SECRET}]},
            headers=[{"Authorization": "Basic YWRtaW46cHc="}, {"X-Api-Key": "k-123"}],
            endpoint_id=7,
        )
    [line] = captured
    assert line["password"] == "***"  # noqa: S105 - the mask
    assert line["endpoint"] == {"id": 7, "secrets": "***"}
    assert line["headers"] == [{"Authorization": "***"}, {"X-Api-Key": "***"}]
    assert line["endpoint_id"] == 7
    assert WEBHOOK_SECRET not in repr(line)


def test_secrets_inside_text_are_masked_wherever_they_appear() -> None:
    """Given a webhook secret, a URL password, an Authorization header and a Bearer token in
    the message and in other text fields, when logged, then none survives and the rest of the
    text (scheme, user, host) stays readable.
    """
    with capture_logs(processors=[logs.redact_event]) as captured:
        structlog.get_logger("t").warning(
            f"receiver echoed {WEBHOOK_SECRET} from redis://app:{PASSWORD}@db:6379/0",
            detail=f"sent Authorization: Bearer abc.{PASSWORD} and password={PASSWORD}",
            response={"body": f"bearer {PASSWORD}x", "nested": [f"https://u:{PASSWORD}@h/"]},
        )
    [line] = captured
    text = repr(line)
    assert PASSWORD not in text
    assert "whsec_" not in text.replace("whsec_***", "")
    assert line["event"] == "receiver echoed whsec_*** from redis://app:***@db:6379/0"
    assert line["detail"] == "sent Authorization: Bearer *** and password=***"


def test_text_redaction_leaves_ordinary_text_alone() -> None:
    """Redis keys, comparisons and prose that merely mention a secret-looking word are kept."""
    for text in ("jobs:token:bucket", "if password == expected", "token bucket empty", "n=1"):
        assert redact_text(text) == text
    assert is_redacted(redact_text("postgresql://u:pw@h/db"))
    assert not is_redacted({"url": "postgresql://u@h/db"})


def test_every_line_of_a_job_carries_task_id_task_attempt_and_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given a job delivered with our header (attempt 3, key k-1), when its body logs, then the
    line carries task_id, task, attempt and key (bound by JobTask); after the job ends a line
    carries none of them.
    """

    def body(*_: Any) -> None:
        structlog.get_logger("jobs.test").info("inside_the_job")

    monkeypatch.setattr(workers.task, "run_job", body)
    task = tasks.noop
    task.push_request(
        id="job-1",
        called_directly=False,
        delivery_info={"routing_key": "default"},
        **{HEADER: {"key": "k-1", "attempt": 3}},
    )
    try:
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as captured:
            task(n=1)
            structlog.get_logger("jobs.test").info("after_the_job")
    finally:
        task.pop_request()
    inside, after = captured
    assert {k: inside[k] for k in ("task_id", "task", "attempt", "key")} == {
        "task_id": "job-1",
        "task": "tests.noop",
        "attempt": 3,
        "key": "k-1",
    }
    assert not {"task_id", "task", "attempt", "key"} & set(after)


def test_production_renders_one_json_object_per_line_for_our_lines_and_library_lines(
    json_lines: tuple[Any, logging.Logger, io.StringIO],
) -> None:
    """Given the production formatter, when our logger and a stdlib logger (Celery, httpx...)
    log inside a job's bound context, then each line is one JSON object with level, logger,
    UTC timestamp, the job's context, and secrets redacted in both.
    """
    ours, stdlib, stream = json_lines
    structlog.contextvars.bind_contextvars(task_id="t-1", task="tests.noop", attempt=1, key="k")
    try:
        ours.info("job_started", url=f"redis://u:{PASSWORD}@h/0")
        stdlib.warning("connecting to %s", f"postgresql://app:{PASSWORD}@db/prod")
    finally:
        structlog.contextvars.clear_contextvars()
    first, second = rendered(stream)
    assert first["event"] == "job_started"
    assert first["url"] == "redis://u:***@h/0"
    assert second["event"] == "connecting to postgresql://app:***@db/prod"
    for line in (first, second):
        assert line["task_id"] == "t-1"
        assert line["key"] == "k"
        assert line["timestamp"].endswith("Z")
        assert {"level", "logger"} <= set(line)
    assert PASSWORD not in stream.getvalue()


def test_celerys_own_task_lines_carry_the_task_id_and_name(
    json_lines: tuple[Any, logging.Logger, io.StringIO],
) -> None:
    """Given a record like Celery's "Task x[id] succeeded" (logged outside the job's context,
    with ``data`` attached), when rendered, then it carries task_id and task.
    """
    _, stdlib, stream = json_lines
    data = {"id": "t-9", "name": "tests.noop", "runtime": 0.01, "return_value": "None"}
    stdlib.info("Task %(name)s[%(id)s] succeeded", data, extra={"data": data})
    [line] = rendered(stream)
    assert line["event"] == "Task tests.noop[t-9] succeeded"
    assert (line["task_id"], line["task"]) == ("t-9", "tests.noop")


def test_exceptions_are_rendered_and_redacted(
    json_lines: tuple[Any, logging.Logger, io.StringIO],
) -> None:
    """A logged exception keeps its traceback text, without the secret in its message."""
    ours, _, stream = json_lines
    try:
        raise ConnectionError(f"cannot reach redis://:{PASSWORD}@cache:6379")  # noqa: TRY301
    except ConnectionError:
        ours.exception("cache_unreachable")
    [line] = rendered(stream)
    assert "ConnectionError" in line["exception"]
    assert PASSWORD not in stream.getvalue()


def test_configure_installs_one_handler_however_often_it_runs() -> None:
    """Every Celery program and our app call configure(); the root logger keeps one handler."""
    settings = Settings()
    logs.configure(settings)
    logs.configure(settings, level="WARNING")
    root = logging.getLogger()
    try:
        assert sum(getattr(h, "_jobs_handler", False) for h in root.handlers) == 1
        assert root.level == logging.WARNING
    finally:
        logs.configure(settings)
