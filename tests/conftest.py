"""Shared test set-up: real Redis and PostgreSQL (reused or embedded), one database per session.

Services: ``JOBS_TEST_REDIS_URL`` / ``JOBS_TEST_DATABASE_URL`` if set, else the standard
local ports, else embedded servers started here (``ops.services``). A missing service fails
the run; nothing is skipped. Redis uses its own DB number, flushed around every test.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ops.services import Services, ensure_services, libpq_url

_DATA = Path(tempfile.mkdtemp(prefix="jobs-tests-"))
_SERVICES: Services | None = None
#: Redis DB numbers test sessions may use; each session claims one (concurrent runs on one
#: shared Redis must not flush each other's queues).
TEST_REDIS_DBS = range(8, 16)
_LOCK_TTL = 3 * 3600
#: Task modules every test worker loads besides the catalogue.
TEST_TASK_MODULES = ["tests.tasks", "tests.tasks_flow_ratelimit", "tests.tasks_flow_breaker"]


def claim_redis_db(server_url: str) -> int:
    """Claim a free test DB number on the server (lock keys live in DB 0)."""
    import redis  # noqa: PLC0415

    client = redis.Redis.from_url(server_url.rsplit("/", 1)[0] + "/0")
    for number in TEST_REDIS_DBS:
        if client.set(f"jobs-tests:db:{number}", os.getpid(), nx=True, ex=_LOCK_TTL):
            return number
    raise RuntimeError(f"every test Redis DB {list(TEST_REDIS_DBS)} is claimed by another run")


def release_redis_db(server_url: str, number: int) -> None:
    """Give the DB number back."""
    import redis  # noqa: PLC0415

    redis.Redis.from_url(server_url.rsplit("/", 1)[0] + "/0").delete(f"jobs-tests:db:{number}")


TEST_TABLES = """
CREATE TABLE IF NOT EXISTS test_effects (
    key text PRIMARY KEY, name text NOT NULL, hits int NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS test_runs (
    id bigserial PRIMARY KEY, name text NOT NULL, attempt int NOT NULL, pid int NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp());
"""


def is_xdist_controller(config: pytest.Config) -> bool:
    """Whether this process only hands tests to pytest-xdist workers (``-n N``)."""
    distributing = bool(getattr(config.option, "numprocesses", None))
    return distributing and not hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    """Find or start services and point every JOBS_* setting at a fresh test database.

    Under pytest-xdist the controller finds or starts the services once and hands their URLs
    to the workers through the environment; each worker is a session of its own (its own
    database and Redis DB number), as concurrent test runs on one machine already are.
    """
    global _SERVICES  # noqa: PLW0603
    _SERVICES = ensure_services(
        _DATA,
        redis_url=os.environ.get("JOBS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        database_url=os.environ.get(
            "JOBS_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    if is_xdist_controller(config):
        os.environ["JOBS_TEST_REDIS_URL"] = _SERVICES.redis_url
        os.environ["JOBS_TEST_DATABASE_URL"] = _SERVICES.database_url
        return
    name = f"jobs_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(libpq_url(_SERVICES.database_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database_url = _SERVICES.database_url.rsplit("/", 1)[0] + f"/{name}"
    redis_db = claim_redis_db(_SERVICES.redis_url)
    config.stash[_REDIS_DB_KEY] = redis_db
    redis_url = _SERVICES.redis_url.rsplit("/", 1)[0] + f"/{redis_db}"
    os.environ.update(
        JOBS_REDIS_URL=redis_url,
        JOBS_DATABASE_URL=database_url,
        JOBS_EXTRA_TASK_MODULES=json.dumps(TEST_TASK_MODULES),
        JOBS_CONSUMER_DEAD_AFTER="3",
        JOBS_CLAIM_LEASE_MARGIN="1",
        JOBS_DEAD_LETTER_RETRY_DELAY="1",
        JOBS_LOG_LEVEL="INFO",
    )
    os.environ.pop("JOBS_BROKER_URL", None)
    # A conftest of a path given on the command line is imported before this hook runs; if it
    # imported code that read the settings, they were built without the lines above and would
    # point this process at the default Redis DB and database. Build them again.
    from workers.settings import get_settings  # noqa: PLC0415

    get_settings.cache_clear()
    from workers.migrate import upgrade  # noqa: PLC0415 - after the environment is set

    upgrade(database_url)
    from sqlalchemy import create_engine  # noqa: PLC0415

    from jobs.partitions import ensure_all  # noqa: PLC0415

    engine = create_engine(database_url)
    ensure_all(engine)  # the demo domain's partitions (as `jobctl migrate` does)
    engine.dispose()
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute(TEST_TABLES)
    config.stash[_DB_KEY] = (name, database_url)


_DB_KEY = pytest.StashKey[tuple[str, str]]()
_REDIS_DB_KEY = pytest.StashKey[int]()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Drop the session database and stop whatever we started."""
    name, _ = config.stash.get(_DB_KEY, ("", ""))
    if _SERVICES is not None:
        if _DB_KEY in config.stash:
            from workers import resources  # noqa: PLC0415

            resources.engine().dispose()  # close pooled connections (no ResourceWarning)
        if _REDIS_DB_KEY in config.stash:
            release_redis_db(_SERVICES.redis_url, config.stash[_REDIS_DB_KEY])
        if name:
            try:
                with psycopg.connect(libpq_url(_SERVICES.database_url), autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except psycopg.Error:
                pass
        _SERVICES.stop()
    shutil.rmtree(_DATA, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(pytestconfig: pytest.Config) -> str:
    """SQLAlchemy URL of this session's migrated database."""
    return pytestconfig.stash[_DB_KEY][1]


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test database; tables emptied before the test."""
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute(
            "TRUNCATE dead_letters, demo_payments, test_effects, test_runs RESTART IDENTITY"
        )
        yield conn


@pytest.fixture
def redis_client() -> Iterator[Any]:
    """The test Redis DB, flushed before and after the test."""
    from workers import resources  # noqa: PLC0415

    client = resources.redis_client()
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def clean(db: psycopg.Connection[Any], redis_client: Any) -> tuple[Any, Any]:
    """Empty tables and Redis DB."""
    return db, redis_client


@pytest.fixture
def worker_env() -> dict[str, str]:
    """Environment for worker subprocesses (same services, same database)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}


@pytest.fixture
def workers(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """Factory of worker processes; every one started is stopped after the test."""
    from tests.support.worker import Worker  # noqa: PLC0415

    started: list[Worker] = []

    def start(**kwargs: Any) -> Worker:
        wait = kwargs.pop("wait", True)
        worker = Worker(worker_env, tmp_path, **kwargs)
        started.append(worker)
        return worker.start(wait=wait)

    yield start
    # Cleanup, not a behaviour under test (the rolling-restart fault test checks warm
    # shutdowns): SIGKILL the groups at once instead of waiting ~3 s for each warm shutdown.
    # The test's Redis DB and tables are emptied before the next test anyway.
    for worker in started:
        worker.kill_all()


@pytest.fixture(params=["messages", "envelopes"])
def delivery(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test twice: every job in its own message, then every job inside an envelope.

    ``messages``: ``enqueue_many`` publishes one message per job (envelope size 1).
    ``envelopes``: ``enqueue_many`` packs envelopes (the configured size) and ``enqueue`` /
    ``apply_async`` send an envelope of one, so every job a test enqueues in this process runs
    through ``jobs.envelope``. Workers need no setting: they run whatever arrives.
    """
    from workers import admission  # noqa: PLC0415 - after the environment is set
    from workers.task import JobTask  # noqa: PLC0415

    if request.param == "messages":
        monkeypatch.setattr(JobTask, "envelope_size", lambda self: 1)  # noqa: ARG005
        return "messages"

    admit = admission._admit

    def admit_in_envelopes(*args: Any, batch: bool, envelope_size: int = 1) -> Any:
        task = args[0]
        if not batch:  # an envelope of one, even for a task that opts out
            envelope_size = max(task.envelope_size(), 2)
        return admit(*args, batch=batch, envelope_size=envelope_size)

    monkeypatch.setattr(admission, "_admit", admit_in_envelopes)
    return "envelopes"
