"""The webhook sender against real sockets on loopback: the guard, the caps, the deadline."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import httpx
import pytest

from jobs.webhooks import sender as sender_module
from jobs.webhooks.sender import HttpResult, Sender, sender
from jobs.webhooks.ssrf import AllowList, Resolver, system_resolver
from tests.support.worker import wait_for
from workers.errors import SsrfBlocked
from workers.settings import get_settings

#: Loopback allowed the way development set-ups do it.
LOOPBACK = AllowList.parse(["127.0.0.0/8", "::1", "localhost"])
#: Slack for scheduling and CPU between the deadline and the exception reaching the test.
MARGIN = 0.5

Behaviour = Callable[["Handler"], None]


class Handler(BaseHTTPRequestHandler):
    """Records every request, then lets the server's behaviour answer it."""

    protocol_version = "HTTP/1.1"
    server: CountingServer

    def do_POST(self) -> None:
        """Record the request and answer it."""
        self.server.record(self)
        self.server.behaviour(self)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        """Stay quiet."""


def no_content(handler: Handler) -> None:
    """Read the body, answer 204 and keep the connection open."""
    handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
    handler.send_response(204)
    handler.send_header("Content-Length", "0")
    handler.end_headers()


class CountingServer(ThreadingHTTPServer):
    """An HTTP server on loopback that counts accepted connections and requests."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, host: str = "127.0.0.1", behaviour: Behaviour = no_content) -> None:
        """Bind a free port on ``host`` (IPv4 or IPv6 loopback)."""
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, 0), Handler)
        self.behaviour = behaviour
        self.accepts = 0
        self.requests: list[dict[str, str]] = []
        self.peers: list[str] = []
        self.release = threading.Event()
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self.server_address[1])

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Count the accepted connection."""
        del request
        with self._lock:
            self.accepts += 1
            self.peers.append(str(client_address[0]))
        return True

    def record(self, handler: Handler) -> None:
        """Remember a request's headers (lower-case names) and path."""
        with self._lock:
            self.requests.append(
                {"_path": handler.path, **{k.lower(): v for k, v in handler.headers.items()}}
            )

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hang up on purpose in these tests: no traceback."""

    def __enter__(self) -> Self:
        """Serve on a thread."""
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}).start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Release hanging handlers, stop serving, close the socket."""
        self.release.set()
        self.shutdown()
        self.server_close()


@pytest.fixture
def server() -> Iterator[CountingServer]:
    """An HTTP server on 127.0.0.1 answering 204."""
    with CountingServer() as srv:
        yield srv


@pytest.fixture
def server6() -> Iterator[CountingServer]:
    """An HTTP server on ::1 answering 204 (skipped without IPv6 loopback)."""
    try:
        srv = CountingServer("::1")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    with srv:
        yield srv


@pytest.fixture
def make_sender() -> Iterator[Callable[..., Sender]]:
    """Factory of senders (short timeouts by default); every one is closed afterwards."""
    made: list[Sender] = []

    def make(**overrides: Any) -> Sender:
        options: dict[str, Any] = {
            "allow": AllowList(),
            "timeout": 2.0,
            "connect_timeout": 1.0,
            "max_response_bytes": 64 * 1024,
            "pool_size": 4,
            "user_agent": "jobs-tests/1.0",
            "denied_ports": get_settings().webhook_denied_ports,
            "resolver": system_resolver,
        }
        options.update(overrides)
        made.append(Sender(**options))
        return made[-1]

    yield make
    for item in made:
        item.close()


#: Spellings of the loopback address (IPv4 listener); {port} is the listener's port.
LOOPBACK_V4_URLS = [
    "http://127.0.0.1:{port}/",
    "http://2130706433:{port}/",
    "http://017700000001:{port}/",
    "http://0x7f.1:{port}/",
    "http://0x7f000001:{port}/",
    "http://127.1:{port}/",
    "http://[::ffff:127.0.0.1]:{port}/",
    "http://[::ffff:7f00:1]:{port}/",
    "http://localhost:{port}/",
]
#: More URLs of the internal table that would reach the IPv4 listener if let through.
INTERNAL_V4_URLS = [
    *LOOPBACK_V4_URLS,
    "http://0177.0.0.1:{port}/",
    # getaddrinfo resolves neither trailing-dot spelling here, even when allow-listed:
    "http://127.0.0.1.:{port}/",
    "http://LocalHost.:{port}/",
    "http://0.0.0.0:{port}/",
    "http://0:{port}/",
    "http://example.com@127.0.0.1:{port}/",
    "http://user:pw@127.0.0.1:{port}/",
    "http://[::127.0.0.1]:{port}/",
    "http://127.0.0.1:{port}\\@example.com/",
]
#: URLs of the internal table that would reach the IPv6 listener.
INTERNAL_V6_URLS = ["http://[::1]:{port}/", "http://[::]:{port}/", "http://[0:0::1]:{port}/"]


@pytest.mark.parametrize("template", INTERNAL_V4_URLS)
def test_internal_urls_never_reach_a_loopback_listener(
    template: str, server: CountingServer, make_sender: Callable[..., Sender]
) -> None:
    """Given a listener on 127.0.0.1 and a URL spelling a way to it,
    When the sender (no allow-list) posts to it,
    Then SsrfBlocked is raised and the listener accepted no connection.
    """
    with pytest.raises(SsrfBlocked) as caught:
        make_sender().post(template.format(port=server.port), body=b"{}", headers={})
    assert caught.value.reason == "ssrf_blocked"
    assert server.accepts == 0


@pytest.mark.parametrize("template", INTERNAL_V6_URLS)
def test_internal_ipv6_urls_never_reach_an_ipv6_loopback_listener(
    template: str, server6: CountingServer, make_sender: Callable[..., Sender]
) -> None:
    """Given a listener on ::1, When the sender posts to a URL spelling it,
    Then SsrfBlocked is raised and the listener accepted no connection.
    """
    with pytest.raises(SsrfBlocked):
        make_sender().post(template.format(port=server6.port), body=b"{}", headers={})
    assert server6.accepts == 0


@pytest.mark.parametrize("template", LOOPBACK_V4_URLS)
def test_with_the_allow_list_the_same_spellings_reach_the_listener(
    template: str, server: CountingServer, make_sender: Callable[..., Sender]
) -> None:
    """Given loopback allow-listed, When the sender posts to each loopback spelling,
    Then the listener answers: the refusals above are the guard's doing, not a dead port.
    """
    result = make_sender(allow=LOOPBACK).post(
        template.format(port=server.port), body=b"{}", headers={}
    )
    assert result.status == 204
    assert server.accepts == 1


def test_with_the_allow_list_the_ipv6_listener_is_reached(
    server6: CountingServer, make_sender: Callable[..., Sender]
) -> None:
    """Given ::1 allow-listed, When the sender posts to [::1], Then the listener answers."""
    result = make_sender(allow=LOOPBACK).post(
        f"http://[::1]:{server6.port}/", body=b"{}", headers={}
    )
    assert result.status == 204
    assert server6.accepts == 1


@pytest.mark.parametrize(
    "host", ["2130706433", "017700000001", "0x7f.1", "0x7f000001", "127.1", "0", "localhost"]
)
def test_httpx_url_parsing_cannot_bypass_the_connect_time_guard(
    host: str, server: CountingServer, make_sender: Callable[..., Sender]
) -> None:
    """Given the sender's own httpx client used directly (check_url skipped),
    When it posts to an odd spelling of loopback that httpx hands over unparsed,
    Then the backend resolves it, refuses it with SsrfBlocked, and nothing is accepted;
    with loopback allow-listed the same request does reach the listener.
    """
    url = f"http://{host}:{server.port}/"
    with pytest.raises(SsrfBlocked):
        make_sender()._client.post(url)
    assert server.accepts == 0
    if host == "0":
        return  # 0.0.0.0 is not in the allow-list; it reaches loopback only on Linux
    assert make_sender(allow=LOOPBACK)._client.post(url).status_code == 204
    assert server.accepts == 1


class StubResolver:
    """Answers from a script per host: a list of answers, the last one repeated."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        """``answers[host]`` is the sequence of answers the host gets."""
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        """Answer the next scripted answer for ``host`` (any port)."""
        del port
        self.calls.append(host)
        script = self.answers.get(host)
        if not script:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return script.pop(0) if len(script) > 1 else script[0]


def test_a_public_looking_name_resolving_to_loopback_is_refused_at_connect(
    server: CountingServer, make_sender: Callable[..., Sender]
) -> None:
    """Given hooks.example.com resolving to 127.0.0.1 (check_url cannot know),
    When the sender posts to it,
    Then SsrfBlocked itself surfaces (not an httpx.ConnectError) and nothing is accepted.
    """
    resolver = StubResolver({"hooks.example.com": [["127.0.0.1"]]})
    with pytest.raises(SsrfBlocked, match=r"hooks\.example\.com resolves to 127\.0\.0\.1"):
        make_sender(resolver=resolver).post(
            f"http://hooks.example.com:{server.port}/", body=b"{}", headers={}
        )
    assert server.accepts == 0
    assert resolver.calls == ["hooks.example.com"]


def test_a_name_with_one_loopback_record_among_public_ones_is_refused(
    server: CountingServer, make_sender: Callable[..., Sender]
) -> None:
    """Given a name answering 93.184.216.34 and 127.0.0.1,
    When the sender posts to it, Then it is refused and nothing is accepted or tried.
    """
    resolver = StubResolver({"mixed.example.com": [["93.184.216.34", "127.0.0.1"]]})
    with pytest.raises(SsrfBlocked):
        make_sender(resolver=resolver).post(
            f"http://mixed.example.com:{server.port}/", body=b"{}", headers={}
        )
    assert server.accepts == 0


def test_the_connection_goes_to_the_checked_address_and_a_rebound_answer_is_refused(
    make_sender: Callable[..., Sender],
) -> None:
    """Given a listener closing each connection and a name answering 127.0.0.1
    (allow-listed) first and 10.0.0.1 afterwards,
    When the sender posts twice,
    Then the first post looks the name up once and reaches the listener at 127.0.0.1 (the
    socket layer never resolves the name itself: the system cannot resolve it), and the
    second post, needing a new connection, is refused on the rebound answer.
    """

    def close_after(handler: Handler) -> None:
        handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        handler.send_response(204)
        handler.send_header("Content-Length", "0")
        handler.send_header("Connection", "close")
        handler.end_headers()

    resolver = StubResolver({"rebind.test": [["127.0.0.1"], ["10.0.0.1"]]})
    client = make_sender(allow=AllowList.parse(["127.0.0.0/8"]), resolver=resolver)
    with CountingServer(behaviour=close_after) as srv:
        url = f"http://rebind.test:{srv.port}/"
        assert client.post(url, body=b"{}", headers={}).status == 204
        assert resolver.calls == ["rebind.test"]
        assert srv.peers == ["127.0.0.1"]
        with pytest.raises(SsrfBlocked, match=r"rebind\.test resolves to 10\.0\.0\.1 \(private\)"):
            client.post(url, body=b"{}", headers={})
        assert resolver.calls == ["rebind.test", "rebind.test"]
        assert srv.accepts == 1


def test_redirects_are_returned_not_followed(make_sender: Callable[..., Sender]) -> None:
    """Given a receiver answering 302 to another local server,
    When the sender posts (loopback allow-listed),
    Then the result is the 302 and the other server sees no connection and no request.
    """
    with CountingServer() as other:

        def redirect(handler: Handler) -> None:
            handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
            handler.send_response(302)
            handler.send_header("Location", f"http://127.0.0.1:{other.port}/")
            handler.send_header("Content-Length", "0")
            handler.end_headers()

        with CountingServer(behaviour=redirect) as first:
            result = make_sender(allow=LOOPBACK).post(
                f"http://127.0.0.1:{first.port}/", body=b"{}", headers={}
            )
        assert result.status == 302
        assert result.headers["location"] == f"http://127.0.0.1:{other.port}/"
        assert (other.accepts, other.requests) == (0, [])


def test_headers_body_user_agent_and_status_round_trip(
    server: CountingServer, make_sender: Callable[..., Sender]
) -> None:
    """Given a receiver, When the sender posts with signing headers and a forged
    User-Agent and Host, Then the receiver gets the signing headers, the configured
    User-Agent, identity encoding and the real host; the result has lower-case headers.
    """
    result = make_sender(allow=LOOPBACK, user_agent="hooks-ua/2").post(
        f"http://127.0.0.1:{server.port}/in?x=1",
        body=b'{"a":1}',
        headers={"Webhook-Id": "msg_1", "user-agent": "forged", "Host": "internal.example"},
    )
    assert isinstance(result, HttpResult)
    assert result.status == 204
    assert result.headers["content-length"] == "0"
    assert all(name == name.lower() for name in result.headers)
    assert result.body == b""
    assert 0 < result.elapsed < 2
    (received,) = server.requests
    assert received["_path"] == "/in?x=1"
    assert received["webhook-id"] == "msg_1"
    assert received["user-agent"] == "hooks-ua/2"
    assert received["accept-encoding"] == "identity"
    assert received["host"] == f"127.0.0.1:{server.port}"
    assert received["content-length"] == "7"


def test_a_body_larger_than_the_cap_is_truncated_to_the_cap(
    make_sender: Callable[..., Sender],
) -> None:
    """Given a receiver answering 1 MiB, When the sender (cap 1000 bytes) posts,
    Then the result's body is exactly the first 1000 bytes.
    """
    payload = bytes(range(256)) * 4096

    def big(handler: Handler) -> None:
        handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    with CountingServer(behaviour=big) as srv:
        result = make_sender(allow=LOOPBACK, max_response_bytes=1000).post(
            f"http://127.0.0.1:{srv.port}/", body=b"{}", headers={}
        )
    assert result.status == 200
    assert result.body == payload[:1000]


@pytest.mark.timeout(15)
def test_an_endless_body_is_cut_at_the_cap_without_reading_the_rest(
    make_sender: Callable[..., Sender],
) -> None:
    """Given a receiver streaming an endless chunked body,
    When the sender (cap 64 KiB, 2 s deadline) posts,
    Then it returns 64 KiB well before the deadline: the rest is never read.
    """

    def endless(handler: Handler) -> None:
        handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        chunk = b"%x\r\n%s\r\n" % (16384, b"z" * 16384)
        while not handler.server.release.is_set():
            handler.wfile.write(chunk)

    with CountingServer(behaviour=endless) as srv:
        started = time.monotonic()
        result = make_sender(allow=LOOPBACK, max_response_bytes=65536).post(
            f"http://127.0.0.1:{srv.port}/", body=b"{}", headers={}
        )
        assert time.monotonic() - started < 1.0
    assert result.body == b"z" * 65536


def test_a_cap_of_zero_reads_no_body(make_sender: Callable[..., Sender]) -> None:
    """Given a cap of 0 bytes, When the receiver answers a body, Then the result is empty."""

    def hello(handler: Handler) -> None:
        handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        handler.send_response(200)
        handler.send_header("Content-Length", "5")
        handler.end_headers()
        handler.wfile.write(b"hello")

    with CountingServer(behaviour=hello) as srv:
        result = make_sender(allow=LOOPBACK, max_response_bytes=0).post(
            f"http://127.0.0.1:{srv.port}/", body=b"{}", headers={}
        )
    assert (result.status, result.body) == (200, b"")


def _hang(handler: Handler) -> None:
    handler.server.release.wait(30)


def _drip_headers(handler: Handler) -> None:
    handler.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    while not handler.server.release.wait(0.05):
        handler.wfile.write(b"a")


def _drip_body(handler: Handler) -> None:
    handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
    handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
    while not handler.server.release.wait(0.05):
        handler.wfile.write(b"a")


@pytest.mark.timeout(15)
@pytest.mark.parametrize(
    "behaviour",
    [_hang, _drip_headers, _drip_body],
    ids=["never-answers", "drips-headers", "drips-body"],
)
def test_the_whole_attempt_ends_at_the_deadline(
    behaviour: Behaviour, make_sender: Callable[..., Sender]
) -> None:
    """Given a receiver that never answers, or drips its headers or body a byte at a time
    (each read succeeds well within any per-read timeout),
    When the sender with a 0.6 s total timeout posts,
    Then httpx.TimeoutException is raised after 0.6 s and before 0.6 s + margin.
    """
    with CountingServer(behaviour=behaviour) as srv:
        client = make_sender(allow=LOOPBACK, timeout=0.6, connect_timeout=0.6)
        started = time.monotonic()
        with pytest.raises(httpx.TimeoutException):
            client.post(f"http://127.0.0.1:{srv.port}/", body=b"{}", headers={})
        took = time.monotonic() - started
    assert 0.6 - 0.05 <= took < 0.6 + MARGIN


@pytest.mark.timeout(15)
def test_a_receiver_that_stops_reading_cannot_hold_the_sender_past_the_deadline(
    make_sender: Callable[..., Sender],
) -> None:
    """Given a receiver that reads nothing, When the sender posts 64 MiB with a 0.6 s
    timeout, Then the write gives up at the deadline with httpx.TimeoutException.
    """
    with CountingServer(behaviour=_hang) as srv:
        client = make_sender(allow=LOOPBACK, timeout=0.6, connect_timeout=0.6)
        started = time.monotonic()
        with pytest.raises(httpx.TimeoutException):
            client.post(f"http://127.0.0.1:{srv.port}/", body=b"x" * (64 << 20), headers={})
        took = time.monotonic() - started
    assert took < 0.6 + MARGIN


@pytest.mark.timeout(15)
def test_a_blackholed_address_times_out_within_the_connect_timeout(
    make_sender: Callable[..., Sender],
) -> None:
    """Given a listener that never accepts (backlog full) and a 0.3 s connect timeout,
    When the sender posts, Then httpx.TimeoutException or ConnectError comes within 0.3 s
    plus margin (never the 2 s total).
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    try:
        # Fill the accept queue so further SYNs are dropped (Linux: backlog + 1 fit).
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)  # noqa: FBT003 - socket's API
            filler.connect_ex(listener.getsockname())
            fillers.append(filler)
        client = make_sender(allow=LOOPBACK, connect_timeout=0.3)
        started = time.monotonic()
        with pytest.raises((httpx.TimeoutException, httpx.ConnectError)):
            client.post(f"http://127.0.0.1:{listener.getsockname()[1]}/", body=b"", headers={})
        assert time.monotonic() - started < 0.3 + MARGIN
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_keep_alive_reuses_connections(
    server: CountingServer, make_sender: Callable[..., Sender]
) -> None:
    """Given a keep-alive receiver, When the sender posts 20 times in a row,
    Then every post is answered over at most 2 TCP connections.
    """
    client = make_sender(allow=LOOPBACK)
    for index in range(20):
        result = client.post(f"http://127.0.0.1:{server.port}/", body=b"%d" % index, headers={})
        assert result.status == 204
    assert len(server.requests) == 20
    assert server.accepts <= 2


def test_threads_share_one_pool(server: CountingServer, make_sender: Callable[..., Sender]) -> None:
    """Given one sender with a pool of 4, When 12 threads post 25 times each,
    Then all 300 posts succeed over at most 4 connections.

    Regression: with more threads than connections, httpcore 1.0.9 could close a connection
    it had handed to a queued request under that request (EBADF on read; encode/httpcore
    #1110); the sender now never lets a request queue inside the pool.
    """
    # A generous deadline: on a loaded machine a thread may wait for a free connection.
    client = make_sender(allow=LOOPBACK, pool_size=4, timeout=10.0)
    statuses: list[int | str] = []

    def work() -> None:
        url = f"http://127.0.0.1:{server.port}/"
        for _ in range(25):
            try:
                statuses.append(client.post(url, body=b"{}", headers={}).status)
            except httpx.TransportError as exc:
                statuses.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [status for status in statuses if status != 204] == []
    assert len(statuses) == 300
    assert server.accepts <= 4


@pytest.mark.timeout(15)
def test_a_post_waiting_for_a_connection_gives_up_at_the_deadline(
    make_sender: Callable[..., Sender],
) -> None:
    """Given a pool of 1 held by a post to a receiver that never answers, When a second
    thread posts with a 0.6 s deadline, Then its wait for the connection counts against that
    deadline: it raises an httpx timeout before 0.6 s + margin, like the first.
    """
    with CountingServer(behaviour=_hang) as srv:
        client = make_sender(allow=LOOPBACK, pool_size=1, timeout=0.6, connect_timeout=0.6)
        url = f"http://127.0.0.1:{srv.port}/"
        outcomes: list[str] = []

        def hold() -> None:
            try:
                client.post(url, body=b"{}", headers={})
            except httpx.TimeoutException as exc:
                outcomes.append(type(exc).__name__)

        holder = threading.Thread(target=hold)
        holder.start()
        wait_for(lambda: len(srv.requests) == 1, 5, "the first post reached the receiver")
        started = time.monotonic()
        with pytest.raises(httpx.TimeoutException):
            client.post(url, body=b"{}", headers={})
        took = time.monotonic() - started
        holder.join(5)
        srv.release.set()
    assert took < 0.6 + MARGIN
    assert len(srv.requests) <= 2
    assert outcomes == ["ReadTimeout"]


def _tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for hooks.example.test (no IP address in it)."""
    pytest.importorskip("cryptography")
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tests CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks.example.test")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("hooks.example.test")]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (directory / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[CountingServer, ssl.SSLContext, list[str]]]:
    """An HTTPS server on 127.0.0.1 for hooks.example.test, the names its clients sent
    (SNI), and a client context trusting its CA.
    """
    ca_path, cert_path, key_path = _tls_files(tmp_path)
    server_names: list[str] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)

    def remember(sock: Any, name: str | None, ctx: Any) -> None:
        server_names.append(name or "")

    context.sni_callback = remember
    srv = CountingServer()
    srv.socket = context.wrap_socket(srv.socket, server_side=True)
    with srv:
        yield srv, ssl.create_default_context(cafile=str(ca_path)), server_names


def test_tls_sni_and_certificate_check_use_the_url_host_not_the_checked_address(
    tls_server: tuple[CountingServer, ssl.SSLContext, list[str]],
    make_sender: Callable[..., Sender],
) -> None:
    """Given an HTTPS receiver whose certificate names only hooks.example.test, reached
    through a resolver answering 127.0.0.1 (allow-listed),
    When the sender posts to https://hooks.example.test, Then the handshake carried SNI
    hooks.example.test and the certificate verified (the connection itself went to
    127.0.0.1, which the certificate does not name); a URL naming another host that
    resolves to the same address fails verification.
    """
    srv, client_context, server_names = tls_server
    resolver = StubResolver(
        {"hooks.example.test": [["127.0.0.1"]], "other.example.test": [["127.0.0.1"]]}
    )
    client = make_sender(
        allow=AllowList.parse(["127.0.0.0/8"]), resolver=resolver, ssl_context=client_context
    )
    result = client.post(f"https://hooks.example.test:{srv.port}/", body=b"{}", headers={})
    assert result.status == 204
    assert server_names == ["hooks.example.test"]
    with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
        client.post(f"https://other.example.test:{srv.port}/", body=b"{}", headers={})
    assert server_names == ["hooks.example.test", "other.example.test"]


def test_the_default_tls_context_refuses_an_unknown_ca(
    tls_server: tuple[CountingServer, ssl.SSLContext, list[str]],
    make_sender: Callable[..., Sender],
) -> None:
    """Given an HTTPS receiver signed by a private CA, When the default sender posts,
    Then certificate verification fails (verification is on by default).
    """
    srv, _, _ = tls_server
    resolver = StubResolver({"hooks.example.test": [["127.0.0.1"]]})
    client = make_sender(allow=AllowList.parse(["127.0.0.0/8"]), resolver=resolver)
    with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
        client.post(f"https://hooks.example.test:{srv.port}/", body=b"{}", headers={})


@pytest.fixture
def fresh_process_sender(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Sender]]:
    """Forget this process's sender before the test; close every one built during it."""
    monkeypatch.setattr(sender_module, "_sender", None)
    monkeypatch.setattr(sender_module, "_pid", None)
    built: list[Sender] = []
    original = Sender.from_settings

    def tracked(settings: Any, *, resolver: Resolver = system_resolver) -> Sender:
        built.append(original(settings, resolver=resolver))
        return built[-1]

    monkeypatch.setattr(Sender, "from_settings", tracked)
    yield built
    for item in built:
        item.close()


def test_the_process_sender_is_built_once_from_the_settings_across_threads(
    fresh_process_sender: list[Sender],
) -> None:
    """Given no sender yet in this process, When 8 threads ask for it at once,
    Then all get the same instance, configured from the settings.
    """
    got: list[Sender] = []
    barrier = threading.Barrier(8)

    def ask() -> None:
        barrier.wait(5)
        got.append(sender())

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(got) == 8
    assert len({id(item) for item in got}) == 1
    assert fresh_process_sender == [got[0]]
    settings = get_settings()
    assert got[0].user_agent == settings.webhook_user_agent
    assert got[0].timeout == settings.webhook_timeout
    assert got[0].max_response_bytes == settings.webhook_max_response_bytes


def test_a_forked_process_builds_its_own_sender(
    fresh_process_sender: list[Sender], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given this process's sender, When the pid changes (a fork),
    Then sender() builds a new one instead of sharing the parent's pool.
    """
    first = sender()
    assert sender() is first
    monkeypatch.setattr(os, "getpid", lambda: -1)
    second = sender()
    assert second is not first
    assert sender() is second


def test_a_guard_refusal_wrapped_by_httpx_still_surfaces_as_ssrf_blocked(
    make_sender: Callable[..., Sender], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given an httpx version that wraps the backend's SsrfBlocked in a ConnectError,
    When the sender posts, Then the caller still gets the SsrfBlocked itself.
    """
    client = make_sender()
    refusal = SsrfBlocked("ssrf_blocked: hooks.example.com resolves to 10.0.0.5 (private)")

    def wrapping_send(request: httpx.Request, **kwargs: Any) -> httpx.Response:
        raise httpx.ConnectError(str(refusal), request=request) from refusal

    monkeypatch.setattr(client._client, "send", wrapping_send)
    with pytest.raises(SsrfBlocked) as caught:
        client.post("https://hooks.example.com/", body=b"{}", headers={})
    assert caught.value is refusal
