"""Claims: owner tokens ``<host>:<pid>:<random>``, their per-process prefix, start counters."""

from __future__ import annotations

import os
import socket

HOSTNAME = socket.gethostname()


def owner_prefix(pid: int | None = None) -> str:
    """The claim-owner prefix of a process: ``<host>:<pid>:``."""
    return f"{HOSTNAME}:{pid or os.getpid()}:"


#: How long a per-run start counter (``jobs:starts:<run>``) is kept, seconds.
STARTS_RETENTION = 7 * 86400
