"""Pure parts of partition and view maintenance: time arithmetic, names, bounds, registries."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from jobs import partitions, views
from jobs.partitions import (
    Range,
    add_intervals,
    advisory_key,
    interval_start,
    name_range,
    parse_bound,
    partition_name,
    planned_ranges,
    retention_cutoff,
    shift_months,
)
from workers.errors import ConfigurationError, PermanentError
from workers.registries import PartitionSpec, ViewSpec
from workers.settings import Settings, load_settings

NYE = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)


def spec(interval: str = "month", **kwargs: object) -> PartitionSpec:
    return PartitionSpec.model_validate(
        {"table": "events", "column": "created_at", "interval": interval, **kwargs}
    )


def names(ranges: list[Range]) -> list[str]:
    return [r.name for r in ranges]


def test_on_new_years_eve_a_monthly_table_plans_december_and_the_next_three_months() -> None:
    """Given 2026-12-31 23:59 UTC and premake 3, the plan is Dec 2026 .. Mar 2027, contiguous."""
    plan = planned_ranges(spec(premake=3), NYE)
    assert names(plan) == ["events_p202612", "events_p202701", "events_p202702", "events_p202703"]
    assert plan[0].start == datetime(2026, 12, 1, tzinfo=UTC)
    assert plan[-1].end == datetime(2027, 4, 1, tzinfo=UTC)
    assert all(a.end == b.start for a, b in itertools.pairwise(plan))


def test_weekly_partitions_start_on_iso_mondays_across_the_year_boundary() -> None:
    """Given a Thursday (2026-12-31), the current week starts Monday 2026-12-28."""
    plan = planned_ranges(spec("week", premake=2), NYE)
    assert names(plan) == ["events_p20261228", "events_p20270104", "events_p20270111"]
    assert all(r.start.weekday() == 0 for r in plan)


def test_daily_partitions_cross_the_year_boundary() -> None:
    """Given the last minute of 2026, daily partitions run into 2027."""
    plan = planned_ranges(spec("day", premake=2), NYE)
    assert names(plan) == ["events_p20261231", "events_p20270101", "events_p20270102"]


def test_a_skipped_run_catches_up_the_missed_intervals() -> None:
    """Given partitions up to October 2026 and a clock in February 2027 (four months of runs
    skipped), the plan starts right after October, leaving no hole.
    """
    plan = planned_ranges(spec(premake=3), datetime(2027, 2, 10, tzinfo=UTC),
                          last_end=datetime(2026, 11, 1, tzinfo=UTC))  # fmt: skip
    assert names(plan)[0] == "events_p202611"
    assert names(plan)[-1] == "events_p202705"
    assert len(plan) == 7


def test_catch_up_never_recreates_ranges_already_past_retention() -> None:
    """Given a table last maintained years ago and a 3-month retention, the plan starts at the
    retention cutoff's month, not at the stale end.
    """
    plan = planned_ranges(spec(premake=1, retention="3 months"),
                          datetime(2027, 6, 15, tzinfo=UTC),
                          last_end=datetime(2020, 1, 1, tzinfo=UTC))  # fmt: skip
    assert names(plan) == [
        "events_p202703",
        "events_p202704",
        "events_p202705",
        "events_p202706",
        "events_p202707",
    ]


def test_month_arithmetic_clamps_the_day_and_handles_leap_years() -> None:
    """31 March minus one month is 28/29 February; adding months crosses years."""
    assert shift_months(datetime(2026, 3, 31, tzinfo=UTC), -1) == datetime(2026, 2, 28, tzinfo=UTC)
    assert shift_months(datetime(2028, 3, 31, tzinfo=UTC), -1) == datetime(2028, 2, 29, tzinfo=UTC)
    assert add_intervals(datetime(2026, 12, 1, tzinfo=UTC), "month", 3) == datetime(
        2027, 3, 1, tzinfo=UTC
    )
    assert add_intervals(datetime(2027, 1, 1, tzinfo=UTC), "month", -13) == datetime(
        2025, 12, 1, tzinfo=UTC
    )


def test_interval_start_is_computed_in_utc() -> None:
    """A non-UTC time is converted first: 2027-01-01 00:30 +02:00 is still December in UTC."""
    from datetime import timedelta, timezone  # noqa: PLC0415

    moment = datetime(2027, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))
    assert interval_start(moment, "month") == datetime(2026, 12, 1, tzinfo=UTC)


def test_retention_cutoffs_use_calendar_units() -> None:
    """'24 months' and '2 years' agree; days and weeks are exact; None keeps everything."""
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert retention_cutoff(now, (24, "month")) == datetime(2024, 11, 23, 12, 0, tzinfo=UTC)
    assert retention_cutoff(now, (2, "year")) == retention_cutoff(now, (24, "month"))
    assert retention_cutoff(now, (90, "day")) == datetime(2026, 8, 25, 12, 0, tzinfo=UTC)
    assert retention_cutoff(now, (1, "week")) == datetime(2026, 11, 16, 12, 0, tzinfo=UTC)
    assert retention_cutoff(now, None) is None


def test_partition_bounds_from_the_catalogue_are_parsed_to_utc() -> None:
    """pg_get_expr texts: timestamptz in any offset, dates, MINVALUE/MAXVALUE and DEFAULT."""
    assert parse_bound(
        "FOR VALUES FROM ('2025-12-31 19:00:00-05') TO ('2026-01-31 19:00:00-05')"
    ) == (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
    assert parse_bound("FOR VALUES FROM ('2026-01-01') TO (MAXVALUE)") == (
        datetime(2026, 1, 1, tzinfo=UTC),
        None,
    )
    assert parse_bound("DEFAULT") is None
    with pytest.raises(ValueError, match="range bound"):
        parse_bound("FOR VALUES IN (1, 2)")


def test_names_of_detached_leftovers_give_back_their_range() -> None:
    """A table named like our partitions maps back to its range; other names do not."""
    assert name_range(spec(), "events_p202601") == Range(
        "events_p202601", datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
    )
    daily = name_range(spec("day"), "events_p20260105")
    assert daily is not None
    assert daily.end == datetime(2026, 1, 6, tzinfo=UTC)
    assert name_range(spec(), "events_default") is None
    assert name_range(spec(), "events_archive_p202601") is None
    assert name_range(spec(), "other_p202601") is None
    assert partition_name("events", "month", datetime(2026, 1, 1, tzinfo=UTC)) == "events_p202601"


def test_advisory_keys_are_stable_signed_64_bit_and_distinct_per_kind() -> None:
    """The key is derived from the name only (same on every host and run)."""
    key = advisory_key("partitions", "events")
    assert key == advisory_key("partitions", "events")
    assert -(2**63) <= key < 2**63
    assert key != advisory_key("views", "events")


def test_registries_default_to_the_demo_domain() -> None:
    """Defaults: events (monthly, premake 3, 24 months, DEFAULT partition), mv_daily_stats."""
    settings = Settings()
    assert settings.partition_spec("events") == spec(
        premake=3, retention="24 months", default_partition=True
    )
    view = settings.view_spec("mv_daily_stats")
    assert view is not None
    assert view.concurrently


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("JOBS_PARTITIONS", '[{"table": "events", "column": "created_at", "interval": "year"}]',
         "JOBS_PARTITIONS_0_INTERVAL"),
        ("JOBS_PARTITIONS", '[{"table": "events; drop", "column": "created_at"}]',
         "JOBS_PARTITIONS_0_TABLE"),
        ("JOBS_PARTITIONS", '[{"table": "e", "column": "c", "retention": "3 fortnights"}]',
         "JOBS_PARTITIONS_0_RETENTION"),
        ("JOBS_PARTITIONS", '[{"table": "e", "column": "c"}, {"table": "e", "column": "c"}]',
         "JOBS_PARTITIONS: Value error, table listed more than once: ['e']"),
        ("JOBS_VIEWS", '[{"view": "mv", "interval": 0}]', "JOBS_VIEWS_0_INTERVAL"),
        ("JOBS_VIEWS", '[{"view": "mv", "refresh": "often"}]', "JOBS_VIEWS_0_REFRESH"),
        ("JOBS_VIEWS", '[{"view": "mv"}, {"view": "mv"}]', "view listed more than once"),
    ],
)  # fmt: skip
def test_a_bad_registry_entry_is_a_clear_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    """Given an invalid JOBS_PARTITIONS / JOBS_VIEWS entry, settings refuse to load and the
    message names the variable (and the entry's field).
    """
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match="invalid settings") as caught:
        load_settings()
    assert message in str(caught.value)


def test_retention_text_is_read_as_count_and_unit() -> None:
    """'24 months', ' 90 days ', '1 year' → (24, month), (90, day), (1, year)."""
    assert spec(retention="24 months").retention_parts == (24, "month")
    assert spec(retention=" 90 days ").retention_parts == (90, "day")
    assert spec(retention="1 year").retention_parts == (1, "year")
    assert spec().retention_parts is None


def test_unregistered_tables_and_views_are_refused_by_name() -> None:
    """A table or view missing from its registry is a permanent error naming it."""
    settings = Settings()
    with pytest.raises(PermanentError, match="'pg_authid' is not in JOBS_PARTITIONS"):
        partitions.spec_for("pg_authid", settings)
    with pytest.raises(PermanentError, match="'users; drop' is not in JOBS_VIEWS"):
        views.spec_for("users; drop", settings)


def test_schedule_entries_follow_the_registries() -> None:
    """Partitions: ensure + drop_expired daily; views: one entry per view at its interval, all
    on the maintenance queue, in celery beat's entry format.
    """
    settings = Settings(
        views=(ViewSpec(view="a", interval=60), ViewSpec(view="b", interval=900))  # type: ignore[call-arg]
    )
    entries = partitions.schedule_entries(settings)
    assert entries["partitions.ensure"] == {
        "task": "partitions.ensure",
        "schedule": 86400.0,
        "kwargs": {},
        "options": {"queue": "maintenance"},
    }
    assert entries["partitions.drop_expired"]["task"] == "partitions.drop_expired"
    view_entries = views.schedule_entries(settings)
    assert view_entries == {
        "views.refresh:a": {
            "task": "views.refresh",
            "schedule": 60.0,
            "kwargs": {"view": "a"},
            "options": {"queue": "maintenance"},
        },
        "views.refresh:b": {
            "task": "views.refresh",
            "schedule": 900.0,
            "kwargs": {"view": "b"},
            "options": {"queue": "maintenance"},
        },
    }
    assert partitions.schedule_entries(Settings(partitions=())) == {}  # type: ignore[call-arg]
