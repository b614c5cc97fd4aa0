"""Pure pieces of backpressure: retry_after estimates, jittered waits, drain EWMA, HTTP 503."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from jobs.http import queue_full_response
from workers.admission import JobRef, check_on_full
from workers.backpressure import (
    DEFAULT_RETRY_AFTER,
    MAX_RETRY_AFTER,
    MIN_RETRY_AFTER,
    QueueLimits,
    estimate_retry_after,
    ewma,
    limits_for,
    refusal,
    wait_pause,
)
from workers.errors import BatchQueueFull, InvalidJob, QueueFull
from workers.settings import load_settings

NOW = 1_800_000_000.0


def limits(high: int = 200, low: int = 50, max_age: float | None = None) -> QueueLimits:
    return QueueLimits("default", high, low, max_age, "full", "stats", ("default",))


def test_retry_after_is_the_backlog_over_the_measured_drain_rate() -> None:
    """Given a fresh drain rate of 50 jobs/s, 150 jobs above the low watermark take 3 s."""
    assert estimate_retry_after(150, 50.0, NOW - 1, NOW) == pytest.approx(3.0)


def test_retry_after_is_clamped_between_one_second_and_five_minutes() -> None:
    """A fast drain still says at least 1 s; a crawl or a stalled queue at most 300 s."""
    assert estimate_retry_after(10, 1000.0, NOW, NOW) == MIN_RETRY_AFTER
    assert estimate_retry_after(10_000, 0.5, NOW, NOW) == MAX_RETRY_AFTER
    assert estimate_retry_after(10, 0.0, NOW, NOW) == MAX_RETRY_AFTER


def test_retry_after_falls_back_to_the_default_when_no_fresh_rate_is_known() -> None:
    """Never measured, or sampled long ago (no worker measuring): the default."""
    assert estimate_retry_after(150, None, None, NOW) == DEFAULT_RETRY_AFTER
    assert estimate_retry_after(150, 50.0, NOW - 3600, NOW) == DEFAULT_RETRY_AFTER


def test_a_full_refusal_becomes_queue_full_with_the_backlog_above_the_low_watermark() -> None:
    """Given admit.lua's reply for a full queue, QueueFull names queue, depth, limit and a
    retry_after of (depth - low) / rate.
    """
    exc = refusal(limits(), [b"full", 200, b"30", repr(NOW - 1).encode(), None], NOW)
    assert (exc.queue, exc.depth, exc.limit) == ("default", 200, 200)
    assert exc.retry_after == pytest.approx(150 / 30)
    assert "queue 'default' is full: 200 waiting (high watermark 200)" in str(exc)


def test_an_age_refusal_says_how_old_the_oldest_job_is() -> None:
    """Given a refusal for age, the whole depth is the backlog and a note names the age."""
    exc = refusal(limits(max_age=2.0), [b"age", 10, b"5", repr(NOW).encode(), b"3.5"], NOW)
    assert exc.retry_after == pytest.approx(2.0)
    assert any("3.5s (max age 2.0s)" in note for note in exc.__notes__)


def test_limits_follow_per_queue_knobs_and_the_low_watermark_ratio(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Per-queue watermarks win; otherwise the low watermark is the ratio of the high one;
    the four priority sub-queues are the depth's keys.
    """
    monkeypatch.setenv(
        "JOBS_QUEUES", json.dumps({"default": {"high_watermark": 200, "low_watermark": 50}})
    )
    monkeypatch.setenv("JOBS_HIGH_WATERMARK", "1000")
    settings = load_settings()
    default, webhooks = limits_for("default", settings), limits_for("webhooks", settings)
    assert (default.high, default.low, default.max_age) == (200, 50, None)
    assert (webhooks.high, webhooks.low) == (1000, 800)
    assert default.list_keys == (
        "default",
        "default\x06\x163",
        "default\x06\x166",
        "default\x06\x169",
    )
    assert (default.full_key, default.stats_key) == (
        "jobs:queue:default:full",
        "jobs:queue:default:stats",
    )
    assert limits_for("default", load_settings()) is not default  # new settings, new limits


def test_waiting_pauses_grow_with_jitter_and_never_pass_the_deadline() -> None:
    """Pauses lie in the upper half of an exponential ceiling capped at 1 s, and are cut to
    the time left.
    """
    rng = random.Random(3)
    first = [wait_pause(0, 10, rng) for _ in range(200)]
    late = [wait_pause(8, 10, rng) for _ in range(200)]
    assert all(0.025 <= p <= 0.05 for p in first)
    assert all(0.5 <= p <= 1.0 for p in late)
    assert max(late) - min(late) > 0.2
    assert wait_pause(8, 0.01, rng) == pytest.approx(0.01)
    assert wait_pause(8, -1, rng) == 0.0


def test_the_drain_rate_ewma_moves_towards_new_samples_by_elapsed_time() -> None:
    """The first sample is taken as is; after one time constant ~63 % of a change shows."""
    assert ewma(None, 40.0, 1.0, 5.0) == 40.0
    assert ewma(100.0, 0.0, 5.0, 5.0) == pytest.approx(100 * 0.3679, rel=1e-3)
    assert ewma(100.0, 200.0, 0.0, 5.0) == 100.0


def test_a_batch_refusal_carries_the_accepted_refs_and_refused_positions() -> None:
    """BatchQueueFull is a QueueFull whose message says how much of the batch got in."""
    inner = QueueFull("default", 200, 200, 4.0)
    inner.add_note("a note")
    accepted = [JobRef(id="a", key="k1", queue="default")]
    exc = BatchQueueFull(inner, accepted, [1, 2])
    assert isinstance(exc, QueueFull)
    assert (exc.accepted, exc.refused, exc.retry_after) == (accepted, [1, 2], 4.0)
    assert str(exc).endswith("1 of 3 jobs of the batch accepted")
    assert exc.__notes__ == ["a note"]


def test_on_full_options_are_validated_by_name() -> None:
    """An unknown on_full, or wait_max without waiting or not positive, names the option."""
    check_on_full("raise", None)
    check_on_full("wait", 0.5)
    cases: list[tuple[Any, Any, str]] = [
        ("drop", None, "on_full"),
        ("raise", 1.0, "wait_max"),
        ("wait", 0, "wait_max"),
    ]
    for on_full, wait_max, field in cases:
        with pytest.raises(InvalidJob) as caught:
            check_on_full(on_full, wait_max)
        assert caught.value.field == field


def test_queue_full_maps_to_503_with_retry_after_rounded_up_to_whole_seconds() -> None:
    """Given QueueFull(retry_after=2.2), the response is 503, Retry-After: 3, a JSON body
    without internals (queue name, depth).
    """
    status, headers, body = queue_full_response(QueueFull("default", 250, 200, 2.2))
    assert status == 503
    assert dict(headers)["Retry-After"] == "3"
    assert dict(headers)["Content-Type"] == "application/json"
    assert int(dict(headers)["Content-Length"]) == len(body)
    assert json.loads(body) == {"error": "queue_full", "retry_after": 3}
    assert b"default" not in body
    _, small, _ = queue_full_response(QueueFull("default", 1, 1, 0.2))
    assert dict(small)["Retry-After"] == "1"


def test_the_wsgi_example_in_the_docstring_turns_queue_full_into_a_503() -> None:
    """The documented WSGI middleware, run against an app that raises QueueFull."""
    namespace: dict[str, Any] = {}
    source = backpressure_doc_example()
    exec(compile(source, "jobs/http.py docstring", "exec"), namespace)  # noqa: S102 - our doc

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise QueueFull("default", 250, 200, 7.5)

    seen: list[Any] = []
    body = namespace["shed_load"](app)({}, lambda status, headers: seen.append((status, headers)))
    assert seen[0][0] == "503 Service Unavailable"
    assert ("Retry-After", "8") in seen[0][1]
    assert json.loads(b"".join(body)) == {"error": "queue_full", "retry_after": 8}


def backpressure_doc_example() -> str:
    """The WSGI literal block of ``jobs.http``'s docstring (up to the ASGI paragraph)."""
    import textwrap  # noqa: PLC0415

    import jobs.http  # noqa: PLC0415

    block = (jobs.http.__doc__ or "").split("::\n\n", 1)[1].split("\nASGI", 1)[0]
    return textwrap.dedent(block)
