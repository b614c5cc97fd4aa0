"""The beat schedule built from the registries, and the beat's pure helpers."""

from __future__ import annotations

import pytest
from celery.schedules import crontab
from pydantic import ValidationError

from ops.cli import run
from scheduler import leader
from scheduler.schedule import (
    ENTRY_OPTIONS,
    FAMILY_MODULES,
    build_beat_schedule,
    check_entry,
)
from workers.errors import ConfigurationError
from workers.registries import BEAT_FAMILIES, BeatEntrySpec
from workers.settings import Settings
from workers.task import ADMISSION_OPTIONS


def test_the_default_schedule_has_every_family_at_its_interval() -> None:
    """Given the default registries, the schedule holds partitions daily, the view every
    5 min, the events buffer every 5 s and the demo warmer every 4 min, each on its queue.
    """
    table = build_beat_schedule(Settings())
    expected = {
        "partitions.ensure": ("partitions.ensure", 86400.0, "maintenance"),
        "views.refresh:mv_daily_stats": ("views.refresh", 300.0, "maintenance"),
        "buffers.flush:events": ("buffers.flush", 5.0, "buffers"),
        "cache.warm:daily_stats": ("cache.warm", 240.0, "cache"),
    }
    for name, (task, seconds, queue) in expected.items():
        entry = table[name]
        assert (entry["task"], float(entry["schedule"]), entry["options"]["queue"]) == (
            task,
            seconds,
            queue,
        )
    assert all(set(entry["options"]) <= ENTRY_OPTIONS for entry in table.values())
    assert set(FAMILY_MODULES) == set(BEAT_FAMILIES)


def test_extra_entries_run_every_n_seconds_or_on_a_crontab() -> None:
    """JOBS_BEAT_SCHEDULE entries become seconds or a UTC crontab; families can be left out."""
    settings = Settings(
        beat_families=(),
        beat_schedule={
            "often": BeatEntrySpec(task="t.a", every=2, kwargs={"x": 1}),
            "nightly": BeatEntrySpec(task="t.b", cron="30 2 * * *", options={"queue": "cache"}),
        },
    )
    table = build_beat_schedule(settings)
    assert table["often"] == {"task": "t.a", "schedule": 2.0, "kwargs": {"x": 1}, "options": {}}
    nightly = table["nightly"]["schedule"]
    assert isinstance(nightly, crontab)
    assert (nightly.minute, nightly.hour) == ({30}, {2})


def test_a_name_scheduled_twice_is_refused() -> None:
    """An extra entry may not reuse a family entry's name."""
    settings = Settings(
        beat_families=("cache",),
        beat_schedule={"cache.warm:daily_stats": BeatEntrySpec(task="t", every=1)},
    )
    with pytest.raises(ConfigurationError, match="already scheduled"):
        build_beat_schedule(settings)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"task": "t", "schedule": 1, "args": [1]}, "unknown keys"),
        ({"task": "t", "schedule": 0}, "schedule must be"),
        ({"task": "t", "schedule": "5"}, "schedule must be"),
        ({"task": "", "schedule": 1}, "'task'"),
        ({"task": "t", "schedule": 1, "options": {"countdown": 5}}, "countdown"),
        ({"task": "t", "schedule": 1, "options": {"key": "k"}}, "'key'"),
        ({"task": "t", "schedule": 1, "options": {"on_full": "wait"}}, "on_full"),
    ],
)
def test_invalid_entries_are_refused_naming_the_entry(
    entry: dict[str, object], message: str
) -> None:
    """Positional args, non-positive or textual schedules, and options admission would not
    take for a periodic job (the tick's key is the scheduler's) are configuration errors.
    """
    with pytest.raises(ConfigurationError, match="'e1'") as caught:
        check_entry("e1", entry)
    assert message in str(caught.value)


def test_beat_entry_options_are_admission_options() -> None:
    """Every option an entry may set is one admission accepts; ``key`` is not among them."""
    assert ENTRY_OPTIONS <= ADMISSION_OPTIONS
    assert "key" not in ENTRY_OPTIONS


def test_beat_settings_are_validated() -> None:
    """An entry needs exactly one of every/cron (five fields); a standby polls within the
    lease.
    """
    with pytest.raises(ValidationError, match="exactly one"):
        BeatEntrySpec(task="t", every=1, cron="* * * * *")
    with pytest.raises(ValidationError, match="exactly one"):
        BeatEntrySpec(task="t")
    with pytest.raises(ValidationError, match="five fields"):
        BeatEntrySpec(task="t", cron="* * * *")
    with pytest.raises(ValidationError, match="beat_standby_poll"):
        Settings(beat_lease=2, beat_standby_poll=2)
    with pytest.raises(ValidationError, match="beat_families"):
        Settings(beat_families=("nope",))


def test_a_cron_the_crontab_parser_refuses_is_a_configuration_error() -> None:
    """Five fields that do not parse (minute 99) fail when the schedule is built."""
    settings = Settings(
        beat_families=(), beat_schedule={"x": BeatEntrySpec(task="t", cron="99 * * * *")}
    )
    with pytest.raises(ConfigurationError, match=r"'x'.*cron"):
        build_beat_schedule(settings)


def test_tick_keys_name_the_entry_and_the_run_they_follow() -> None:
    """The tick after a last run has one key whoever fires it; the first run is ``first``."""
    assert (
        leader.tick_key("views.refresh:mv", "1767225600.5") == "beat:views.refresh:mv:1767225600.5"
    )
    assert leader.tick_key("e", None) == "beat:e:first"


def test_leader_identity_carries_the_process_id() -> None:
    """``<host>:<pid>:<random>`` identities give the leader's pid for operators."""
    info = leader.LeaderInfo(identity="web-1:4242:ab12cd34", fence=7, expires_in=3.0)
    assert info.pid == 4242
    assert leader.LeaderInfo(identity="custom", fence=1, expires_in=1).pid is None
    assert leader.default_identity().split(":")[1].isdigit()


def test_jobctl_beat_runs_celery_beat_with_the_leader_scheduler() -> None:
    """``jobctl beat`` execs ``celery beat`` with our app and the leader scheduler."""
    argv = run.beat_argv(loglevel="INFO", extra=["--pidfile="])
    assert argv[argv.index("--scheduler") + 1] == leader.SCHEDULER_PATH == run.BEAT_SCHEDULER
    assert argv[-1] == "--pidfile="
    assert argv[argv.index("-A") + 1] == "workers.app"


def test_the_default_schedule_loads_into_the_leader_scheduler() -> None:
    """Given the default registries, the leader scheduler loads every entry: each names a
    registered job whose kwargs bind and whose queue exists (checked at start, not at the
    first tick). Loading takes no lease and touches no Redis.
    """
    from workers.app import app  # noqa: PLC0415

    beat = leader.LeaderScheduler(app, settings=Settings(), identity="h:1:x")
    assert set(beat.data) == set(build_beat_schedule(Settings()))
    assert beat.leadership.held is None
    assert beat.max_interval == Settings().beat_lease / 3
