"""Declaring jobs and settings: mistakes are caught early with a message naming them."""

from __future__ import annotations

import pytest

from workers.errors import ConfigurationError
from workers.settings import load_settings
from workers.task import job


def test_an_unknown_job_option_is_refused_at_declaration() -> None:
    """@job rejects options no policy declares, naming them (Celery would copy them silently)."""
    with pytest.raises(ConfigurationError, match=r"undefined: \['max_atempts'\]"):
        job(name="x.y", max_atempts=3)


def test_invalid_settings_fail_with_a_message_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bad JOBS_* value raises ConfigurationError naming the variable, not a traceback dump."""
    monkeypatch.setenv("JOBS_MAX_ATTEMPTS", "zero")
    monkeypatch.setenv("JOBS_FAILPOINT", "nowhere")
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    message = str(caught.value)
    assert "JOBS_MAX_ATTEMPTS" in message
    assert "JOBS_FAILPOINT" in message
    assert "unknown failpoint 'nowhere'" in message


def test_broker_url_defaults_to_redis_and_amqp_urls_are_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without JOBS_BROKER_URL the broker is the Redis URL; a RabbitMQ URL switches transports."""
    monkeypatch.delenv("JOBS_BROKER_URL", raising=False)
    assert load_settings().broker_is_redis
    monkeypatch.setenv("JOBS_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    settings = load_settings()
    assert settings.effective_broker_url.startswith("amqp://")
    assert not settings.broker_is_redis


def test_broker_reconnect_waits_get_random_jitter_up_to_the_interval() -> None:
    """Each reconnect wait gets uniform(0, interval) more, so workers don't reconnect in step."""
    import random  # noqa: PLC0415

    from workers.consumer import jittered  # noqa: PLC0415

    slept: list[float] = []
    seen: list[float] = []
    errback = jittered(
        lambda _exc, interval: seen.append(interval), rng=random.Random(3), sleep=slept.append
    )
    for interval in (2.0, 4.0, 6.0, 0.0):
        errback(ConnectionError("down"), interval)
    assert seen == [2.0, 4.0, 6.0, 0.0]
    assert len(slept) == 3  # no jitter for the immediate (0 s) failover attempt
    assert all(0 <= s <= i for s, i in zip(slept, (2.0, 4.0, 6.0), strict=True))
    assert len(set(slept)) == 3


def test_a_malformed_rate_is_refused_at_declaration_naming_the_option() -> None:
    """@job(rate="fast") fails when the module is imported, not on the first run."""
    with pytest.raises(ConfigurationError, match=r"'x\.rated'.*rate: 'fast' is not a rate"):
        job(name="x.rated", rate="fast")
    with pytest.raises(ConfigurationError, match="burst"):
        job(name="x.rated", rate="5/s", burst=0)


def test_a_redis_broker_other_than_the_redis_url_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Queues, the delayed store and claims share one Redis: a second Redis broker is an error."""
    monkeypatch.setenv("JOBS_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("JOBS_BROKER_URL", "redis://127.0.0.1:6379/1")
    with pytest.raises(ConfigurationError, match="JOBS_REDIS_URL itself"):
        load_settings()


def test_apply_async_refuses_options_it_would_otherwise_ignore() -> None:
    """task.apply_async(link=...) raises InvalidJob naming the option instead of dropping it."""
    from tests import tasks  # noqa: PLC0415
    from workers.errors import InvalidJob  # noqa: PLC0415

    with pytest.raises(InvalidJob, match=r"\['expires', 'link'\]") as caught:
        tasks.record.apply_async(kwargs={"name": "x"}, link="callback", expires=30)
    assert caught.value.field == "expires"


def test_a_dead_letter_traceback_has_url_passwords_redacted() -> None:
    """The traceback column repeats str(exc): it is redacted like the message."""
    from workers.deadletters import from_exception  # noqa: PLC0415

    try:
        raise ConnectionError("cannot reach postgresql://app:hunter2@db/prod")  # noqa: TRY301
    except ConnectionError as exc:
        record = from_exception(exc, job_id="j", task_name="t", queue="q", reason="exhausted")
    assert "hunter2" not in (record.traceback or "")
    assert "hunter2" not in (record.exc_message or "")
