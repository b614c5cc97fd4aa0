"""HTTP mapping for web producers: ``QueueFull`` → ``503 Service Unavailable`` + ``Retry-After``.

Load shedding only works end to end when the web tier passes it on: a request whose job was
refused should tell its client to come back later rather than fail with a 500 or block a
server thread. Framework-neutral; a WSGI middleware in a few lines::

    from jobs.http import queue_full_response
    from workers.errors import QueueFull

    def shed_load(app):
        def wrapped(environ, start_response):
            try:
                return app(environ, start_response)
            except QueueFull as exc:
                status, headers, body = queue_full_response(exc)
                start_response(f"{status} Service Unavailable", headers)
                return [body]
        return wrapped

ASGI (Starlette/FastAPI) is the same idea in an exception handler::

    @app.exception_handler(QueueFull)
    async def queue_full(request, exc):
        status, headers, body = queue_full_response(exc)
        return Response(body, status_code=status, headers=dict(headers))

(With a streaming WSGI app, catch ``QueueFull`` in the view instead, before the response starts.)
The body names no queue, depth or limit: those are internals, not the client's business.
"""

from __future__ import annotations

import json
import math

from workers.errors import QueueFull

#: The status a refused enqueue maps to.
STATUS = 503


def retry_after_header(exc: QueueFull) -> str:
    """``Retry-After`` in whole seconds (RFC 9110 delay-seconds), rounded up, at least 1."""
    return str(max(math.ceil(exc.retry_after), 1))


def queue_full_response(exc: QueueFull) -> tuple[int, list[tuple[str, str]], bytes]:
    """``(status, headers, body)`` for a refused enqueue: 503, ``Retry-After``, a JSON body.

    The headers are a WSGI-style list of ``(name, value)`` pairs; the body is
    ``{"error": "queue_full", "retry_after": <seconds>}`` (UTF-8 JSON).
    """
    seconds = retry_after_header(exc)
    body = json.dumps({"error": "queue_full", "retry_after": int(seconds)}).encode()
    headers = [
        ("Retry-After", seconds),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
    ]
    return STATUS, headers, body
