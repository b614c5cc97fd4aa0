"""The SSRF guard without a network: URL checks, address classes, resolution, the backend."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterable

import httpcore
import pytest

from jobs.webhooks.ssrf import (
    ALLOW_HOSTS_VARIABLE,
    AllowList,
    GuardedBackend,
    Resolver,
    check_url,
    is_public,
    resolve_checked,
    system_resolver,
)
from workers.errors import ConfigurationError, SsrfBlocked

DENIED_PORTS = (2375, 3306, 5432, 6379, 11211)
NO_ALLOW = AllowList()

#: URLs that point inside (or at nothing a webhook may reach), each refused by check_url.
INTERNAL_URLS = [
    "http://2130706433/",  # decimal 127.0.0.1
    "http://017700000001/",  # octal, one part
    "http://0177.0.0.1/",  # octal, dotted
    "http://0x7f.1/",  # hex, short
    "http://0x7f000001/",  # hex, one part
    "http://127.1/",  # short
    "http://127.0.0.1/",
    "http://127.0.0.1.:8080/",  # trailing dot
    "http://0.0.0.0/",
    "http://0/",
    "http://10.0.0.5/",
    "http://172.16.0.1/",
    "http://172.31.255.254/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/",
    "http://198.18.0.1/",
    "http://192.0.0.1/",
    "http://192.0.2.1/",
    "http://224.0.0.1/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "http://[::1]/",
    "http://[::]/",
    "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/",  # zone id
    "http://[fc00::1]/",
    "http://[fd12:3456::1]/",
    "http://[fec0::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::ffff:a00:5]/",  # mapped 10.0.0.5
    "http://[::127.0.0.1]/",  # IPv4-compatible
    "http://[64:ff9b::7f00:1]/",  # NAT64 of 127.0.0.1
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "http://[2001::1]/",  # Teredo
    "http://[2001:db8::1]/",
    "http://[100::1]/",
    "http://[ff02::1]/",
    "http://localhost/",
    "http://LOCALHOST:8080/",
    "http://api.localhost/",
    "http://example.com@127.0.0.1/",
    "http://user:pw@example.com/",
    "http://1.2.3.4.5/",  # numeric but no address: parsers disagree
    "http://example.123/",
    "file:///etc/passwd",
    "gopher://example.com:70/_GET",
    "ftp://example.com/",
    "dict://example.com:11211/",
    "//example.com/",
    "http:///path",
    "http://example.com:22/",
    "http://example.com:25/",
    "http://example.com:6379/",
    "http://example.com:5432/",
    "http://example.com:0/",
    "http://example.com:1023/",
    "http://exa mple.com/",
    "http://example.com\\@127.0.0.1/",
    "http://example.com/\r\nX-Injected: 1",
    "http://example.com/\t",
    "http://example.com\u200b/",  # zero-width space
]


def _stub(answers: dict[str, list[str]]) -> tuple[list[tuple[str, int]], Resolver]:
    calls: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append((host, port))
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[host]

    return calls, resolve


@pytest.mark.parametrize("url", INTERNAL_URLS)
def test_urls_pointing_inside_are_refused_before_any_lookup(url: str) -> None:
    """Given a URL aimed at an internal address, a bad scheme or port, or hiding its host,
    When check_url checks it without an allow-list,
    Then it raises SsrfBlocked with reason ssrf_blocked and a message saying so.
    """
    with pytest.raises(SsrfBlocked) as caught:
        check_url(url, NO_ALLOW, DENIED_PORTS)
    assert caught.value.reason == "ssrf_blocked"
    assert str(caught.value).startswith("ssrf_blocked: ")


def test_the_internal_url_table_is_big_enough() -> None:
    """Given the table of internal URLs, Then it covers at least 25 distinct cases."""
    assert len(set(INTERNAL_URLS)) >= 25


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://example.com:22/", "ssrf_blocked: port 22 is not allowed"),
        ("http://2130706433/", "2130706433 means 127.0.0.1, not a public address (loopback)"),
        ("http://0x7f.1/", "0x7f.1 means 127.0.0.1, not a public address (loopback)"),
        ("http://169.254.169.254/", "169.254.169.254 is not a public address (link-local"),
        ("http://[::ffff:7f00:1]/", "(IPv4-mapped 127.0.0.1: loopback)"),
        ("http://[64:ff9b::a00:5]/", "(NAT64 10.0.0.5: private)"),
        ("gopher://example.com/", "scheme 'gopher' is not allowed"),
        ("http://example.com@127.0.0.1/", "credentials (user info) in the URL are not allowed"),
    ],
)
def test_refusals_say_precisely_what_is_wrong(url: str, message: str) -> None:
    """Given a refused URL, When check_url refuses it, Then the message names the cause."""
    with pytest.raises(SsrfBlocked, match=r"^ssrf_blocked: ") as caught:
        check_url(url, NO_ALLOW, DENIED_PORTS)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook?token=s3cret",
        "http://example.com:6379/hook?token=s3cret",
        "http://user:s3cret@example.com/",
        "ftp://example.com/s3cret",
        "http://example.com/s3cret?x=\x00",
    ],
)
def test_refusal_messages_never_repeat_secrets_from_the_url(url: str) -> None:
    """Given a refused URL carrying a secret in its path, query or user info,
    When it is refused, Then the message does not contain the secret.
    """
    with pytest.raises(SsrfBlocked) as caught:
        check_url(url, NO_ALLOW, DENIED_PORTS)
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port"),
    [
        ("https://Hooks.Example.COM/in?x=1", "https", "hooks.example.com", 443),
        ("HTTP://example.com./", "http", "example.com", 80),
        ("http://bücher.example/", "http", "xn--bcher-kva.example", 80),
        ("http://93.184.216.34:8080/", "http", "93.184.216.34", 8080),
        ("https://example.com:443/", "https", "example.com", 443),
        ("http://example.com:443/", "http", "example.com", 443),
        (
            "https://[2606:2800:220:1:248:1893:25c8:1946]/",
            "https",
            "2606:2800:220:1:248:1893:25c8:1946",
            443,
        ),
        ("http://[::ffff:93.184.216.34]/", "http", "::ffff:93.184.216.34", 80),
    ],
)
def test_public_urls_pass_with_their_normalised_host_and_port(
    url: str, scheme: str, host: str, port: int
) -> None:
    """Given a public http(s) URL, When check_url checks it,
    Then it returns the scheme, the lower-case IDNA host and the effective port.
    """
    target = check_url(url, NO_ALLOW, DENIED_PORTS)
    assert (target.scheme, target.host, target.port) == (scheme, host, port)
    assert target.url.lower().startswith(f"{scheme}://")


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.255.254",
        "0.0.0.0",  # noqa: S104 - an address to classify, not one to bind
        "0.1.2.3",
        "10.0.0.5",
        "172.16.0.1",
        "192.168.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.254",
        "198.18.0.1",
        "198.19.255.254",
        "192.0.0.9",
        "192.0.2.1",
        "198.51.100.1",
        "203.0.113.1",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "fe80::1",
        "fc00::1",
        "fd00::1",
        "fec0::1",
        "ff02::1",
        "100::1",
        "2001:db8::1",
        "2002:7f00:1::",
        "2002:5db8:d822::1",  # 6to4 of a public address: refused all the same
        "2001::1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
        "64:ff9b::7f00:1",
        "64:ff9b::a9fe:a9fe",  # NAT64 of the metadata address
        "64:ff9b:1::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.5",
        "::ffff:169.254.169.254",
        "::127.0.0.1",
        "::8.8.8.8",  # IPv4-compatible: deprecated, refused
        "4000::1",
        "3fff::1",
    ],
)
def test_internal_and_special_addresses_are_not_public(address: str) -> None:
    """Given an address of a non-public range, When classified, Then is_public is False."""
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "8.8.8.8",
        "1.1.1.1",
        "2606:2800:220:1:248:1893:25c8:1946",
        "2a00:1450:4001:80b::200e",
        "::ffff:93.184.216.34",
        "64:ff9b::5db8:d822",  # NAT64 of 93.184.216.34
    ],
)
def test_public_addresses_are_public(address: str) -> None:
    """Given a globally routable unicast address, When classified, Then is_public is True."""
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "host", ["2130706433", "017700000001", "0177.0.0.1", "0x7f.1", "0x7f000001", "127.1", "0"]
)
def test_the_system_resolver_normalises_numeric_spellings_and_they_are_refused(
    host: str,
) -> None:
    """Given an IPv4 literal in an odd spelling (decimal, octal, hex, short),
    When resolve_checked resolves it through getaddrinfo,
    Then the normalised address is checked and the host refused.
    """
    with pytest.raises(SsrfBlocked, match=r"resolves to (127\.0\.0\.1|0\.0\.0\.0) "):
        resolve_checked(host, 80, NO_ALLOW, system_resolver)


def test_localhost_resolves_to_loopback_and_is_refused() -> None:
    """Given the name localhost, When resolved by the system, Then it is refused."""
    with pytest.raises(SsrfBlocked, match="localhost resolves to"):
        resolve_checked("localhost", 80, NO_ALLOW)


def test_a_public_looking_name_resolving_to_a_private_address_is_refused() -> None:
    """Given hooks.example.com resolving to 10.0.0.5,
    When resolve_checked checks it, Then it is refused naming the address and its class.
    """
    _, resolver = _stub({"hooks.example.com": ["10.0.0.5"]})
    with pytest.raises(SsrfBlocked) as caught:
        resolve_checked("hooks.example.com", 443, NO_ALLOW, resolver)
    assert str(caught.value) == "ssrf_blocked: hooks.example.com resolves to 10.0.0.5 (private)"


def test_one_internal_record_among_public_ones_refuses_the_host() -> None:
    """Given a name answering 93.184.216.34 and 127.0.0.1,
    When resolve_checked checks it, Then the whole host is refused because of 127.0.0.1.
    """
    _, resolver = _stub({"mixed.example.com": ["93.184.216.34", "127.0.0.1"]})
    with pytest.raises(SsrfBlocked, match=r"resolves to 127\.0\.0\.1 \(loopback\)"):
        resolve_checked("mixed.example.com", 443, NO_ALLOW, resolver)


def test_a_public_name_is_allowed_with_every_distinct_address() -> None:
    """Given a name answering public addresses (one twice),
    When resolve_checked checks it, Then it returns each distinct address once, in order.
    """
    _, resolver = _stub({"ok.example.com": ["93.184.216.34", "2606:2800::1", "93.184.216.34"]})
    assert resolve_checked("ok.example.com", 443, NO_ALLOW, resolver) == [
        ipaddress.ip_address("93.184.216.34"),
        ipaddress.ip_address("2606:2800::1"),
    ]


def test_a_name_resolving_to_nothing_is_a_resolution_error_not_a_refusal() -> None:
    """Given a name with no address, When resolved, Then socket.gaierror is raised."""
    _, resolver = _stub({"empty.example.com": []})
    with pytest.raises(socket.gaierror):
        resolve_checked("empty.example.com", 443, NO_ALLOW, resolver)


@pytest.mark.parametrize("entry", ["localhost", "127.0.0.1", "127.0.0.0/8"])
def test_an_allow_list_entry_lets_loopback_through(entry: str) -> None:
    """Given an allow-list naming localhost, 127.0.0.1 or 127.0.0.0/8,
    When a loopback URL (on a port above 1023) and its resolution are checked,
    Then both pass; without the allow-list both are refused.
    """
    allow = AllowList.parse([entry])
    url = "http://localhost:8080/" if entry == "localhost" else "http://127.0.0.1:8080/"
    host = check_url(url, allow, DENIED_PORTS).host
    _, resolver = _stub({host: ["127.0.0.1"]})
    assert resolve_checked(host, 8080, allow, resolver) == [ipaddress.ip_address("127.0.0.1")]
    with pytest.raises(SsrfBlocked):
        check_url(url, NO_ALLOW, DENIED_PORTS)
    with pytest.raises(SsrfBlocked):
        resolve_checked(host, 8080, NO_ALLOW, resolver)


def test_allow_listed_hosts_skip_the_port_rule_and_others_do_not() -> None:
    """Given 127.0.0.0/8 allow-listed, When URLs on port 6379 are checked,
    Then the allow-listed address passes and a public name is still refused.
    """
    allow = AllowList.parse(["127.0.0.0/8"])
    assert check_url("http://127.0.0.1:6379/", allow, DENIED_PORTS).port == 6379
    assert check_url("http://0x7f.1:22/", allow, DENIED_PORTS).port == 22
    with pytest.raises(SsrfBlocked, match="port 6379"):
        check_url("http://example.com:6379/", allow, DENIED_PORTS)


def test_an_allow_listed_network_matches_ipv4_mapped_addresses() -> None:
    """Given 127.0.0.0/8 allow-listed, When ::ffff:127.0.0.1 is checked, Then it passes."""
    allow = AllowList.parse(["127.0.0.0/8"])
    assert allow.allows_ip(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert not allow.allows_ip(ipaddress.ip_address("::1"))
    assert not allow.allows_ip(ipaddress.ip_address("10.0.0.1"))


def test_allow_list_names_match_exactly_and_case_insensitively() -> None:
    """Given Hooks.Internal. allow-listed, When names are compared,
    Then only that name matches (any case, trailing dot), not its sub- or parent domains.
    """
    allow = AllowList.parse(["Hooks.Internal."])
    assert allow.allows_host("hooks.internal")
    assert allow.allows_host("HOOKS.INTERNAL.")
    assert not allow.allows_host("a.hooks.internal")
    assert not allow.allows_host("internal")


@pytest.mark.parametrize(
    "entry",
    ["http://localhost", "*.example.com", "10.0.0.5/8", "", "foo bar", "0x7f.1", "fe80::1%eth0"],
)
def test_a_bad_allow_list_entry_is_a_configuration_error_naming_the_variable(
    entry: str,
) -> None:
    """Given a malformed JOBS_WEBHOOK_ALLOW_HOSTS entry, When parsed,
    Then ConfigurationError names the variable and the entry.
    """
    with pytest.raises(ConfigurationError) as caught:
        AllowList.parse(["localhost", entry])
    assert ALLOW_HOSTS_VARIABLE in str(caught.value)
    assert ALLOW_HOSTS_VARIABLE == "JOBS_WEBHOOK_ALLOW_HOSTS"
    assert repr(entry) in str(caught.value)


class FakeStream(httpcore.NetworkStream):
    """A stream that does nothing; it records where it was 'connected'."""

    def __init__(self, host: str, port: int) -> None:
        """Remember the address."""
        self.host, self.port = host, port

    def close(self) -> None:
        """Nothing to close."""


class FakeBackend(httpcore.NetworkBackend):
    """Records connect calls; refuses the addresses in ``down``."""

    def __init__(self, down: Iterable[str] = ()) -> None:
        """No calls yet; ``down`` addresses refuse connections."""
        self.calls: list[tuple[str, int, float | None]] = []
        self.down = set(down)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        """Record the call; fail for a down address."""
        del local_address, socket_options
        self.calls.append((host, port, timeout))
        if host in self.down:
            raise httpcore.ConnectError("connection refused")
        return FakeStream(host, port)


def test_the_backend_refuses_a_host_with_one_bad_record_without_connecting() -> None:
    """Given a name answering a public address and 127.0.0.1,
    When the guarded backend is asked to connect, Then it raises SsrfBlocked and never
    connects anywhere.
    """
    _, resolver = _stub({"mixed.example.com": ["93.184.216.34", "127.0.0.1"]})
    inner = FakeBackend()
    backend = GuardedBackend(NO_ALLOW, resolver, inner)
    with pytest.raises(SsrfBlocked, match=r"127\.0\.0\.1 \(loopback\)"):
        backend.connect_tcp("mixed.example.com", 443, timeout=1.0)
    assert inner.calls == []


def test_the_backend_connects_to_the_checked_addresses_in_order_after_one_lookup() -> None:
    """Given a name answering two public addresses, the first one down,
    When the guarded backend connects, Then it looks the name up once and connects to the
    checked addresses themselves (never the name), falling back to the second.
    """
    calls, resolver = _stub({"ok.example.com": ["93.184.216.34", "2606:2800::1"]})
    inner = FakeBackend(down={"93.184.216.34"})
    backend = GuardedBackend(NO_ALLOW, resolver, inner)
    stream = backend.connect_tcp("ok.example.com", 443, timeout=2.0)
    assert isinstance(stream, FakeStream)
    assert (stream.host, stream.port) == ("2606:2800::1", 443)
    assert [c[:2] for c in inner.calls] == [("93.184.216.34", 443), ("2606:2800::1", 443)]
    assert calls == [("ok.example.com", 443)]
    first_share = inner.calls[0][2]
    assert first_share is not None
    assert first_share <= 1.0  # each address gets a share of the time left


def test_the_backend_checks_ip_literal_hosts_in_any_spelling() -> None:
    """Given the host 0x7f.1 as httpx hands it over, When the backend connects with the
    system resolver, Then it is refused as 127.0.0.1 and nothing is connected.
    """
    inner = FakeBackend()
    with pytest.raises(SsrfBlocked, match=r"0x7f\.1 resolves to 127\.0\.0\.1"):
        GuardedBackend(NO_ALLOW, inner=inner).connect_tcp("0x7f.1", 80, timeout=1.0)
    assert inner.calls == []


def test_the_backend_lets_allow_listed_addresses_through() -> None:
    """Given 127.0.0.0/8 allow-listed, When a name resolving to 127.0.0.1 is connected,
    Then the backend connects to 127.0.0.1.
    """
    _, resolver = _stub({"hooks.test": ["127.0.0.1"]})
    inner = FakeBackend()
    backend = GuardedBackend(AllowList.parse(["127.0.0.0/8"]), resolver, inner)
    backend.connect_tcp("hooks.test", 8080, timeout=1.0)
    assert [c[:2] for c in inner.calls] == [("127.0.0.1", 8080)]


def test_an_unresolvable_name_is_a_connect_error() -> None:
    """Given a name that does not resolve, When the backend connects,
    Then httpcore.ConnectError is raised (retryable), not SsrfBlocked.
    """
    _, resolver = _stub({})
    backend = GuardedBackend(NO_ALLOW, resolver, FakeBackend())
    with pytest.raises(httpcore.ConnectError, match=r"cannot resolve nowhere\.example"):
        backend.connect_tcp("nowhere.example", 443, timeout=1.0)


def test_a_hanging_lookup_is_bounded_by_the_connect_timeout() -> None:
    """Given a resolver that hangs, When the backend connects with a 0.2 s timeout,
    Then httpcore.ConnectTimeout is raised within that time plus a small margin.
    """
    release = threading.Event()

    def hanging(host: str, port: int) -> list[str]:
        release.wait(10)
        return ["93.184.216.34"]

    backend = GuardedBackend(NO_ALLOW, hanging, FakeBackend())
    started = time.monotonic()
    try:
        with pytest.raises(httpcore.ConnectTimeout):
            backend.connect_tcp("slow.example.com", 443, timeout=0.2)
        assert time.monotonic() - started < 0.2 + 0.3
    finally:
        release.set()


def test_unix_sockets_are_refused() -> None:
    """Given the guarded backend, When asked for a unix socket, Then SsrfBlocked is raised."""
    with pytest.raises(SsrfBlocked):
        GuardedBackend(NO_ALLOW).connect_unix_socket("/var/run/docker.sock")
