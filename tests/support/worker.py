"""Real worker processes for tests: ``celery -A workers.app worker`` as a subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Worker:
    """One worker process group we started (and may SIGKILL, SIGTERM or restart)."""

    def __init__(
        self,
        env: dict[str, str],
        log_dir: Path,
        *,
        queues: str = "default",
        concurrency: int = 2,
        pool: str = "prefork",
        name: str = "w",
        extra_env: dict[str, str] | None = None,
    ) -> None:
        """Configure; call :meth:`start`."""
        self.env = {**env, **(extra_env or {})}
        self.log_path = log_dir / f"worker-{name}-{time.monotonic_ns()}.log"
        self.queues, self.concurrency, self.pool, self.name = queues, concurrency, pool, name
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True) -> Worker:
        """Start the worker and (by default) wait until it consumes."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "workers.app",
                    "worker",
                    "-P",
                    self.pool,
                    "-c",
                    str(self.concurrency),
                    "-Q",
                    self.queues,
                    "-n",
                    f"{self.name}-{os.getpid()}-{time.monotonic_ns()}@%h",
                    "--without-mingle",
                    "--without-gossip",
                    "--loglevel",
                    "INFO",
                ],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Wait for the "ready." line; fail with the log if the worker exited instead."""
        process = self.process
        assert process is not None
        wait_for(
            lambda: b" ready." in self.log_path.read_bytes() or process.poll() is not None,
            60,
            "worker ready",
        )
        assert process.poll() is None, self.log()

    def log(self) -> str:
        """The worker's output so far (for assertion messages)."""
        return self.log_path.read_text(errors="replace")[-6000:]

    @property
    def pid(self) -> int:
        """The worker's main process id."""
        assert self.process is not None
        return self.process.pid

    def kill_main(self) -> None:
        """SIGKILL only the main process (pool children notice and exit on their own)."""
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def kill_all(self) -> None:
        """SIGKILL the main process and its pool children (the process group we created)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 20) -> None:
        """Warm shutdown (SIGTERM), escalating to SIGKILL of the group."""
        if self.process is None or self.process.poll() is not None:
            self._reap_group()
            return
        os.kill(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)
        self._reap_group()

    def _reap_group(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
