"""The demo's webhook subscriber: a local HTTP server that verifies every request's signature.

A ``ThreadingHTTPServer`` on ``127.0.0.1`` (a free port) in a daemon thread. Each POST is
verified against the endpoint's secret — with the ``standardwebhooks`` package when it is
installed (the receiver side of the standard, independent of our signer), else with
:func:`jobs.webhooks.signing.verify` — and recorded. Answers: 401 for a bad signature (a 4xx:
the delivery is dead-lettered, so the demo fails visibly), 503 for the first request of each
event id in ``fail_first`` (a retryable answer: the delivery is retried on the schedule, same
``webhook-id``), 200 otherwise.

Import only after the environment points at the demo's services (``jobs.webhooks`` reads the
settings at import).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Self

from jobs.webhooks import signing

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

#: Signature tolerance (s) of the fallback verifier (the Standard Webhooks default).
TOLERANCE = 300


def _standard_verifier() -> Callable[[str, dict[str, str], bytes], bool] | None:
    """A verifier built on the ``standardwebhooks`` package (a dev extra), if installed."""
    try:
        from standardwebhooks import Webhook, WebhookVerificationError  # noqa: PLC0415
    except ImportError:
        return None

    def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
        try:
            Webhook(secret).verify(body, headers, json_parse=False)
        except WebhookVerificationError:
            return False
        return True

    return verify


def _own_verifier(secret: str, headers: dict[str, str], body: bytes) -> bool:
    return signing.verify(secret, headers, body, now=int(time.time()), tolerance=TOLERANCE)


_STANDARD = _standard_verifier()
#: How this receiver verifies signatures (printed by the demo).
VERIFIER = "the standardwebhooks package" if _STANDARD else "jobs.webhooks.signing.verify"


@dataclass(frozen=True, slots=True)
class Received:
    """One request: its ``webhook-id`` and ``webhook-attempt``, the check, the answer, when."""

    event_id: str
    attempt: int
    verified: bool
    status: int
    at: float


class DemoReceiver:
    """``with DemoReceiver(fail_first={"order-1-paid"}) as r: ...; r.trust(secret)``."""

    def __init__(self, *, fail_first: Collection[str] = ()) -> None:
        """Bind a free port on 127.0.0.1 (served from ``__enter__``)."""
        self._verify = _STANDARD or _own_verifier
        self._secret: str | None = None
        self._to_fail = set(fail_first)
        self._received: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the worker's pool reuses connections

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                status = receiver.answer(dict(self.headers.items()), body)
                reply = b"ok" if status == 200 else b"try again later"  # noqa: PLR2004
                with contextlib.suppress(OSError):  # the sender gave up: nothing to answer
                    self.send_response(status)
                    self.send_header("content-length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
                """Quiet: the demo prints what matters."""

        class Server(ThreadingHTTPServer):
            daemon_threads = True  # open keep-alive connections never block the shutdown

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="demo-receiver", daemon=True
        )

    @property
    def url(self) -> str:
        """Where the endpoint points."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hooks/orders"

    def trust(self, secret: str) -> None:
        """Verify requests with ``secret`` (the one ``add_endpoint`` returned)."""
        with self._lock:
            self._secret = secret

    def answer(self, headers: dict[str, str], body: bytes) -> int:
        """Verify and record one request; the status to answer with."""
        lowered = {name.lower(): value for name, value in headers.items()}
        event_id = lowered.get("webhook-id", "")
        with self._lock:
            secret = self._secret
        verified = secret is not None and self._verify(secret, lowered, body)
        with self._lock:
            if not verified:
                status = 401
            elif event_id in self._to_fail:
                self._to_fail.discard(event_id)
                status = 503
            else:
                status = 200
            attempt = lowered.get(signing.ATTEMPT_HEADER, "0")
            self._received.append(
                Received(
                    event_id,
                    int(attempt) if attempt.isdigit() else 0,
                    verified,
                    status,
                    time.monotonic(),
                )
            )
        return status

    def received(self) -> list[Received]:
        """The requests so far, in arrival order."""
        with self._lock:
            return list(self._received)

    def __enter__(self) -> Self:
        """Start serving."""
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
