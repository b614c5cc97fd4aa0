"""Pure functions of the runtime: backoff, canonical JSON, keys, redaction, fingerprints."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta

import pytest

from workers.backoff import backoff_ceiling, full_jitter
from workers.canonical import canonical_json, check_json, derive_key
from workers.deadletters import fingerprint
from workers.errors import InvalidJob
from workers.job import header_problem
from workers.publisher import list_key
from workers.redaction import redact, redact_text, safe_repr
from workers.request import message_problem
from workers.transport import GARBAGE_CONTENT_TYPE, decode_fetched, due_time, queue_of


def test_backoff_ceiling_doubles_from_the_base_and_stops_at_the_cap() -> None:
    """The ceiling after attempt n is min(cap, base * 2**(n-1))."""
    assert [backoff_ceiling(n, base=1, cap=30) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_full_jitter_stays_within_zero_and_the_ceiling() -> None:
    """Every drawn delay lies in [0, ceiling] and the draws actually vary."""
    rng = random.Random(7)
    draws = [full_jitter(4, base=1, cap=30, rng=rng) for _ in range(500)]
    assert all(0 <= d <= 8 for d in draws)
    assert max(draws) - min(draws) > 4


def test_canonical_json_ignores_key_order_so_derived_keys_match() -> None:
    """Equal arguments in a different key order give the same idempotency key."""
    assert canonical_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
    assert derive_key("t", (), {"a": 1, "b": 2}) == derive_key("t", [], {"b": 2, "a": 1})
    assert derive_key("t", (), {"a": 1}) != derive_key("u", (), {"a": 1})


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (datetime.now(UTC), "argument 'when'"),
        ({"nested": {1: "x"}}, "argument 'when'['nested']"),
        ([1, {2}], "argument 'when'[1]"),
        (float("nan"), "argument 'when'"),
        (float("inf"), "argument 'when'"),
        ([float("-inf")], "argument 'when'[0]"),
    ],
)
def test_values_json_cannot_carry_are_refused_naming_the_argument(
    value: object, field: str
) -> None:
    """A non-JSON value raises InvalidJob whose field names where it sits."""
    with pytest.raises(InvalidJob) as caught:
        check_json(value, "argument 'when'")
    assert caught.value.field == field
    assert field in str(caught.value)


def test_priorities_map_onto_kombus_redis_sub_queues() -> None:
    """Priority 0 is the plain list (consumed first); others map down to the 3/6/9 steps."""
    assert list_key("default", None) == "default"
    assert list_key("default", 0) == "default"
    assert list_key("default", 4) == "default\x06\x163"
    assert list_key("default", 9) == "default\x06\x169"
    assert queue_of("default\x06\x166") == "default"


def test_a_future_eta_is_due_later_and_a_past_one_is_due_now() -> None:
    """Only an eta in the future sends a message to the delayed store."""
    future = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    past = (datetime.now(UTC) - timedelta(seconds=30)).isoformat()
    due = due_time({"headers": {"eta": future}})
    assert due is not None
    assert time.time() + 25 < due < time.time() + 35
    assert due_time({"headers": {"eta": past}}) is None
    assert due_time({"headers": {}}) is None


def test_bytes_that_are_no_envelope_become_a_garbage_envelope() -> None:
    """Undecodable queue entries are wrapped (not dropped) so the consumer can dead-letter them."""
    wrapped = decode_fetched(b"\xff\x00nope", "garbage:1", "default")
    assert wrapped["content-type"] == GARBAGE_CONTENT_TYPE
    assert wrapped["properties"]["delivery_tag"] == "garbage:1"
    real = {"properties": {"delivery_tag": "t"}, "headers": {}, "body": ""}
    assert decode_fetched(json.dumps(real).encode(), "t", "default") == real


@pytest.mark.parametrize(
    "envelope",
    [
        {"properties": {}, "headers": "not a dict"},
        {"properties": {"delivery_info": "default"}},
        {"properties": {}, "body": ["not", "text"]},
        {"properties": {}, "content-type": 5},
        {"properties": {"body_encoding": "base64"}, "body": "abc"},
    ],
)
def test_an_envelope_kombu_could_not_read_becomes_a_garbage_envelope(
    envelope: dict[str, object],
) -> None:
    """A field of the wrong type would crash kombu's Message inside the consumer loop."""
    wrapped = decode_fetched(json.dumps(envelope).encode(), "garbage:2", "default")
    assert wrapped["content-type"] == GARBAGE_CONTENT_TYPE


def test_a_fetched_envelope_carries_the_tag_its_in_flight_entry_has() -> None:
    """fetch.lua files a message without a string delivery_tag under a synthetic tag."""
    fetched = decode_fetched(json.dumps({"properties": {}}).encode(), "garbage:3", "default")
    assert fetched["properties"]["delivery_tag"] == "garbage:3"


@pytest.mark.parametrize(
    ("header", "words"),
    [
        (["key"], "not an object"),
        ({"attempt": "many"}, "jobs.attempt is 'many'"),
        ({"attempt": True}, "jobs.attempt"),
        ({"attempt": 0}, "not a positive count"),
        ({"key": 5}, "jobs.key is 5"),
        ({"dl": "x"}, "jobs.dl"),
    ],
)
def test_a_malformed_jobs_header_is_described_naming_the_field(header: object, words: str) -> None:
    """Each unusable header gets a one-line reason naming what is wrong."""
    problem = header_problem(header)
    assert problem is not None
    assert words in problem


def test_a_usable_jobs_header_has_no_problem() -> None:
    """Missing (a foreign producer) or well-formed headers pass."""
    assert header_problem(None) is None
    assert header_problem({}) is None
    assert header_problem({"key": "k", "attempt": 2, "run": "r", "dl": None}) is None


def test_arguments_that_are_no_list_or_mapping_are_invalid_args() -> None:
    """Args and kwargs of the wrong shape dead-letter as invalid_args; a bad header as
    invalid_message.
    """
    bad_kwargs = message_problem([], ["name"], None)
    assert bad_kwargs is not None
    assert (bad_kwargs.reason, str(bad_kwargs)) == (
        "invalid_args",
        "kwargs is a list, not an object",
    )
    bad_args = message_problem({"a": 1}, {}, None)
    assert bad_args is not None
    assert bad_args.reason == "invalid_args"
    bad_header = message_problem([], {}, {"attempt": "x"})
    assert bad_header is not None
    assert bad_header.reason == "invalid_message"
    assert message_problem((), {}, {"key": "k"}) is None


def test_secrets_are_redacted_by_name_and_inside_urls() -> None:
    """Secret-named fields and URL passwords never survive redaction."""
    value = {"secret": "s3", "nested": {"api_key": "k"}, "url": "postgresql://u:pw@h/db", "n": 1}
    assert redact(value) == {
        "secret": "***",
        "nested": {"api_key": "***"},
        "url": "postgresql://u:***@h/db",
        "n": 1,
    }
    assert "pw" not in redact_text("redis://:pw@127.0.0.1:6379/0")
    assert "hunter2" not in safe_repr({"password": "hunter2"})


def test_a_fingerprint_is_the_exception_type_and_the_innermost_frame() -> None:
    """Failures are grouped by type and the frame that raised."""
    tb = (
        'Traceback (most recent call last):\n  File "/app/a.py", line 1, in outer\n'
        '  File "/app/jobs/webhooks.py", line 9, in deliver\nValueError: x\n'
    )
    assert fingerprint("ValueError", tb) == "ValueError@webhooks.py:deliver"
    assert fingerprint("decode_error", None) == "decode_error"
