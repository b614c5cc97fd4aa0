"""Real worker processes for tests: ``celery -A workers.app worker`` as a subprocess."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ops.workerproc import WorkerProcess

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


class Worker(WorkerProcess):
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
        super().__init__(
            env={**env, **(extra_env or {})},
            log_path=log_dir / f"worker-{name}-{time.monotonic_ns()}.log",
            queues=queues,
            concurrency=concurrency,
            pool=pool,
            name=name,
            cwd=REPO,
        )

    def start(self, *, wait: bool = True) -> Worker:
        """Start the worker and (by default) wait until it consumes."""
        super().start()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Wait for the "ready." line; fail with the log if the worker exited instead."""
        assert self.process is not None
        wait_for(lambda: self.is_ready() or not self.alive(), 60, "worker ready")
        assert self.alive(), self.log()

    def log(self) -> str:
        """The worker's output so far (for assertion messages)."""
        return self.log_tail()

    def stop(self, timeout: float = 20) -> None:
        """Warm shutdown (SIGTERM), escalating to SIGKILL of the group."""
        super().stop(timeout)
