"""The beat schedule: one table, built from the registries of every task family.

Each family module (``jobs.partitions``, ``jobs.views``, ``jobs.buffers``, ``jobs.cache``)
exposes ``schedule_entries(settings) -> {name: {"task", "schedule", "kwargs", "options"}}``;
``JOBS_BEAT_SCHEDULE`` adds entries of its own. Defaults from practice: partitions daily (and
at first start: an entry that never ran fires at once), each view at its own interval, buffer
flushes every few seconds, each warmer at 80 % of its TTL.

Entries are fired by :class:`scheduler.leader.LeaderScheduler` through admission (dedup and
backpressure), so their ``options`` may only hold enqueue options that make sense for a
periodic job: ``queue`` and ``priority`` (the idempotency ``key`` is the scheduler's, one per
tick; a blocking ``on_full="wait"`` would stall every other entry).
"""

from __future__ import annotations

import importlib
from datetime import timedelta
from typing import Any

from celery.schedules import BaseSchedule, crontab

from workers.errors import ConfigurationError
from workers.registries import BeatEntrySpec, BeatFamily
from workers.settings import Settings
from workers.task import ADMISSION_OPTIONS

#: The module whose ``schedule_entries(settings)`` gives each family's entries.
FAMILY_MODULES: dict[BeatFamily, str] = {
    "partitions": "jobs.partitions",
    "views": "jobs.views",
    "buffers": "jobs.buffers",
    "cache": "jobs.cache",
}
#: Enqueue options a beat entry may set (a subset of what admission accepts).
ENTRY_OPTIONS = frozenset({"queue", "priority"}) & ADMISSION_OPTIONS
#: Keys of one entry (celery beat_schedule format, keyword arguments only).
ENTRY_KEYS = frozenset({"task", "schedule", "kwargs", "options"})


def build_beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The beat schedule (celery ``beat_schedule`` format) from the registries in ``settings``.

    Families come in ``settings.beat_families`` order, then ``JOBS_BEAT_SCHEDULE``. Raises
    :class:`ConfigurationError` naming the entry for a family module that cannot be imported,
    a name used twice, a schedule that is not seconds / timedelta / crontab, positional args,
    or an option admission would not accept for a periodic job.
    """
    table: dict[str, dict[str, Any]] = {}
    for family in settings.beat_families:
        path = FAMILY_MODULES[family]
        try:
            module = importlib.import_module(path)
        except ModuleNotFoundError as exc:
            raise ConfigurationError(
                f"beat family {family!r}: module {path} cannot be imported ({exc})"
            ) from None
        _merge(table, module.schedule_entries(settings), source=path)
    extra = {name: entry_from_spec(name, spec) for name, spec in settings.beat_schedule.items()}
    _merge(table, extra, source="JOBS_BEAT_SCHEDULE")
    return table


def entry_from_spec(name: str, spec: BeatEntrySpec) -> dict[str, Any]:
    """A ``JOBS_BEAT_SCHEDULE`` entry in celery's format (``every`` seconds or a crontab)."""
    when: Any = spec.every
    if spec.cron is not None:
        minute, hour, day_of_month, month_of_year, day_of_week = spec.cron.split()
        try:
            when = crontab(
                minute=minute,
                hour=hour,
                day_of_month=day_of_month,
                month_of_year=month_of_year,
                day_of_week=day_of_week,
            )
        except ValueError as exc:
            raise ConfigurationError(f"beat entry {name!r}: cron {spec.cron!r}: {exc}") from None
    return {
        "task": spec.task,
        "schedule": when,
        "kwargs": dict(spec.kwargs),
        "options": dict(spec.options),
    }


def _merge(table: dict[str, dict[str, Any]], entries: dict[str, Any], *, source: str) -> None:
    for name, entry in entries.items():
        if name in table:
            raise ConfigurationError(f"beat entry {name!r} from {source} is already scheduled")
        table[name] = check_entry(name, entry)


def check_entry(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Validate one entry; returns it normalised (``kwargs``/``options`` present, copies).

    Raises :class:`ConfigurationError` naming the entry and the offending part.
    """
    unknown = set(entry) - ENTRY_KEYS
    if unknown:
        raise ConfigurationError(
            f"beat entry {name!r}: unknown keys {sorted(unknown)} (allowed: {sorted(ENTRY_KEYS)};"
            " jobs take keyword arguments only)"
        )
    task = entry.get("task")
    if not isinstance(task, str) or not task:
        raise ConfigurationError(f"beat entry {name!r}: 'task' must be a task's wire name")
    when = entry.get("schedule")
    valid_number = isinstance(when, int | float) and not isinstance(when, bool) and when > 0
    if not (valid_number or isinstance(when, timedelta | BaseSchedule)):
        raise ConfigurationError(
            f"beat entry {name!r}: schedule must be seconds > 0, a timedelta or a crontab, "
            f"not {when!r}"
        )
    kwargs = entry.get("kwargs") or {}
    options = entry.get("options") or {}
    if not isinstance(kwargs, dict) or not isinstance(options, dict):
        raise ConfigurationError(f"beat entry {name!r}: kwargs and options must be objects")
    refused = set(options) - ENTRY_OPTIONS
    if refused:
        raise ConfigurationError(
            f"beat entry {name!r}: options {sorted(refused)} are not accepted for periodic jobs "
            f"(allowed: {sorted(ENTRY_OPTIONS)})"
        )
    return {"task": task, "schedule": when, "kwargs": dict(kwargs), "options": dict(options)}
