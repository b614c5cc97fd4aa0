"""Pure parts of cache warming: encoding, TTL jitter, loader names, warmers, schedule entries."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from pydantic import ValidationError

from jobs import cache
from tests import tasks_cache
from workers.errors import ConfigurationError, InvalidJob
from workers.registries import WarmerSpec, template_fields
from workers.settings import Settings


def test_values_are_stored_as_json_with_dates_decimals_and_uuids_made_plain() -> None:
    """Dates become ISO text, integral decimals ints, others floats, UUIDs text; anything else
    is refused with an InvalidJob naming the key.
    """
    value = {
        "day": date(2026, 12, 31),
        "at": datetime(2026, 12, 31, 23, 59, tzinfo=UTC),
        "n": Decimal(3),
        "rate": Decimal("0.25"),
        "id": UUID(int=1),
    }
    assert cache.plain(value) == {
        "day": "2026-12-31",
        "at": "2026-12-31T23:59:00+00:00",
        "n": 3,
        "rate": 0.25,
        "id": "00000000-0000-0000-0000-000000000001",
    }
    with pytest.raises(InvalidJob, match="'k1'") as caught:
        cache.encode({"x": object()}, "k1")
    assert caught.value.field == "k1"


def test_the_jittered_ttl_never_exceeds_the_ttl_and_spreads_below_it() -> None:
    """Each key's TTL is within [ttl * (1 - jitter), ttl] and not all the same."""
    samples = [cache.jittered_ttl_ms(300, 0.1) for _ in range(500)]
    assert min(samples) >= 270_000
    assert max(samples) <= 300_000
    assert len(set(samples)) > 100
    assert cache.jittered_ttl_ms(5, 0) == 5000


@pytest.mark.parametrize(
    ("source", "sql"),
    [
        ("tests.tasks_cache:numbers", False),
        ("  pkg.mod:Class.method ", False),
        ("SELECT day FROM mv_daily_stats", True),
        ("WITH x AS (SELECT 1) SELECT * FROM x", True),
    ],
)
def test_a_loader_is_sql_unless_it_is_a_dotted_name(source: str, sql: bool) -> None:
    """``module:function`` names a function; any other text is SQL."""
    assert cache.is_sql(source) is sql


def test_a_refresh_loader_must_import_back_to_itself() -> None:
    """A module-level function gets its dotted name; lambdas and closures are refused with an
    InvalidJob naming ``loader`` (a worker could not import them).
    """
    assert cache.dotted_name(tasks_cache.counted) == "tests.tasks_cache:counted"

    def inner() -> None:
        """A closure."""

    for func in (lambda: None, inner):
        with pytest.raises(InvalidJob, match="not importable") as caught:
            cache.dotted_name(func)
        assert caught.value.field == "loader"
    with pytest.raises(ConfigurationError, match="cannot be imported"):
        cache.resolve("tests.tasks_cache:nope")


def test_key_templates_take_plain_named_fields_only() -> None:
    """``{day}`` fields are listed once each; positional, attribute and formatted fields are
    refused (settings refuse such a warmer at load).
    """
    assert template_fields("stats:{kind}:{day}:{kind}") == ("kind", "day")
    assert template_fields("constant") == ()
    for bad in ("x:{0}", "x:{a.b}", "x:{a!r}", "x:{a:>5}"):
        with pytest.raises(ValueError, match="plain named fields"):
            template_fields(bad)
    with pytest.raises(ValidationError, match="key_template"):
        WarmerSpec(key_source="m:f", loader="m:g", key_template="x:{0}")


def test_a_warmer_renders_keys_and_names_a_missing_field() -> None:
    """The key of an item is its template filled from its params; a missing field is an
    InvalidJob naming the params.
    """
    warmer = cache.Warmer(name="w", key_source="m:f", loader="m:g", key_template="u:{id}:{day}")
    assert warmer.key({"id": 7, "day": "2026-01-01", "extra": 1}) == "u:7:2026-01-01"
    with pytest.raises(InvalidJob, match="lack field 'day'"):
        warmer.key({"id": 7})


def test_a_function_loader_may_return_a_mapping_or_pairs() -> None:
    """A chunk loader returns ``{cache_key: value}`` or ``(params | cache_key, value)`` pairs."""

    def as_mapping(*, keys: list[dict[str, Any]]) -> dict[str, int]:
        return {f"n:{k['n']}": k["n"] for k in keys}

    def as_pairs(*, keys: list[dict[str, Any]]) -> list[tuple[Any, int]]:
        return [(k, k["n"]) for k in keys[:1]] + [(f"n:{k['n']}", k["n"]) for k in keys[1:]]

    chunk = [{"n": 1}, {"n": 2}]
    for loader in (as_mapping, as_pairs):
        warmer = cache.Warmer(name="w", key_source="m:f", loader=loader, key_template="n:{n}")
        assert cache.load_items(warmer, chunk) == [("n:1", 1), ("n:2", 2)]


def test_warmers_come_from_settings_with_an_interval_of_80_percent_of_the_ttl() -> None:
    """Each JOBS_WARMERS entry becomes a warmer; without an interval it runs every 80 % of its
    TTL (4 min for 5 min) and a run blocks the next one for at most two intervals.
    """
    settings = Settings(
        warmers={"a": WarmerSpec(key_source="m:f", loader="m:g", key_template="a:{x}", ttl=300)}
    )
    warmer = cache.warmers(settings)["a"]
    assert (warmer.interval, warmer.run_timeout) == (240.0, 480.0)
    assert cache.schedule_entries(settings) == {
        "cache.warm:a": {
            "task": "cache.warm",
            "schedule": 240.0,
            "kwargs": {"warmer": "a"},
            "options": {"queue": "cache"},
        }
    }


def test_the_demo_warmer_is_configured_by_default() -> None:
    """Out of the box, ``daily_stats`` warms ``stats:daily:{day}`` from mv_daily_stats."""
    warmer = cache.warmers(Settings())["daily_stats"]
    assert warmer.key_template == "stats:daily:{day}"
    assert "mv_daily_stats" in str(warmer.loader)
    assert (warmer.ttl, warmer.interval) == (300.0, 240.0)


def test_invalid_warmers_are_refused_with_their_name() -> None:
    """Bad names, numbers and rates are configuration errors naming the warmer; a code
    registration may not reuse a JOBS_WARMERS name.
    """
    with pytest.raises(ValidationError, match="warmer names"):
        Settings(warmers={"Bad Name": WarmerSpec(key_source="m:f", loader="m:g", key_template="k")})
    with pytest.raises(ConfigurationError, match=r"'fast'.*rate"):
        cache.register_warmer("fast", key_source="m:f", loader="m:g", key_template="k", rate="lots")
    with pytest.raises(ConfigurationError, match="already configured"):
        cache.register_warmer("daily_stats", key_source="m:f", loader="m:g", key_template="k")
    with pytest.raises(ConfigurationError, match="must match"):
        cache.register_warmer("Nope!", key_source="m:f", loader="m:g", key_template="k")


def test_job_keys_of_chunks_and_refreshes_are_stable_and_bounded() -> None:
    """Chunk keys name warmer, run and chunk; refresh keys digest the cache key (any length)."""
    assert cache.chunk_key("w", "r1", 3) == "cache.load:w:r1:3"
    long_key = "k" * 2000
    assert cache.refresh_key(long_key) == cache.refresh_key(long_key)
    assert len(cache.refresh_key(long_key)) < 64
