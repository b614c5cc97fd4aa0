"""One run through an envelope: batched claims, pipelined completions, a current-job marker.

A job in a single-job message costs two Redis round trips of its own (claim, complete). In an
envelope that would cap a worker at a few thousand jobs a second on a small machine (Redis
itself spends ~45 µs per script call), so an envelope run does its bookkeeping in bulk:

- **claims** are taken for up to :data:`CLAIM_BATCH` jobs at once (``envelope_claim.lua``:
  done → skip, claimed, or held elsewhere → that job is deferred alone, as a single job is). A
  new batch is claimed early whenever the next job could outlive the batch's lease, so a
  claim never expires under a running job and the lease fence keeps working per job;
- **the current-job marker** ``jobs:envelope:<envelope id>`` is set before each job and
  **completion markers** after each success, *without waiting for the reply*: the commands
  go out in one ``sendall`` with the next marker and their replies are read at the next
  claim. Once ``sendall`` returns the bytes are the kernel's: a SIGKILLed process's socket
  is still flushed to Redis, so a marker is as durable as with a synchronous call;
- on **redelivery** the run resumes at the marked job (jobs before it have a durable
  outcome) and counts a death of that job (``jobs:starts:<run>``); after ``worker_lost_max``
  deaths that job alone is dead-lettered ``worker_lost_exhausted``.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import structlog
from redis.exceptions import NoScriptError, ResponseError

from workers import keys, resources
from workers.owners import STARTS_RETENTION, owner_prefix
from workers.resources import as_text
from workers.scripts import source

if TYPE_CHECKING:
    import redis

    from workers.job import Job
    from workers.settings import Settings

log = structlog.get_logger("jobs.envelope")

#: Most jobs claimed in one round trip (and most completions pending at once).
CLAIM_BATCH = 64
#: How long a current-job marker outlives its last write (seconds).
MARKER_RETENTION = 7 * 86400

CLAIMED, DONE = 0, -1


def resp(*parts: bytes) -> bytes:
    """One command in the Redis protocol (cheaper than redis-py's packer for a hot path)."""
    out = [b"*%d\r\n" % len(parts)]
    out.extend(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)
    return b"".join(out)


class EnvelopeRun:
    """The Redis side of running one envelope delivery (one connection, pipelined writes)."""

    def __init__(self, envelope_id: str, jobs: list[Job], settings: Settings) -> None:
        """Nothing is sent until :meth:`open`."""
        self.jobs = jobs
        self.marker = keys.envelope(envelope_id)
        self._marker_bytes = self.marker.encode()
        self._done_retention = b"%d" % int(settings.done_retention)
        self._worker_lost_max = settings.worker_lost_max
        self._margin = settings.claim_lease_margin
        self._client: redis.Redis = resources.redis_client()
        self._conn: Any = None
        self._unread = 0  # replies of pipelined writes not read yet
        self._outbox: list[bytes] = []
        self._batch: dict[int, int] = {}  # job index -> claim state
        self._batch_token = ""
        self._batch_claims: list[str] = []
        self._batch_at = 0.0
        self._lease_s = 0.0
        self._resumed_at: int | None = None
        self.deaths = 0
        self.index = 0

    # -- lifecycle ----------------------------------------------------------------------------

    def open(self) -> int:
        """Take a connection; the index to start at (where an interrupted delivery was)."""
        self._conn = self._client.connection_pool.get_connection()
        value = self._call(resp(b"GET", self._marker_bytes))
        self._resumed_at = int(as_text(value)) if value is not None else None
        return self._resumed_at or 0

    def begin(self, index: int) -> None:
        """Job ``index`` starts: mark it current and send the pending completions with it."""
        self.index = index
        self._outbox.append(
            resp(b"SET", self._marker_bytes, b"%d" % index, b"EX", b"%d" % MARKER_RETENTION)
        )
        self._send()

    def completed(self, job: Job) -> None:
        """``job`` succeeded: its completion marker goes out with the next write."""
        done = keys.done(job.key).encode()
        self._outbox.append(resp(b"SET", done, b"1", b"EX", self._done_retention))

    def finish(self) -> None:
        """Every job has an outcome: write the last completions, drop claims and the marker."""
        self._outbox.append(resp(b"DEL", self._marker_bytes))
        self._flush()
        self.close()

    def abandon(self) -> None:
        """The delivery stops early (requeued): store the pending completions if Redis answers.

        Never raises: the caller is already on its way to requeueing the envelope.
        """
        try:
            if self._conn is not None:
                self._flush()  # a redelivery claims afresh
        except Exception as exc:
            log.warning("envelope_progress_not_stored", error=type(exc).__name__)
        finally:
            try:
                self.close(broken=True)
            except Exception as exc:
                log.warning("envelope_connection_not_released", error=type(exc).__name__)

    def close(self, *, broken: bool = False) -> None:
        """Give the connection back (dropped if replies may still be unread)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if broken or self._unread:
            conn.disconnect()
        self._client.connection_pool.release(conn)

    # -- claims -------------------------------------------------------------------------------

    def claim(self, lease_ms: int) -> tuple[int, float | None]:
        """The claim state of the current job and the seconds its lease leaves for its body.

        Returns ``(state, fence_after)``; ``state`` is :data:`CLAIMED`, :data:`DONE`, or the
        TTL (ms) of a claim held elsewhere. Raises nothing for deaths: see :attr:`deaths`.
        """
        index = self.index
        lease_s = lease_ms / 1000
        fits = time.monotonic() - self._batch_at + lease_s - self._margin / 2 <= self._lease_s
        if index not in self._batch or not fits:
            self._claim_batch(index, lease_ms)
        state = self._batch[index]
        fence_after = self._batch_at + self._lease_s - self._margin / 2 - time.monotonic()
        return state, fence_after if state == CLAIMED else None

    def release(self, job: Job) -> None:
        """Drop ``job``'s claim now (it failed: a retry or replay must be able to claim it)."""
        self._script("release", [keys.claim(job.key)], [self._batch_token, "exact"])

    def exhausted(self) -> bool:
        """Whether the current job died with its worker ``worker_lost_max`` times."""
        return self.index == self._resumed_at and self.deaths >= self._worker_lost_max

    def _claim_batch(self, start: int, lease_ms: int) -> None:
        jobs = self.jobs[start : start + CLAIM_BATCH]
        token = f"{owner_prefix()}{uuid.uuid4().hex[:12]}"
        starts_key = ""
        if self._resumed_at is not None and start == self._resumed_at and not self._batch:
            starts_key = keys.starts(self.jobs[start].run)
        args: list[str] = [
            token,
            str(lease_ms),
            starts_key,
            str(STARTS_RETENTION),
            self._batch_token,
            str(len(self._batch_claims)),
            *self._batch_claims,
        ]
        for job in jobs:
            args += [keys.done(job.key), keys.claim(job.key)]
        self._batch_at = time.monotonic()
        reply = self._script("envelope_claim", [self.marker], args)
        if starts_key:
            self.deaths = int(reply[0])
        self._batch = {start + offset: int(state) for offset, state in enumerate(reply[1:])}
        self._batch_token = token
        self._batch_claims = [keys.claim(job.key) for job in jobs]
        self._lease_s = lease_ms / 1000

    def _flush(self) -> None:
        """Write what is pending and drop this run's claims; read every reply.

        With claims left, the pending writes go out with their release (one round trip).
        """
        if self._batch_claims:
            self._script(
                "envelope_claim",
                [self.marker],
                ["", "0", "", "0", self._batch_token, str(len(self._batch_claims)),
                 *self._batch_claims],
            )  # fmt: skip
            self._batch_claims = []
        else:
            self._send()
            self._read_pending()

    # -- the wire ------------------------------------------------------------------------------

    def _send(self) -> None:
        if self._outbox:
            self._conn.send_packed_command([b"".join(self._outbox)], check_health=False)
            self._unread += len(self._outbox)
            self._outbox = []

    def _read_pending(self) -> None:
        """Read the replies of earlier writes; the first error reply among them is raised."""
        error: Exception | None = None
        while self._unread:
            try:
                self._conn.read_response()
            except ResponseError as exc:  # an error reply: keep reading to stay in sync
                error = error or exc
            self._unread -= 1
        if error is not None:
            raise error

    def _call(self, command: bytes) -> Any:
        """Send ``command`` after the pending writes; its reply (earlier errors first)."""
        self._outbox.append(command)
        self._send()
        self._unread -= 1  # its own reply is read last, below
        try:
            self._read_pending()
        except ResponseError:
            self._unread += 1  # still unread: the connection is dropped on close
            raise
        return self._conn.read_response()

    def _script(self, name: str, script_keys: list[str], args: list[str]) -> Any:
        scripts = resources.scripts()
        sha = getattr(scripts, name).sha
        parts = [str(len(script_keys)), *script_keys, *args]
        encoded = [part.encode() for part in parts]
        try:
            return self._call(resp(b"EVALSHA", sha.encode(), *encoded))
        except NoScriptError:
            return self._call(resp(b"EVAL", source(name).encode(), *encoded))


def current_index(envelope_id: str) -> int:
    """The index of the job a delivery of the envelope was at (0 when none was marked)."""
    value = resources.redis_client().get(keys.envelope(envelope_id))
    return int(as_text(value)) if value is not None else 0
