"""Throwaway servers for fault tests: they may be stopped, frozen or killed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

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


def create_partitions(url: str) -> None:
    """Create the demo tables and their partitions in the throwaway PostgreSQL at ``url``."""
    from sqlalchemy import create_engine  # noqa: PLC0415 - after the test environment is set

    from jobs.partitions import ensure_all  # noqa: PLC0415

    engine = create_engine(url)
    try:
        ensure_all(engine)
    finally:
        engine.dispose()


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


# -- Redis and worker scenarios: a continuous producer, an fsync-always Redis -------------------

#: A producer loop: enqueue ``tests.record`` jobs named ``<prefix>-<n>`` every ``interval``
#: seconds until the stop file exists; one JSON line per call (start time, seconds, outcome).
PRODUCER_CODE = """
import json, os, sys, time
import jobs
from tests import tasks

prefix, interval, stop_file, out_file = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
sleep = float(sys.argv[5])
with open(out_file, "a", buffering=1) as out:
    n = 0
    while not os.path.exists(stop_file):
        n += 1
        name = f"{prefix}-{n}"
        started, t0 = time.time(), time.monotonic()
        try:
            jobs.enqueue(tasks.record, name=name, sleep=sleep)
            error = None
        except Exception as exc:  # noqa: BLE001 - every failure is recorded by type
            error = type(exc).__name__
        seconds = time.monotonic() - t0
        out.write(json.dumps({"name": name, "at": started, "seconds": seconds, "error": error}))
        out.write("\\n")
        time.sleep(max(interval - seconds, 0.0))
"""


@dataclass(frozen=True, slots=True)
class EnqueueCall:
    """One ``jobs.enqueue`` call of a :class:`Producer`."""

    name: str
    at: float  #: unix time the call started
    seconds: float  #: how long it took
    error: str | None  #: exception type name, or None when the job was accepted


@dataclass
class Producer:
    """A subprocess enqueueing ``tests.record`` jobs continuously (see ``PRODUCER_CODE``)."""

    env: dict[str, str]
    directory: Path
    prefix: str = "p"
    interval: float = 0.01
    job_sleep: float = 0.0
    process: subprocess.Popen[bytes] | None = None

    @property
    def out_file(self) -> Path:
        """The JSON-lines record of every call."""
        return self.directory / f"producer-{self.prefix}.jsonl"

    @property
    def stop_file(self) -> Path:
        """Created by :meth:`stop`: the loop ends after its current call."""
        return self.directory / f"producer-{self.prefix}.stop"

    def start(self) -> Producer:
        """Start the loop."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.err_file.open("wb") as err:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    PRODUCER_CODE,
                    self.prefix,
                    repr(self.interval),
                    str(self.stop_file),
                    str(self.out_file),
                    repr(self.job_sleep),
                ],
                cwd=Path(__file__).resolve().parents[2],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        return self

    @property
    def err_file(self) -> Path:
        """The loop's stderr (a traceback if it crashed)."""
        return self.directory / f"producer-{self.prefix}.err"

    def calls(self) -> list[EnqueueCall]:
        """Every completed call so far (a partly written last line is ignored)."""
        try:
            lines = self.out_file.read_text().splitlines()
        except FileNotFoundError:
            return []
        found = []
        for line in lines:
            try:
                found.append(EnqueueCall(**json.loads(line)))
            except (ValueError, TypeError):
                continue
        return found

    def stop(self, timeout: float = 10) -> list[EnqueueCall]:
        """Stop the loop (it finishes its current call) and return every call."""
        self.stop_file.touch()
        if self.process is not None:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
                message = f"producer {self.prefix} hung (no exit {timeout}s after stop)"
                raise AssertionError(message) from None
            assert self.process.returncode == 0, self.err_file.read_text()
        return self.calls()


@pytest.fixture
def producers(tmp_path: Path) -> Iterator[Callable[..., Producer]]:
    """Factory of :class:`Producer` loops; every one started is stopped after the test."""
    started: list[Producer] = []

    def start(env: dict[str, str], **kwargs: Any) -> Producer:
        producer = Producer(env, tmp_path / "producers", **kwargs).start()
        started.append(producer)
        return producer

    yield start
    for producer in started:
        producer.stop_file.touch()
        if producer.process is not None and producer.process.poll() is None:
            producer.process.kill()
            producer.process.wait(5)


class FsyncAlwaysRedis(RedisProcess):
    """A throwaway redis-server, AOF with ``appendfsync always``: accepted writes are on disk."""

    def start(self) -> FsyncAlwaysRedis:
        """Start (or restart from the AOF), then switch fsync to ``always`` before anyone writes."""
        super().start()
        client = redis.Redis.from_url(self.url, socket_timeout=5)
        try:
            client.config_set("appendfsync", "always")
            assert client.config_get("appendfsync") == {"appendfsync": "always"}
        finally:
            client.close()
        return self


@pytest.fixture
def fsync_always_redis(tmp_path: Path) -> Iterator[FsyncAlwaysRedis]:
    """A redis-server of our own (AOF, appendfsync always, noeviction) on a spare port."""
    server = FsyncAlwaysRedis(tmp_path / "redis-always").start()
    yield server
    server.stop()


def effect_hits(db: Any, prefix: str) -> dict[str, int]:
    """``name -> hits`` of the side effects whose name starts with ``prefix`` (hits > 1: the
    body reached the side effect again; the UNIQUE key kept one row).
    """
    rows = db.execute(
        "SELECT name, hits FROM test_effects WHERE name LIKE %s", (prefix + "%",)
    ).fetchall()
    return {str(name): int(hits) for name, hits in rows}


def run_counts(db: Any, prefix: str) -> dict[str, int]:
    """``name -> attempts logged`` in ``test_runs`` (the run log) for names starting with
    ``prefix``.
    """
    rows = db.execute(
        "SELECT name, count(*) FROM test_runs WHERE name LIKE %s GROUP BY name", (prefix + "%",)
    ).fetchall()
    return {str(name): int(count) for name, count in rows}


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


# -- FIGURE lines collected for docs/reliability.md ------------------------------------------

#: Environment variable naming a JSON-lines file: when set, every fault test appends one
#: record (test, outcome, duration, its FIGURE lines); ``python -m ops.reliability`` renders
#: docs/reliability.md from it. Output capture must be on (no ``-s``): figures come from it.
FIGURES_ENV = "JOBS_TEST_FIGURES"


def figure_record(item: pytest.Item, report: pytest.TestReport) -> dict[str, Any]:
    """One test's record: where it is, how it ended, the FIGURE lines it printed."""
    import os  # noqa: PLC0415
    import platform  # noqa: PLC0415
    from datetime import UTC, datetime  # noqa: PLC0415

    doc = getattr(getattr(item, "obj", None), "__doc__", None) or ""
    xfail = getattr(report, "wasxfail", None)  # set on an expected failure (a known defect)
    if report.when != "call":
        outcome = "error"
    elif xfail is not None and report.skipped:
        outcome = "xfailed"
    else:
        outcome = report.outcome
    return {
        "test": item.nodeid,
        "module": item.nodeid.split("::", 1)[0],
        "name": item.name,
        "doc": " ".join(doc.split()),
        "slow": item.get_closest_marker("slow") is not None,
        "outcome": outcome,
        "xfail_reason": xfail,
        "seconds": round(report.duration, 2),
        "figures": [
            line.removeprefix("FIGURE ").strip()
            for line in report.capstdout.splitlines()
            if line.startswith("FIGURE ")
        ],
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "system": f"{platform.system()} {platform.machine()}",
        },
    }


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Append the test's record to ``$JOBS_TEST_FIGURES`` (call phase, or a failed set-up)."""
    import os  # noqa: PLC0415

    report = yield
    path = os.environ.get(FIGURES_ENV)
    if path and (report.when == "call" or (report.when == "setup" and report.failed)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with Path(path).open("a", encoding="utf-8") as out:
            out.write(json.dumps(figure_record(item, report)) + "\n")
    return report
