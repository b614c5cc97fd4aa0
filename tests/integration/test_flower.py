"""Flower started by ``jobctl flower`` as a real process: authentication, binding, task API.

The helpers here (:class:`FlowerProcess`, :class:`EventsWorker`) are shared with
``test_redaction.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import httpx
import pytest
from tornado.options import OptionParser

from ops.cli.run import FLOWER_CONFIG
from tests import tasks
from tests.support.worker import REPO, Worker, wait_for
from workers.settings import get_settings

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

USER, PASSWORD = "operator", "flower-test-pw"
#: A URL password a producer passed as a task argument: Flower must show it masked.
SENTINEL_PASSWORD = "SENTINELPW"  # noqa: S105 - a sentinel, not a credential
JOBCTL = (sys.executable, "-c", "from ops.cli import main; main()")


def free_port() -> int:
    """A TCP port nobody listens on right now (127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def jobctl(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``jobctl ARGS`` as a real process; returns its exit status and output."""
    return subprocess.run(
        [*JOBCTL, *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class FlowerProcess:
    """``jobctl flower --port P`` in its own session; its output goes to ``log_path``."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        """Configure with basic auth ``USER:PASSWORD``; call :meth:`start`."""
        self.env = {**env, "JOBS_FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"}
        self.log_path = log_path
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5)

    def start(self) -> Self:
        """Start Flower (``jobctl`` execs ``celery flower``: the pid is Flower's)."""
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [*JOBCTL, "flower", "--port", str(self.port)],
                env=self.env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until Flower answers HTTP (fail with its log if it exited instead)."""

        def answers() -> bool:
            assert self.process is not None
            assert self.process.poll() is None, f"flower exited: {self.log()}"
            try:
                return self.client.get("/healthcheck").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(answers, timeout, "flower answering", interval=0.2)

    def get(self, path: str, *, auth: tuple[str, str] | None = (USER, PASSWORD)) -> httpx.Response:
        """GET ``path`` (with the basic-auth credentials unless ``auth=None``)."""
        return self.client.get(path, auth=auth)

    def tasks(self) -> dict[str, Any]:
        """Flower's task API (``/api/tasks``): uuid -> task (from worker events)."""
        response = self.get("/api/tasks")
        response.raise_for_status()
        tasks: dict[str, Any] = response.json()
        return tasks

    def cmdline(self) -> str:
        """Flower's command line as every user sees it in ``ps``."""
        assert self.process is not None
        return Path(f"/proc/{self.process.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()

    def log(self) -> str:
        """Flower's output so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """SIGTERM (Flower exits 0), then SIGKILL of the session we created if needed."""
        self.client.close()
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)


class EventsWorker(Worker):
    """A test worker that sends task events (``-E``), as Flower needs to list tasks."""

    def command(self) -> list[str]:
        """The worker's command line plus ``-E``."""
        return [*super().command(), "-E"]


@contextlib.contextmanager
def running_flower(env: dict[str, str], log_path: Path) -> Iterator[FlowerProcess]:
    """A Flower with basic auth, answering HTTP; stopped on exit."""
    process = FlowerProcess(env, log_path).start()
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@contextlib.contextmanager
def events_workers(env: dict[str, str], log_dir: Path) -> Iterator[Callable[..., EventsWorker]]:
    """Factory of ``-E`` workers; every one started is stopped on exit."""
    started: list[EventsWorker] = []

    def start(**kwargs: Any) -> EventsWorker:
        worker = EventsWorker(env, log_dir, **kwargs)
        started.append(worker)
        worker.start()
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.stop(timeout=10)


@pytest.fixture
def flower(worker_env: dict[str, str], tmp_path: Path) -> Iterator[FlowerProcess]:
    """A running Flower with basic auth (stopped after the test)."""
    with running_flower(worker_env, tmp_path / "flower.log") as process:
        yield process


@pytest.fixture
def events_worker(
    worker_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., EventsWorker]]:
    """Factory of ``-E`` workers; every one started is stopped after the test."""
    with events_workers(worker_env, tmp_path) as start:
        yield start


def task_seen(flower: FlowerProcess, job_id: str) -> Callable[[], dict[str, Any] | None]:
    """Condition: Flower lists the task ``job_id`` (returns it)."""
    return lambda: flower.tasks().get(job_id)


def test_jobctl_flower_without_credentials_exits_2_and_says_how_to_set_them(
    worker_env: dict[str, str],
) -> None:
    """Given no JOBS_FLOWER_BASIC_AUTH (or an incomplete one), when `jobctl flower` runs, then
    it exits 2 before starting Flower and the message says how to set the credentials.
    """
    env = {k: v for k, v in worker_env.items() if k != "JOBS_FLOWER_BASIC_AUTH"}
    for auth in (None, "admin", "admin:"):
        done = jobctl(
            "flower", env=env if auth is None else {**env, "JOBS_FLOWER_BASIC_AUTH": auth}
        )
        assert done.returncode == 2, done
        assert "Flower never runs without authentication" in done.stderr
        assert 'export JOBS_FLOWER_BASIC_AUTH="admin:' in done.stderr


def test_jobctl_flower_refuses_secrets_and_overrides_on_its_command_line(
    worker_env: dict[str, str],
) -> None:
    """Given credentials, when options that carry secrets (visible in `ps`) or that would swap
    the configuration file are passed after ``--``, then it exits 2 naming each of them.
    """
    env = {**worker_env, "JOBS_FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"}
    done = jobctl(
        "flower", "--", "--basic-auth=x:y", "--cookie_secret=s", "--conf=mine.py", env=env
    )
    assert done.returncode == 2, done
    for name in ("--basic-auth", "--cookie_secret", "--conf"):
        assert name in done.stderr


def test_the_flower_config_file_hands_our_settings_to_flower(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given JOBS_FLOWER_BASIC_AUTH (two users) and JOBS_FLOWER_COOKIE_SECRET, when Flower
    executes ops/flowerconfig.py, then its options hold both; without a cookie secret each start
    gets its own random one; without credentials the file stops Flower with status 2.
    """

    def parse() -> OptionParser:
        parser = OptionParser()
        parser.define("basic_auth", type=str, default=None, multiple=True)
        parser.define("cookie_secret", type=str, default=None)
        get_settings.cache_clear()
        try:
            parser.parse_config_file(str(FLOWER_CONFIG), final=False)
        finally:
            get_settings.cache_clear()
        return parser

    monkeypatch.setenv("JOBS_FLOWER_BASIC_AUTH", "a:pw1,b:pw2")
    monkeypatch.setenv("JOBS_FLOWER_COOKIE_SECRET", "cookie-secret-from-settings")
    parsed = parse()
    assert parsed.basic_auth == ["a:pw1", "b:pw2"]
    assert parsed.cookie_secret == "cookie-secret-from-settings"  # noqa: S105

    monkeypatch.delenv("JOBS_FLOWER_COOKIE_SECRET")
    first, second = parse().cookie_secret, parse().cookie_secret
    assert len(first) >= 64
    assert first != second

    monkeypatch.delenv("JOBS_FLOWER_BASIC_AUTH")
    with pytest.raises(SystemExit) as stopped:
        parse()
    assert stopped.value.code == 2


def test_flower_requires_credentials_binds_loopback_and_lists_tasks_with_redacted_arguments(
    clean: Any, flower: FlowerProcess, events_worker: Callable[..., EventsWorker]
) -> None:
    """Given `jobctl flower` and a worker sending events, then: the API answers 401 without or
    with wrong credentials and 200 with them; /healthcheck and /metrics answer without (Flower's
    known behaviour, documented); no secret is on Flower's command line and it listens on
    127.0.0.1; and a job run shows up in /api/tasks with its URL password masked.
    """
    assert flower.get("/api/tasks", auth=None).status_code == 401
    assert flower.get("/api/tasks", auth=(USER, "wrong")).status_code == 401
    assert flower.get("/", auth=None).status_code == 401
    assert flower.get("/api/tasks").status_code == 200
    assert flower.get("/healthcheck", auth=None).status_code == 200
    assert flower.get("/metrics", auth=None).status_code == 200

    cmdline = flower.cmdline()
    assert PASSWORD not in cmdline
    assert "--address=127.0.0.1" in cmdline
    assert "JOBS_FLOWER_COOKIE_SECRET is not set" in flower.log()

    events_worker(name="flower")
    url = f"redis://app:{SENTINEL_PASSWORD}@cache.internal:6379/0"
    ref = tasks.fail_permanently.apply_async(kwargs={"name": url})
    task = wait_for(task_seen(flower, ref.id), 30, "the task in Flower's API", interval=0.3)
    assert task["name"] == "tests.fail_permanently"
    assert "redis://app:***@cache.internal:6379/0" in task["kwargs"]
    wait_for(lambda: flower.tasks()[ref.id]["state"] == "SUCCESS", 30, "task finished")
    shown = json.dumps(flower.tasks())
    assert SENTINEL_PASSWORD not in shown
    assert "tests.fail_permanently" in flower.get("/metrics", auth=None).text
