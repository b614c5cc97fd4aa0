"""Partition ranges and names (pure): intervals, retention cutoffs, planned and parsed bounds.

A partition of ``<table>`` covers ``[start, end)`` of one UTC day, ISO week (Monday) or calendar
month and is named ``<table>_pYYYYMM`` (months) or ``<table>_pYYYYMMDD`` (its first day).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from workers.registries import PartitionSpec

Interval = Literal["day", "week", "month"]

#: Intervals a skipped run may catch up at most (older ranges are left to the DEFAULT
#: partition, if any): a table not maintained for years must not get thousands of tables.
MAX_CATCH_UP = 400
_BOUND = re.compile(r"^FOR VALUES FROM \((?P<lo>.+)\) TO \((?P<hi>.+)\)$")
_NAME_SUFFIX = re.compile(r"_p(?P<stamp>[0-9]{6}|[0-9]{8})$")


def interval_start(moment: datetime, interval: Interval) -> datetime:
    """The start (UTC midnight; Monday for weeks; the 1st for months) of ``moment``'s interval."""
    moment = moment.astimezone(UTC)
    day = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    if interval == "day":
        return day
    if interval == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def shift_months(moment: datetime, months: int) -> datetime:
    """``moment`` moved by whole calendar months (the day clamped to the target month's end)."""
    index = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    next_first = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=moment.tzinfo)
    last_day = (next_first - timedelta(days=1)).day
    return moment.replace(year=year, month=month, day=min(moment.day, last_day))


def add_intervals(start: datetime, interval: Interval, count: int) -> datetime:
    """``start`` moved by ``count`` intervals (negative moves back)."""
    if interval == "day":
        return start + timedelta(days=count)
    if interval == "week":
        return start + timedelta(weeks=count)
    return shift_months(start, count)


def retention_cutoff(now: datetime, retention: tuple[int, str] | None) -> datetime | None:
    """``now - retention`` (calendar months and years); None when everything is kept."""
    if retention is None:
        return None
    count, unit = retention
    if unit == "day":
        return now - timedelta(days=count)
    if unit == "week":
        return now - timedelta(weeks=count)
    return shift_months(now, -count * (12 if unit == "year" else 1))


def partition_name(table: str, interval: Interval, start: datetime) -> str:
    """``<table>_pYYYYMM`` for months, ``<table>_pYYYYMMDD`` (the first day) otherwise."""
    stamp = start.strftime("%Y%m") if interval == "month" else start.strftime("%Y%m%d")
    return f"{table}_p{stamp}"


def default_partition_name(table: str) -> str:
    """The DEFAULT partition of ``table``: ``<table>_default``."""
    return f"{table}_default"


@dataclass(frozen=True, slots=True)
class Range:
    """One partition's name and ``[start, end)`` bounds (UTC)."""

    name: str
    start: datetime
    end: datetime

    def overlaps(self, start: datetime | None, end: datetime | None) -> bool:
        """Whether ``[start, end)`` (None: unbounded) shares an instant with this range."""
        return (start is None or start < self.end) and (end is None or self.start < end)


def planned_ranges(
    spec: PartitionSpec, now: datetime, *, last_end: datetime | None = None
) -> list[Range]:
    """The ranges that must exist at ``now``: the current interval and ``premake`` more.

    ``last_end`` is the upper bound of the newest existing partition: when it lies before the
    current interval (runs were skipped), the ranges in between are planned too, so rows of the
    missed intervals get their partitions (bounded by retention and :data:`MAX_CATCH_UP`).
    """
    current = interval_start(now, spec.interval)
    first = current
    if last_end is not None and last_end < current:
        first = interval_start(last_end, spec.interval)
        if first < last_end:  # not on our grid: start at the next boundary
            first = add_intervals(first, spec.interval, 1)
        cutoff = retention_cutoff(now, spec.retention_parts)
        if cutoff is not None:
            first = max(first, interval_start(cutoff, spec.interval))
        first = max(first, add_intervals(current, spec.interval, -MAX_CATCH_UP))
    end = add_intervals(current, spec.interval, spec.premake + 1)
    ranges = []
    start = first
    while start < end:
        following = add_intervals(start, spec.interval, 1)
        ranges.append(Range(partition_name(spec.table, spec.interval, start), start, following))
        start = following
    return ranges


def parse_bound(expression: str) -> tuple[datetime | None, datetime | None] | None:
    """``(start, end)`` of a ``pg_get_expr(relpartbound)`` text; None for DEFAULT.

    MINVALUE / MAXVALUE become None. Raises ``ValueError`` for other partition kinds.
    """
    if expression == "DEFAULT":
        return None
    match = _BOUND.match(expression)
    if match is None:
        raise ValueError(f"not a single-column range bound: {expression!r}")
    return _bound_value(match["lo"]), _bound_value(match["hi"])


def _bound_value(text: str) -> datetime | None:
    if text in {"MINVALUE", "MAXVALUE"}:
        return None
    value = datetime.fromisoformat(text.strip("'"))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def name_range(spec: PartitionSpec, name: str) -> Range | None:
    """The range a table named like our partitions covers (None if the name is not ours).

    For detached leftovers, whose bounds are gone with the detach. An 8-digit stamp under a
    monthly spec (an older day/week layout) is read as a week: the longer guess drops later.
    """
    if not name.startswith(f"{spec.table}_p"):
        return None
    match = _NAME_SUFFIX.search(name)
    if match is None or match.start() != len(spec.table):
        return None
    stamp = match["stamp"]
    if len(stamp) == 6:  # noqa: PLR2004 - YYYYMM
        start = datetime.strptime(stamp, "%Y%m").replace(tzinfo=UTC)
        return Range(name, start, shift_months(start, 1))
    start = datetime.strptime(stamp, "%Y%m%d").replace(tzinfo=UTC)
    interval: Interval = "day" if spec.interval == "day" else "week"
    return Range(name, start, add_intervals(start, interval, 1))
