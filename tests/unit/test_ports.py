"""Spare ports for our own servers: reserved per process, outside the ephemeral range."""

from __future__ import annotations

import os
import subprocess
import sys

from ops import services
from ops.services import PORT_RESERVATIONS, SERVER_PORTS, free_port


def test_a_port_is_outside_the_ephemeral_range_and_reserved_by_this_process() -> None:
    """The port can be bound, is below 32768 and its reservation names our pid."""
    port = free_port()
    assert port in SERVER_PORTS
    assert (PORT_RESERVATIONS / str(port)).read_text() == str(os.getpid())


def test_a_port_reserved_by_a_live_process_is_never_handed_out_again() -> None:
    """Another process (a parallel test session) cannot take a port while its owner lives,
    even while nothing listens on it (a throwaway server stopped for a fault test).
    """
    ours = {free_port() for _ in range(20)}
    assert len(ours) == 20
    code = (
        "from ops.services import free_port\nprint(' '.join(str(free_port()) for _ in range(200)))"
    )
    theirs = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert ours.isdisjoint(int(port) for port in theirs)


def test_the_reservation_of_an_ended_process_is_taken_over() -> None:
    """A reservation left by a process that has exited does not leak the port forever."""
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(finished.stdout)
    port = max(SERVER_PORTS)
    PORT_RESERVATIONS.mkdir(parents=True, exist_ok=True)
    (PORT_RESERVATIONS / str(port)).write_text(str(dead_pid))
    assert services._reserve(port)
    assert (PORT_RESERVATIONS / str(port)).read_text() == str(os.getpid())
