"""``jobctl worker``'s command line: profiles and per-pool defaults (pure functions)."""

from __future__ import annotations

import pytest

from ops.cli.run import worker_argv
from ops.profiles import THREADS_PREFETCH_MULTIPLIER


def argv(pool: str, *, profile: str = "standard", extra: tuple[str, ...] = ()) -> list[str]:
    """The celery command line of ``jobctl worker -P pool --profile profile -- extra``."""
    return worker_argv(
        queues="webhooks",
        concurrency=8,
        pool=pool,
        loglevel="INFO",
        hostname=None,
        extra=list(extra),
        profile=profile,
    )


def prefetch(command: list[str]) -> list[str]:
    """Every ``--prefetch-multiplier`` value on ``command``."""
    return [command[i + 1] for i, arg in enumerate(command) if arg == "--prefetch-multiplier"]


def test_a_threads_worker_prefetches_two_messages_per_thread_by_default() -> None:
    """-P threads: the next message waits in the pool's queue when a thread frees up."""
    command = argv("threads")
    assert prefetch(command) == [str(THREADS_PREFETCH_MULTIPLIER)]
    assert command[command.index("-P") + 1] == "threads"
    assert "-E" in command  # the standard profile's task events are kept


def test_a_prefork_worker_keeps_celerys_prefetch_of_one_per_process() -> None:
    """Prefork children each hold one job: nothing is added."""
    assert prefetch(argv("prefork")) == []


@pytest.mark.parametrize(
    ("profile", "extra", "expected"),
    [
        ("throughput", (), ["4"]),
        ("standard", ("--prefetch-multiplier", "8"), ["8"]),
    ],
)
def test_a_prefetch_set_by_the_profile_or_the_command_line_wins(
    profile: str, extra: tuple[str, ...], expected: list[str]
) -> None:
    """The threads default never adds a second, conflicting ``--prefetch-multiplier``."""
    assert prefetch(argv("threads", profile=profile, extra=extra)) == expected


def test_an_unknown_profile_is_refused_with_the_known_ones() -> None:
    """A typo names the profiles there are instead of starting a worker."""
    with pytest.raises(ValueError, match=r"unknown worker profile 'fast'.*standard"):
        argv("prefork", profile="fast")
