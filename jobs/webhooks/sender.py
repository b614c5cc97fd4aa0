"""The webhook HTTP client: one pooled, SSRF-guarded httpx client per worker process.

Every POST goes through ``check_url`` first (no connection for a refused URL), then through
``GuardedBackend`` at connect time (every resolved address checked, the connection made to
a checked address). No redirects are followed, no proxy or CA setting is read from the
environment, at most ``max_response_bytes`` of the answer are read, and the whole attempt
has one deadline.

The deadline (``timeout`` seconds, started when ``post`` begins sending, after the URL
check) is enforced on every blocking step: waiting for a pooled connection, the DNS lookup,
each TCP connect, the TLS handshake, each socket send and each socket receive is given at
most the time left, and the body loop also checks it between chunks. So ``post`` returns or
raises ``httpx.TimeoutException`` no later than ``timeout`` seconds after it began sending,
plus the CPU time spent between two socket calls (parsing, copying; microseconds to
milliseconds, more under GIL contention). Within it, the lookup plus the TCP connects are
bounded by ``min(connect_timeout, timeout)``, and so is the TLS handshake.
"""

from __future__ import annotations

import contextvars
import os
import socket
import ssl
import threading
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import httpcore
import httpx

from jobs.webhooks.ssrf import AllowList, GuardedBackend, Resolver, check_url, system_resolver
from workers.errors import SsrfBlocked
from workers.settings import Settings, get_settings

#: Seconds an idle pooled connection is kept (httpx's default).
DEFAULT_KEEPALIVE_EXPIRY = 5.0
#: Request headers the client sets itself; a caller's values for them are dropped (framing
#: and routing must match what is actually sent, and the User-Agent is the setting's).
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "user-agent",
        "accept-encoding",
    }
)

#: The monotonic deadline of the attempt running in this thread (None outside ``post``).
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "webhook_deadline", default=None
)


@dataclass(frozen=True, slots=True)
class HttpResult:
    """A receiver's answer: status, headers (lower-case names), the capped body, seconds."""

    status: int
    headers: dict[str, str]
    #: At most ``max_response_bytes``, as sent (no content decoding).
    body: bytes
    elapsed: float


class Sender:
    """POSTs webhooks to public http(s) URLs only, with a total deadline per attempt.

    Thread-safe: one instance (one connection pool, keep-alive) serves every thread of a
    worker process. Build it once per process (``sender()``); ``close()`` releases the pool.
    """

    def __init__(
        self,
        *,
        allow: AllowList,
        timeout: float,
        connect_timeout: float,
        max_response_bytes: int,
        pool_size: int,
        user_agent: str,
        denied_ports: Collection[int],
        resolver: Resolver = system_resolver,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Configure the guard, the deadline and the pool.

        ``ssl_context`` defaults to certificate and host-name verification against certifi's
        CAs (a private CA can be passed for tests or internal receivers).
        """
        self.allow = allow
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self.user_agent = user_agent
        self.denied_ports = frozenset(denied_ports)
        backend = _DeadlineBackend(GuardedBackend(allow, resolver))
        context = ssl_context or httpx.create_ssl_context(trust_env=False)
        self._timeouts = httpx.Timeout(
            timeout, connect=min(connect_timeout, timeout), read=timeout, write=timeout
        )
        # At most pool_size requests in flight, so none ever queues inside httpcore's pool:
        # httpcore 1.0.9 can close a connection it already handed to a queued request, under
        # that request (encode/httpcore#1110; here ~1 in 500 posts with 12 threads on 4).
        self._slots = threading.BoundedSemaphore(pool_size)
        self._client = httpx.Client(
            transport=_GuardedTransport(backend, context, pool_size),
            trust_env=False,
            follow_redirects=False,
            timeout=self._timeouts,
        )

    @classmethod
    def from_settings(cls, settings: Settings, *, resolver: Resolver = system_resolver) -> Sender:
        """A sender configured by the ``JOBS_WEBHOOK_*`` settings."""
        return cls(
            allow=AllowList.parse(settings.webhook_allow_hosts),
            timeout=settings.webhook_timeout,
            connect_timeout=settings.webhook_connect_timeout,
            max_response_bytes=settings.webhook_max_response_bytes,
            pool_size=settings.webhook_pool_size,
            user_agent=settings.webhook_user_agent,
            denied_ports=settings.webhook_denied_ports,
            resolver=resolver,
        )

    def post(self, url: str, *, body: bytes, headers: Mapping[str, str]) -> HttpResult:
        """POST ``body`` to ``url`` and return the answer, whatever its status.

        Raises ``SsrfBlocked`` for a refused URL (before any connection) or a host resolving
        to a refused address (before connecting), ``httpx.TimeoutException`` when the
        attempt's deadline passes, and other ``httpx.TransportError``s when the connection
        fails. Redirects are returned as such (3xx), never followed. The body read is cut at
        ``max_response_bytes``; the rest is not read (the connection is closed instead).
        """
        target = check_url(url, self.allow, self.denied_ports)
        started = time.monotonic()
        if not self._slots.acquire(timeout=self.timeout):
            raise httpx.PoolTimeout("no free connection before the attempt's deadline")
        token = _deadline.set(started + self.timeout)
        try:
            request = self._client.build_request(
                "POST", target.url, content=body, headers=self._headers(headers)
            )
            response = self._client.send(request, stream=True)
            try:
                content = self._read_capped(response)
                return HttpResult(
                    status=response.status_code,
                    headers=dict(response.headers.items()),
                    body=content,
                    elapsed=time.monotonic() - started,
                )
            finally:
                response.close()
        except httpx.TransportError as exc:
            blocked = _blocked_cause(exc)
            if blocked is not None:
                raise blocked from None
            raise
        finally:
            _deadline.reset(token)
            self._slots.release()

    def close(self) -> None:
        """Close every pooled connection."""
        self._client.close()

    def __enter__(self) -> Self:
        """Use as a context manager that closes the pool on exit."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the pool."""
        self.close()

    def _headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        merged = {k: v for k, v in headers.items() if k.lower() not in RESERVED_HEADERS}
        merged["User-Agent"] = self.user_agent
        # Raw bytes only: a compressed answer could expand far beyond the cap in one chunk.
        merged["Accept-Encoding"] = "identity"
        return merged

    def _read_capped(self, response: httpx.Response) -> bytes:
        if self.max_response_bytes == 0:
            return b""
        deadline = _deadline.get()
        parts: list[bytes] = []
        size = 0
        for chunk in response.iter_raw():
            if deadline is not None and time.monotonic() > deadline:
                raise httpx.ReadTimeout("the attempt's deadline passed", request=response.request)
            parts.append(chunk[: self.max_response_bytes - size])
            size += len(parts[-1])
            if size >= self.max_response_bytes:
                break
        return b"".join(parts)


def _blocked_cause(exc: BaseException) -> SsrfBlocked | None:
    """The ``SsrfBlocked`` behind a transport error, if the guard caused it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, SsrfBlocked):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class _GuardedTransport(httpx.HTTPTransport):
    """httpx's transport over a connection pool that uses our network backend.

    httpx 0.28's ``HTTPTransport`` takes no network backend, so the pool it builds is
    replaced by one that does; request/response conversion and the mapping of httpcore
    errors to httpx errors stay httpx's (``SsrfBlocked`` is not an httpcore error, so it
    passes through unchanged).
    """

    def __init__(
        self, backend: httpcore.NetworkBackend, ssl_context: ssl.SSLContext, pool_size: int
    ) -> None:
        super().__init__(verify=ssl_context, trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=pool_size,
            max_keepalive_connections=pool_size,
            keepalive_expiry=DEFAULT_KEEPALIVE_EXPIRY,
            http1=True,
            http2=False,
            network_backend=backend,
        )


def _clamp(timeout: float | None, error: type[httpcore.TimeoutException]) -> float | None:
    """``timeout`` cut to the time left before the attempt's deadline; ``error`` if none."""
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the attempt's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineBackend(httpcore.NetworkBackend):
    """Gives connects, and every operation of the streams they return, the time left."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host,
            port,
            timeout=_clamp(timeout, httpcore.ConnectTimeout),
            local_address=local_address,
            socket_options=socket_options,
        )
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        return self._inner.connect_unix_socket(path, timeout, socket_options)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        sock = self._inner.get_extra_info("socket")
        if not isinstance(sock, socket.socket):
            self._inner.write(buffer, _clamp(timeout, httpcore.WriteTimeout))
            return
        # httpcore's own loop gives every send() the full timeout: a receiver reading
        # slowly could stretch one write far past the deadline. Each send here gets the
        # time left.
        view = memoryview(buffer)
        while view:
            try:
                sock.settimeout(_clamp(timeout, httpcore.WriteTimeout))
                sent = sock.send(view)
            except TimeoutError as exc:
                raise httpcore.WriteTimeout(str(exc) or "write timed out") from exc
            except OSError as exc:
                raise httpcore.WriteError(str(exc)) from exc
            view = view[sent:]

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.start_tls(
            ssl_context, server_hostname, _clamp(timeout, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(stream)

    def get_extra_info(self, info: str) -> object:
        return self._inner.get_extra_info(info)


_lock = threading.Lock()
_pid: int | None = None
_sender: Sender | None = None


def sender() -> Sender:
    """This process's sender, built from the settings on first use (after a fork: again).

    Thread-safe; the threads of a worker process share its connection pool.
    """
    global _pid, _sender
    with _lock:
        if _sender is None or _pid != os.getpid():
            # A forked child never closes its parent's pool: the sockets are the parent's.
            _sender, _pid = Sender.from_settings(get_settings()), os.getpid()
        return _sender
