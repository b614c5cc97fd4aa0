"""Rate-limit parsing, naming and adaptive-factor arithmetic (pure; no Redis)."""

from __future__ import annotations

import pytest

from workers import ratelimits
from workers.errors import InvalidJob
from workers.policies import declared_options
from workers.policies.ratelimit import RateLimit


@pytest.mark.parametrize(
    ("text", "per_second", "spec"),
    [
        ("20/s", 20.0, "20/s"),
        ("100/m", 100 / 60, "100/m"),
        ("5/h", 5 / 3600, "5/h"),
        (" 2.5 / sec ", 2.5, "2.5/s"),
        ("30/minute", 0.5, "30/m"),
        ("7/Hours", 7 / 3600, "7/h"),
    ],
)
def test_rates_parse_to_a_canonical_spec_and_a_per_second_figure(
    text: str, per_second: float, spec: str
) -> None:
    """Given the usual spellings of a rate, then each parses to its canonical form and rate."""
    rate = ratelimits.parse_rate(text)
    assert rate.spec == spec
    assert rate.per_second == pytest.approx(per_second)
    assert rate.burst == 1


@pytest.mark.parametrize("text", ["", "fast", "20", "20/d", "0/s", "-1/s", "/s", "1e3/s", "20/s/m"])
def test_a_bad_rate_is_refused_naming_the_argument(text: str) -> None:
    """Given text that is not a positive count per s/m/h, then parsing fails naming the field."""
    with pytest.raises(InvalidJob) as caught:
        ratelimits.parse_rate(text, field="RATE")
    assert caught.value.field == "RATE"
    assert str(caught.value).startswith("RATE:")


@pytest.mark.parametrize("burst", [0, -3, 100_001, True, 2.5])
def test_a_bad_burst_is_refused_naming_burst(burst: object) -> None:
    """Given a burst that is not an integer from 1 to 100,000, then it is refused as 'burst'."""
    with pytest.raises(InvalidJob) as caught:
        ratelimits.parse_rate("10/s", burst=burst)  # type: ignore[arg-type]
    assert caught.value.field == "burst"


def test_the_stored_form_round_trips_and_gives_the_emission_interval() -> None:
    """Given 100/m with burst 5, then its stored form is '100/m,5', reads back equal, and its
    GCRA emission interval is 600 ms.
    """
    rate = ratelimits.parse_rate("100/m", burst=5)
    assert rate.stored() == "100/m,5"
    assert ratelimits.parse_stored(b"100/m,5") == rate
    assert rate.interval_ms == pytest.approx(600.0)
    assert str(rate) == "100/m burst 5"
    assert ratelimits.parse_stored("garbage") is None


def test_limit_names_are_the_task_or_task_and_key() -> None:
    """Given a task and an optional key, then the limit is '<task>' or '<task>:<key>', and a
    key containing ':' (host:port) still maps back to its task.
    """
    assert ratelimits.limit_name("webhooks.deliver", None) == "webhooks.deliver"
    name = ratelimits.limit_name("webhooks.deliver", "api.example.com:8443")
    assert name == "webhooks.deliver:api.example.com:8443"
    assert ratelimits.task_of(name) == "webhooks.deliver"


def test_the_factor_is_halved_by_a_429_and_recovers_additively_after_the_block() -> None:
    """Given factor 1 halved at t=0 with a block until t=2 s and 5 % recovery per second, then
    the factor stays 0.5 during the block, is 0.6 two quiet seconds after it, and caps at 1.
    """
    factor = ratelimits.decreased(1.0, 0.5)
    assert factor == 0.5

    def at(seconds: float) -> float:
        return ratelimits.factor_at(
            seconds * 1000, factor=factor, since_ms=0, blocked_until_ms=2000, recovery=0.05
        )

    assert at(1.0) == 0.5
    assert at(2.0) == 0.5
    assert at(4.0) == pytest.approx(0.6)
    assert at(60.0) == 1.0


def test_repeated_429s_never_drive_the_factor_below_its_floor() -> None:
    """Given many 429s in a row, then the factor stops at MIN_FACTOR (the limit never stops)."""
    factor = 1.0
    for _ in range(50):
        factor = ratelimits.decreased(factor, 0.5)
    assert factor == ratelimits.MIN_FACTOR


def test_the_rate_limit_policy_declares_its_task_options() -> None:
    """Given the default policies, then rate, burst and rate_key are known task options."""
    assert {"rate", "burst", "rate_key"} <= declared_options()
    assert RateLimit.options == frozenset({"rate", "burst", "rate_key"})


def test_a_limit_listing_reports_the_effective_rate_after_the_factor() -> None:
    """Given a declared 20/s overridden to 10/s and backed off to 0.5, then the effective rate
    is 5/s and the JSON form names declared, override and effective.
    """
    info = ratelimits.LimitInfo(
        name="flow.deliver:a",
        declared=ratelimits.parse_rate("20/s"),
        override=ratelimits.parse_rate("10/s"),
        factor=0.5,
        blocked_until=None,
        parked=3,
    )
    assert info.effective_per_second == pytest.approx(5.0)
    assert info.as_dict() == {
        "name": "flow.deliver:a",
        "declared": "20/s",
        "override": "10/s",
        "factor": 0.5,
        "effective_per_second": 5.0,
        "blocked_until": None,
        "parked": 3,
    }
