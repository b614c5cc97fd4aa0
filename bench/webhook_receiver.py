"""A fast webhook receiver for ``bench/webhooks.py``: asyncio, raw HTTP/1.1 with keep-alive.

Usage::

    BENCH_WEBHOOK_SECRET=whsec_... python bench/webhook_receiver.py [--latency 0.05] [--port 0]
                                     [--host 127.0.0.1] [--port-file PATH]

It runs as its own process, so neither side of the benchmark shares a GIL with it. Every
``POST`` is answered ``200`` after ``--latency`` seconds (the delay does not block the loop:
thousands of requests wait concurrently). Before answering, the Standard Webhooks signature
(``v1,<base64 HMAC-SHA256 of id.timestamp.body>``) is checked against the secret: one HMAC
of a few hundred bytes, a few microseconds, so every request is verified rather than a sample.

Why 50 ms by default: a well-behaved webhook receiver acknowledges first and processes later
(the advice of Stripe, GitHub and Standard Webhooks: answer 2xx quickly, queue the work). Its
own time is then a few milliseconds (one insert or queue push), and what a sender sees is
dominated by the network round trips to a host elsewhere on the internet (TCP + TLS set-up is
amortised by keep-alive, each request still pays one RTT: 20-100 ms between regions). 50 ms is
the low end of that range; lower latencies make the sender's own per-delivery cost weigh more,
so 50 ms is the conservative (harder) choice for a ratio, and ``--latency 0`` shows the pure
per-delivery overhead ceiling.

Endpoints (all HTTP/1.1, keep-alive unless the client sends ``Connection: close``):

- ``POST <any path>``: verify, count, answer ``200 ok`` after the latency. A request whose
  signature does not verify is answered ``401`` (and counted as bad).
- ``GET /stats``: JSON ``{"requests", "bad_signatures", "duplicates", "connections"}``;
  a duplicate is the same ``(path, webhook-id)`` seen twice (exactly-once check).
- ``POST /reset``: zero the counters (between measurements); answered at once.

With ``--port 0`` the chosen port is printed as ``listening <port>`` on stdout (and written to
``--port-file`` when given), so the driver can read it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import sys
from collections import deque
from pathlib import Path

#: Receiver-side latency (seconds) before each 200: see the module docstring.
DEFAULT_LATENCY = 0.05
#: Largest request head or body accepted (a benchmark body is a few hundred bytes).
MAX_REQUEST = 1 << 20
#: Environment variable holding the secret (keeps it off the process list).
SECRET_ENV = "BENCH_WEBHOOK_SECRET"  # noqa: S105 - a variable name
#: Whole-request markers.
HEAD_END = b"\r\n\r\n"


class Stats:
    """Counters shared by every connection (one event loop thread: no locking)."""

    def __init__(self) -> None:
        """All zero."""
        self.requests = 0
        self.bad_signatures = 0
        self.duplicates = 0
        self.connections = 0
        self.seen: set[tuple[bytes, str]] = set()

    def reset(self) -> None:
        """Zero the counters and forget the ids seen (open connections stay counted)."""
        self.requests = self.bad_signatures = self.duplicates = 0
        self.seen.clear()

    def document(self) -> bytes:
        """The ``/stats`` body."""
        return json.dumps(
            {
                "requests": self.requests,
                "bad_signatures": self.bad_signatures,
                "duplicates": self.duplicates,
                "connections": self.connections,
            }
        ).encode()


def verifier(secret: str) -> hmac.HMAC:
    """An HMAC-SHA256 keyed with the ``whsec_`` secret (copied per request: no re-keying)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    return hmac.new(key, digestmod=hashlib.sha256)


def signature_ok(keyed: hmac.HMAC, headers: dict[str, str], body: bytes) -> bool:
    """One ``v1`` signature of the request matches the secret (Standard Webhooks)."""
    message_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    mac = keyed.copy()
    mac.update(f"{message_id}.{timestamp}.".encode())
    mac.update(body)
    expected = "v1," + base64.b64encode(mac.digest()).decode("ascii")
    return any(
        hmac.compare_digest(expected, candidate)
        for candidate in headers.get("webhook-signature", "").split()
    )


def response(status: int, body: bytes, *, close: bool = False) -> bytes:
    """A complete HTTP/1.1 response."""
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}[status]
    connection = b"close" if close else b"keep-alive"
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
        b"connection: %s\r\n\r\n%s"
    ) % (status, reason.encode(), len(body), connection, body)


class Connection(asyncio.Protocol):
    """One keep-alive connection: parse requests, answer each after the latency, in order."""

    def __init__(self, stats: Stats, keyed: hmac.HMAC, latency: float) -> None:
        """Bind the shared counters, the keyed HMAC and the latency."""
        self.stats = stats
        self.keyed = keyed
        self.latency = latency
        self.buffer = bytearray()
        # Responses in request order; None until its latency has passed (pipelining-safe).
        self.pending: deque[list[bytes | bool | None]] = deque()
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Count the connection."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.stats.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 - asyncio's signature
        """Forget the connection."""
        self.stats.connections -= 1
        self.transport = None

    def data_received(self, data: bytes) -> None:
        """Parse every complete request in the buffer."""
        self.buffer += data
        while True:
            end = self.buffer.find(HEAD_END)
            if end < 0:
                if len(self.buffer) > MAX_REQUEST:
                    self.fail()
                return
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            headers: dict[str, str] = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                self.fail()
                return
            if length > MAX_REQUEST:
                self.fail()
                return
            start = end + len(HEAD_END)
            if len(self.buffer) < start + length:
                return
            body = bytes(self.buffer[start : start + length])
            del self.buffer[: start + length]
            self.handle(head[0], headers, body)

    def handle(self, request_line: str, headers: dict[str, str], body: bytes) -> None:
        """Answer one request (POST hooks after the latency; stats and reset at once)."""
        method, _, rest = request_line.partition(" ")
        path = rest.rpartition(" ")[0]
        close = headers.get("connection", "").lower() == "close"
        stats = self.stats
        if method == "GET" and path == "/stats":
            self.reply(response(200, stats.document(), close=close), 0.0, close=close)
        elif method == "POST" and path == "/reset":
            stats.reset()
            self.reply(response(200, b"reset", close=close), 0.0, close=close)
        elif method == "POST":
            stats.requests += 1
            if not signature_ok(self.keyed, headers, body):
                stats.bad_signatures += 1
                self.reply(response(401, b"bad signature", close=close), self.latency, close=close)
                return
            seen = (path.encode(), headers.get("webhook-id", ""))
            if seen in stats.seen:
                stats.duplicates += 1
            else:
                stats.seen.add(seen)
            self.reply(response(200, b"ok", close=close), self.latency, close=close)
        else:
            self.reply(response(404, b"not found", close=True), 0.0, close=True)

    def reply(self, data: bytes, delay: float, *, close: bool) -> None:
        """Queue ``data``; it is written once its delay has passed and earlier ones are out."""
        slot: list[bytes | bool | None] = [None, close]
        self.pending.append(slot)
        if delay <= 0:
            slot[0] = data
            self.flush()
        else:
            self.loop.call_later(delay, self.ready, slot, data)

    def ready(self, slot: list[bytes | bool | None], data: bytes) -> None:
        """A delayed response is due."""
        slot[0] = data
        self.flush()

    def flush(self) -> None:
        """Write the responses that are due, in request order."""
        while self.pending and self.pending[0][0] is not None:
            data, close = self.pending.popleft()
            if self.transport is None:
                self.pending.clear()
                return
            assert isinstance(data, bytes)
            self.transport.write(data)
            if close:
                self.transport.close()
                self.pending.clear()
                return

    def fail(self) -> None:
        """A malformed request: answer 400 and close."""
        if self.transport is not None:
            self.transport.write(response(400, b"bad request", close=True))
            self.transport.close()


async def serve(host: str, port: int, secret: str, latency: float, port_file: Path | None) -> None:
    """Listen until SIGTERM / SIGINT."""
    loop = asyncio.get_running_loop()
    stats = Stats()
    keyed = verifier(secret)
    server = await loop.create_server(
        lambda: Connection(stats, keyed, latency), host, port, backlog=1024, reuse_address=True
    )
    bound = server.sockets[0].getsockname()[1]
    if port_file is not None:
        port_file.write_text(f"{bound}\n")  # noqa: ASYNC240 - once, before serving
    print(f"listening {bound}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument(
        "--secret",
        default=os.environ.get(SECRET_ENV),
        help=f"whsec_ secret every request is signed with (default: ${SECRET_ENV})",
    )
    parser.add_argument(
        "--latency", type=float, default=DEFAULT_LATENCY, help="seconds before each 200"
    )
    parser.add_argument("--port-file", type=Path, help="also write the bound port here")
    args = parser.parse_args(argv)
    if not args.secret:
        parser.error(f"--secret or ${SECRET_ENV} is required")
    if args.latency < 0:
        parser.error("--latency must be >= 0")
    verifier(args.secret)  # fail early on a malformed secret
    asyncio.run(serve(args.host, args.port, args.secret, args.latency, args.port_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
