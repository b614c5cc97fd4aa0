"""The lease fence: a body still running when its time is up is interrupted (real signals)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from workers.fence import LeaseExpired, can_fence, lease_fence


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
