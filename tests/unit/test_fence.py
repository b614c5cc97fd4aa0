"""The lease fence: a body still running when its time is up is interrupted (real signals)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from billiard.pool import SIG_SOFT_TIMEOUT, soft_timeout_sighandler
from celery.exceptions import SoftTimeLimitExceeded

from workers.fence import LeaseExpired, can_fence, lease_fence
from workers.job import Job, Outcome
from workers.policies import Execution
from workers.settings import get_settings
from workers.task import run_job


def fenced_body(seconds: float, fence: float, steps: list[str]) -> None:
    """A body that sleeps ``seconds`` under a fence of ``fence`` and notes what it reached."""
    with lease_fence(fence):
        try:
            time.sleep(seconds)
        except Exception:
            steps.append("swallowed")
        steps.append("side effect")


def test_a_body_past_its_fence_is_interrupted_even_inside_a_sleep() -> None:
    """SIGALRM interrupts time.sleep; the body does not reach its side effect, and a broad
    ``except Exception`` in it cannot swallow the fence (LeaseExpired is a BaseException).
    """
    steps: list[str] = []
    started = time.monotonic()
    with pytest.raises(LeaseExpired):
        fenced_body(5, 0.1, steps)
    assert steps == []
    assert time.monotonic() - started < 2


def test_a_stopped_process_resumes_straight_into_the_fence() -> None:
    """Wall time passes while a process is stopped: the fence is due on SIGCONT.

    A child is stopped past its fence; on SIGCONT it exits with the fence's code at once,
    never the code of a body that finished.
    """
    pid = os.fork()
    if pid == 0:  # the child: a body that would take 0.6 s of its own time
        code = 3
        try:
            with lease_fence(0.3):
                time.sleep(0.6)
            code = 4
        except LeaseExpired:
            code = 5
        os._exit(code)
    time.sleep(0.05)
    os.kill(pid, signal.SIGSTOP)
    time.sleep(0.8)
    os.kill(pid, signal.SIGCONT)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 5


def test_a_body_that_ends_in_time_leaves_no_alarm_behind() -> None:
    """The timer is disarmed and the previous SIGALRM handler restored."""
    previous = signal.getsignal(signal.SIGALRM)
    with lease_fence(0.2):
        pass
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is previous


def test_no_fence_outside_the_main_thread() -> None:
    """A thread pool cannot fence (SIGALRM goes to the main thread): the block just runs."""
    seen: list[bool] = []

    def run() -> None:
        seen.append(can_fence())
        with lease_fence(0.01):
            time.sleep(0.05)
        seen.append(True)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [False, True]


class Recorder:
    """A policy that notes how the job settled; its done mark can be hit by the soft limit."""

    options: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, *, soft_limit_while_settling: bool = False) -> None:
        """``soft_limit_while_settling``: the soft-limit signal arrives during the done mark."""
        self.soft_limit_while_settling = soft_limit_while_settling
        self.steps: list[str] = []

    def before(self, job: Job, execution: Execution) -> None:
        """Nothing to claim."""

    def after_success(self, job: Job, execution: Execution) -> None:  # noqa: ARG002
        """The done mark, as the parent's soft timer fires (a blocked signal stays pending)."""
        if self.soft_limit_while_settling:
            os.kill(os.getpid(), SIG_SOFT_TIMEOUT)
            time.sleep(0.05)
        self.steps.append("done mark")

    def after_failure(self, job: Job, execution: Execution, exc: BaseException) -> None:  # noqa: ARG002
        """The retry of a failed body."""
        self.steps.append(f"failed: {type(exc).__name__}")


@pytest.fixture
def billiard_soft_limit() -> Iterator[None]:
    """The soft-limit handler billiard installs in a pool child."""
    previous = signal.signal(SIG_SOFT_TIMEOUT, soft_timeout_sighandler)
    yield
    signal.signal(SIG_SOFT_TIMEOUT, previous)


def run_recorded(recorder: Recorder, body: Any) -> Outcome:
    """Run ``body`` as a job with ``recorder`` as its only policy."""
    job = Job(id="j1", task="tests.soft", key="k1", queue="default", args=(), kwargs={})
    execution = Execution(app=None, settings=get_settings(), options={}, time_limit=10.0)  # type: ignore[arg-type]
    return run_job((recorder,), job, execution, body)


@pytest.mark.usefixtures("billiard_soft_limit")
def test_a_soft_limit_arriving_after_the_body_returned_does_not_fail_the_job() -> None:
    """Given a body that returned, when Celery's soft time limit signal arrives while its done
    mark is written (a worker frozen for most of its time limit), then the done mark completes,
    the job is DONE, and the late signal is dropped instead of surfacing afterwards.
    """
    recorder = Recorder(soft_limit_while_settling=True)
    assert run_recorded(recorder, lambda: None) is Outcome.DONE
    time.sleep(0.05)  # a signal left pending would be raised here
    assert recorder.steps == ["done mark"]


@pytest.mark.usefixtures("billiard_soft_limit")
def test_a_soft_limit_arriving_during_the_body_still_stops_it() -> None:
    """The soft limit is held only after the body: inside it, it raises as Celery's does and
    the job fails (here: no policy stores an outcome, so the message is not acknowledged).
    """
    recorder = Recorder()
    reached: list[str] = []

    def body() -> None:
        os.kill(os.getpid(), SIG_SOFT_TIMEOUT)
        time.sleep(0.5)
        reached.append("side effect")

    with pytest.raises(SoftTimeLimitExceeded):
        run_recorded(recorder, body)
    assert reached == []
    assert recorder.steps == ["failed: SoftTimeLimitExceeded"]
