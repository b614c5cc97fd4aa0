"""A real HTTP receiver on 127.0.0.1 for webhook tests: scripted answers, recorded requests.

Each path answers from its script (a list consumed in order, then its default): succeed, fail
with any status, hang, answer slowly, 429 with Retry-After, 410, or redirect.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


@dataclass(frozen=True, slots=True)
class Answer:
    """One scripted answer: status, headers, body, and a delay before answering."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0


OK = Answer()


def hang(seconds: float = 30.0) -> Answer:
    """An answer that arrives only after ``seconds`` (longer than any test timeout)."""
    return Answer(delay=seconds)


@dataclass(frozen=True, slots=True)
class Received:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int


class Receiver:
    """``with Receiver() as r: r.url("/hook")``; ``r.script("/hook", [Answer(503)] * 3)``."""

    def __init__(self) -> None:
        """Bind a free port on 127.0.0.1 (started by ``__enter__``)."""
        self.requests: list[Received] = []
        self.accepts = 0
        self._scripts: dict[str, list[Answer]] = defaultdict(list)
        self._defaults: dict[str, Answer] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                answer = receiver._next(self.path)
                if answer.delay:
                    time.sleep(answer.delay)
                receiver._record(self.path, dict(self.headers.items()), body, answer.status)
                try:
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                except OSError:
                    pass  # the sender gave up (timeout): nothing to answer

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                """Quiet."""

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> Any:
                request = super().get_request()
                with receiver._lock:
                    receiver.accepts += 1
                return request

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        """Start serving."""
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()

    def url(self, path: str = "/hook") -> str:
        """The URL of ``path`` on this receiver."""
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, answers: list[Answer], default: Answer = OK) -> None:
        """Answer ``path`` with ``answers`` in order, then with ``default``."""
        with self._lock:
            self._scripts[path] = list(answers)
            self._defaults[path] = default

    def always(self, path: str, answer: Answer) -> None:
        """Answer ``path`` with ``answer`` from now on."""
        self.script(path, [], default=answer)

    def received(self, path: str | None = None, status: int | None = None) -> list[Received]:
        """Requests so far (to ``path`` / answered with ``status`` when given)."""
        with self._lock:
            return [
                r
                for r in self.requests
                if (path is None or r.path == path) and (status is None or r.status == status)
            ]

    def _next(self, path: str) -> Answer:
        with self._lock:
            script = self._scripts.get(path)
            if script:
                return script.pop(0)
            return self._defaults.get(path, OK)

    def _record(self, path: str, headers: dict[str, str], body: bytes, status: int) -> None:
        lowered = {name.lower(): value for name, value in headers.items()}
        with self._lock:
            self.requests.append(Received(path, lowered, body, time.time(), status))
