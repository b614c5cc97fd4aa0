"""A ``celery worker`` subprocess in its own process group: start, watch its log, stop.

One launcher for every place that runs a real worker (``jobctl demo``, the test suite, the
benchmark). Only the process and the process group started here are ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from types import TracebackType

#: What Celery logs once the worker consumes (``celery@host ready.``).
READY_MARKER = b" ready."
#: Seconds to wait for the processes to be reaped after a SIGKILL.
KILL_WAIT = 10.0


@dataclass(slots=True)
class WorkerProcess:
    """``python -m celery -A <app> worker`` with its output in ``log_path``.

    It runs in a new session, so its main process id is also the id of the process group
    that holds its pool children: :meth:`kill_all` and :meth:`stop` signal that group only.
    """

    env: dict[str, str]
    log_path: Path
    app: str = "workers.app"
    queues: str = "default"
    concurrency: int = 2
    pool: str = "prefork"
    name: str = "worker"
    loglevel: str = "INFO"
    cwd: Path | None = None
    #: Extra options, e.g. a profile's (``ops.profiles``); the defaults keep tests quiet.
    options: tuple[str, ...] = ("--without-mingle", "--without-gossip")
    process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The command line (a node name unique to this process and moment)."""
        return [
            sys.executable, "-m", "celery", "-A", self.app, "worker",
            "-P", self.pool, "-c", str(self.concurrency), "-Q", self.queues,
            "-n", f"{self.name}-{os.getpid()}-{time.monotonic_ns()}@%h",
            *self.options, "--loglevel", self.loglevel,
        ]  # fmt: skip

    def start(self) -> Self:
        """Start the worker (output to ``log_path``, truncated); see :meth:`is_ready`."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our interpreter, fixed arguments
                self.command(),
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def __enter__(self) -> Self:
        """Start the worker."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the worker, whatever happened."""
        self.stop()

    @property
    def pid(self) -> int:
        """The main process id (also the process group id)."""
        if self.process is None:
            raise RuntimeError("worker not started")
        return self.process.pid

    def alive(self) -> bool:
        """Whether the main process has been started and still runs."""
        return self.process is not None and self.process.poll() is None

    def is_ready(self) -> bool:
        """Whether the worker has logged that it consumes (it may have exited since)."""
        try:
            return READY_MARKER in self.log_path.read_bytes()
        except FileNotFoundError:
            return False

    def log_tail(self, chars: int = 6000) -> str:
        """The last ``chars`` characters of the worker's output ("" before it starts)."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def kill_main(self) -> None:
        """SIGKILL only the main process (pool children notice and exit on their own)."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(KILL_WAIT)

    def kill_all(self) -> None:
        """SIGKILL the main process and its pool children (the process group we created)."""
        process = self.process
        if process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(KILL_WAIT)

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown (SIGTERM to the main process), then SIGKILL of the group's stragglers."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # a no-op if it has exited meanwhile
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
