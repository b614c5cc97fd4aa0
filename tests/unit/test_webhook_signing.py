"""Standard Webhooks signing and the meaning of a receiver's answer (pure functions)."""

from __future__ import annotations

import base64
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from jobs.webhooks import outcome, signing
from jobs.webhooks.outcome import Verdict

NOW = 1_800_000_000


def test_a_generated_secret_is_whsec_with_32_random_bytes() -> None:
    """Given two generated secrets, then each is ``whsec_`` + base64 of 32 bytes, and they
    differ.
    """
    first, second = signing.generate_secret(), signing.generate_secret()
    assert first.startswith("whsec_")
    assert len(base64.b64decode(first.removeprefix("whsec_"))) == 32
    assert first != second


@pytest.mark.parametrize(
    "secret",
    ["nope", "whsec_", "whsec_!!!!", "whsec_" + base64.b64encode(b"short").decode()],
)
def test_malformed_or_short_secrets_are_refused_without_echoing_them(secret: str) -> None:
    """Given a malformed secret or one under 24 bytes, then ValueError, not quoting it."""
    with pytest.raises(ValueError, match="signing secret") as caught:
        signing.secret_key(secret)
    if len(secret) > len("whsec_"):
        assert secret not in str(caught.value)


def test_standardwebhooks_verifies_our_signature_over_the_exact_bytes() -> None:
    """Given headers signed for a body, then ``standardwebhooks`` verifies them, and refuses
    them when one byte of the body changes.
    """
    secret = signing.generate_secret()
    body = b'{"type":"a.b","data":{"x":"\xc3\xa9"}}'
    now = int(datetime.now(UTC).timestamp())
    headers = signing.signed_headers(
        [secret], message_id="msg_1", timestamp=now, body=body, attempt=3
    )
    assert Webhook(secret).verify(body, headers) == {"type": "a.b", "data": {"x": "é"}}
    assert headers[signing.ATTEMPT_HEADER] == "3"
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"a.b", b"a.c"), headers)


def test_every_secret_signs_during_a_rotation() -> None:
    """Given two secrets, then the header has two signatures and each secret verifies alone."""
    old, new = signing.generate_secret(), signing.generate_secret()
    body = b"{}"
    now = int(datetime.now(UTC).timestamp())
    headers = signing.signed_headers(
        [old, new], message_id="m", timestamp=now, body=body, attempt=1
    )
    assert len(headers["webhook-signature"].split()) == 2
    for secret in (old, new):
        Webhook(secret).verify(body, headers)
        assert signing.verify(secret, headers, body, now=now)
    assert not signing.verify(signing.generate_secret(), headers, body, now=now)
    assert not signing.verify(old, headers, body, now=now + 301)


def test_no_secret_is_an_error() -> None:
    """Given no valid secret, then signing refuses (an endpoint always has one)."""
    with pytest.raises(ValueError, match="at least one"):
        signing.signed_headers([], message_id="m", timestamp=NOW, body=b"", attempt=1)


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.DELIVERED),
        (204, Verdict.DELIVERED),
        (299, Verdict.DELIVERED),
        (301, Verdict.RETRY),
        (302, Verdict.RETRY),
        (400, Verdict.REJECTED),
        (401, Verdict.REJECTED),
        (404, Verdict.REJECTED),
        (408, Verdict.RETRY),
        (410, Verdict.GONE),
        (413, Verdict.REJECTED),
        (425, Verdict.RETRY),
        (429, Verdict.THROTTLED),
        (500, Verdict.RETRY),
        (503, Verdict.RETRY),
        (599, Verdict.RETRY),
    ],
)
def test_each_status_has_its_verdict(status: int, verdict: Verdict) -> None:
    """2xx delivered; 408/425/5xx/3xx retry; 429 throttled; 410 gone; other 4xx rejected."""
    assert outcome.decide(status, {}, now=NOW, cap=3600).verdict is verdict


def test_retry_after_seconds_and_dates_are_honoured_and_capped() -> None:
    """Given Retry-After as seconds, as an HTTP date, too long, in the past, or garbage, then
    the wait is that many seconds, capped, 0 for the past, None for garbage.
    """
    moment = datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=120)
    parse = outcome.parse_retry_after
    assert parse("30", now=NOW, cap=3600) == 30
    assert parse(format_datetime(moment, usegmt=True), now=NOW, cap=3600) == 120
    assert parse("999999", now=NOW, cap=3600) == 3600
    past = format_datetime(moment - timedelta(days=1), usegmt=True)
    assert parse(past, now=NOW, cap=3600) == 0
    assert parse("soon", now=NOW, cap=3600) is None
    assert parse(None, now=NOW, cap=3600) is None
    decision = outcome.decide(503, {"retry-after": "7"}, now=NOW, cap=3600)
    assert (decision.verdict, decision.retry_after) == (Verdict.RETRY, 7)


def test_the_default_schedule_is_standard_webhooks_with_jitter() -> None:
    """Given the default schedule (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h) and
    20 % jitter, then each retry's delay is within ±20 % of its entry; past the end the last
    entry repeats; a longer Retry-After wins over the schedule.
    """
    from workers.settings import Settings  # noqa: PLC0415

    schedule = Settings().webhook_retry_schedule
    hours = 3600
    expected = (5, 300, 1800, 2 * hours, 5 * hours, 10 * hours, 14 * hours, 20 * hours, 24 * hours)
    assert schedule == expected
    rng = random.Random(7)
    for attempt, base in enumerate(schedule, start=1):
        for _ in range(50):
            delay = outcome.scheduled_delay(attempt, schedule, jitter=0.2, rng=rng)
            assert base * 0.8 <= delay <= base * 1.2
    assert outcome.scheduled_delay(20, schedule, jitter=0) == 24 * hours
    assert outcome.retry_delay(1, 60, schedule, jitter=0) == 60
    assert outcome.retry_delay(2, 60, schedule, jitter=0) == 300
