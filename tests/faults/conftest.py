"""Throwaway servers for fault tests: they may be stopped, frozen or killed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ops.services import PostgresProcess, RedisProcess


@pytest.fixture
def throwaway_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server of our own (AOF, noeviction) on a spare port."""
    server = RedisProcess(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def throwaway_postgres(tmp_path: Path) -> Iterator[tuple[PostgresProcess, str]]:
    """A PostgreSQL cluster of our own with a migrated database; yields (server, database URL)."""
    from workers.migrate import upgrade  # noqa: PLC0415

    server = PostgresProcess(tmp_path / "pg").start()
    url = server.create_database("faults")
    upgrade(url)
    yield server, url
    server.stop("immediate")


def run_python(code: str, env: dict[str, str], timeout: float = 60) -> Any:
    """Run ``code`` in a fresh interpreter with ``env``; returns the CompletedProcess."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
