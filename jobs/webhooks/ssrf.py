"""The SSRF guard: a webhook may only reach public http(s) addresses.

Three layers, each refusing with ``SsrfBlocked`` (reason ``ssrf_blocked``):

1. ``check_url`` (syntactic, no DNS): scheme, credentials, odd characters, IP literals in
   every spelling (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``, ``[::ffff:7f00:1]``),
   ``localhost`` names, ports.
2. ``resolve_checked``: every A/AAAA record of the host must be public; one bad record
   refuses the host (a name answering ``[public, 127.0.0.1]`` is refused).
3. ``GuardedBackend``: the httpcore network backend resolves once, checks every address and
   connects to a checked address itself, so no second lookup can rebind the name between
   the check and the connect. Whatever httpx made of the URL's host arrives here.

The allow-list (``JOBS_WEBHOOK_ALLOW_HOSTS``, development and tests only) lets named hosts,
addresses or networks through layers 1-3 and past the port rule.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
import unicodedata
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import TypeAlias
from urllib.parse import urlsplit

import httpcore
import httpx

from workers.errors import ConfigurationError, SsrfBlocked

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
#: ``(host, port) -> addresses`` (strings, any order); raises ``OSError`` when it cannot.
Resolver: TypeAlias = Callable[[str, int], list[str]]

#: The only schemes a webhook may use, with their default ports.
DEFAULT_PORTS = {"http": 80, "https": 443}
#: Ports below this are refused unless they are the scheme ports 80 and 443.
FIRST_UNPRIVILEGED_PORT = 1024
#: The setting an allow-list error names.
ALLOW_HOSTS_VARIABLE = "JOBS_WEBHOOK_ALLOW_HOSTS"

_v4 = ipaddress.IPv4Network
_v6 = ipaddress.IPv6Network

#: IPv4 ranges refused, most specific first (the first match names the refusal).
#: ``ipaddress.is_global`` is not enough on its own: Python 3.11 calls multicast global.
REFUSED_V4: tuple[tuple[IPNetwork, str], ...] = (
    (_v4("0.0.0.0/32"), "unspecified"),
    (_v4("0.0.0.0/8"), "this network"),
    (_v4("10.0.0.0/8"), "private"),
    (_v4("100.64.0.0/10"), "shared address space (CGNAT)"),
    (_v4("127.0.0.0/8"), "loopback"),
    (_v4("169.254.169.254/32"), "link-local (cloud metadata)"),
    (_v4("169.254.0.0/16"), "link-local"),
    (_v4("172.16.0.0/12"), "private"),
    (_v4("192.0.0.0/24"), "IETF protocol assignments"),
    (_v4("192.0.2.0/24"), "documentation (TEST-NET-1)"),
    (_v4("192.88.99.0/24"), "6to4 relay anycast"),
    (_v4("192.168.0.0/16"), "private"),
    (_v4("198.18.0.0/15"), "benchmarking"),
    (_v4("198.51.100.0/24"), "documentation (TEST-NET-2)"),
    (_v4("203.0.113.0/24"), "documentation (TEST-NET-3)"),
    (_v4("224.0.0.0/4"), "multicast"),
    (_v4("255.255.255.255/32"), "broadcast"),
    (_v4("240.0.0.0/4"), "reserved"),
)
#: IPv6 ranges refused outright. Addresses embedding IPv4 are decided before this table:
#: IPv4-mapped ``::ffff:0:0/96`` and NAT64 ``64:ff9b::/96`` by their IPv4 address;
#: IPv4-compatible ``::/96``, 6to4 ``2002::/16`` and Teredo ``2001::/32`` always refused.
REFUSED_V6: tuple[tuple[IPNetwork, str], ...] = (
    (_v6("::/128"), "unspecified"),
    (_v6("::1/128"), "loopback"),
    (_v6("64:ff9b:1::/48"), "local-use NAT64"),
    (_v6("100::/64"), "discard-only"),
    (_v6("2001:db8::/32"), "documentation"),
    (_v6("3fff::/20"), "documentation"),
    (_v6("fc00::/7"), "unique-local"),
    (_v6("fe80::/10"), "link-local"),
    (_v6("fec0::/10"), "site-local"),
    (_v6("ff00::/8"), "multicast"),
)
_MAPPED = _v6("::ffff:0:0/96")
_NAT64 = _v6("64:ff9b::/96")
_COMPATIBLE = _v6("::/96")
_SIX_TO_FOUR = _v6("2002::/16")
_TEREDO = _v6("2001::/32")
#: Global unicast IPv6 lives in 2000::/3; anything else is not a public destination.
_GLOBAL_UNICAST = _v6("2000::/3")

#: One DNS label after IDNA (underscores occur in real names, e.g. service records).
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
#: A label the WHATWG URL standard reads as a number (``0x7f``, ``0177``, ``2130706433``).
_NUMERIC = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$")
_MAX_NAME = 253
_MAX_PORT = 65535
_IPV4_PARTS = 4
_OCTET = 255


@dataclass(frozen=True, slots=True)
class AllowList:
    """Destinations allowed despite the guard: exact host names and IP networks."""

    #: Lower-case host names (IDNA), matched exactly, without a trailing dot.
    hosts: frozenset[str] = frozenset()
    #: Networks (a single address is a /32 or /128).
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """Build from ``JOBS_WEBHOOK_ALLOW_HOSTS`` entries: names, addresses or CIDR networks.

        Raises ``ConfigurationError`` naming the variable and the entry for anything else
        (a URL, a wildcard, a network with host bits set, an empty entry).
        """
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower()
            if "%" in entry or "://" in entry:
                raise _bad_entry(raw, "not a host name, IP address or CIDR network")
            try:
                networks.append(ipaddress.ip_network(entry, strict=True))
                continue
            except ValueError as exc:
                if "/" in entry or ":" in entry:
                    raise _bad_entry(raw, str(exc)) from None
            try:
                name = entry.removesuffix(".").encode("idna").decode("ascii")
                looks_numeric = _ipv4_literal_or_none(name) is not None
            except (UnicodeError, ValueError):
                looks_numeric = True
            if looks_numeric or not _is_host_name(name):
                raise _bad_entry(raw, "not a host name, IP address or CIDR network")
            hosts.add(name)
        return cls(frozenset(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        """True when ``host`` (any case, trailing dot or not) is an allow-listed name."""
        return _normal_name(host) in self.hosts

    def allows_ip(self, ip: IPAddress) -> bool:
        """True when ``ip`` (or the IPv4 address an IPv4-mapped one carries) is allow-listed."""
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(
            c in net for c in candidates for net in self.networks if c.version == net.version
        )


def _bad_entry(entry: str, why: str) -> ConfigurationError:
    return ConfigurationError(f"invalid {ALLOW_HOSTS_VARIABLE} entry {entry!r}: {why}")


@dataclass(frozen=True, slots=True)
class Target:
    """A URL that passed ``check_url``: what will be connected to, and the URL to send."""

    scheme: str
    #: Lower-case, IDNA-encoded, without brackets or trailing dot.
    host: str
    port: int
    #: The URL as httpx will send it.
    url: str


def not_public_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public destination (``"loopback"``, ...), or None when it is."""
    if isinstance(ip, ipaddress.IPv4Address):
        return _v4_reason(ip)
    embedded = _embedded_v4(ip)
    if embedded is not None:
        kind, v4, always_refused = embedded
        inner = _v4_reason(v4)
        if inner is not None:
            return f"{kind} {v4}: {inner}"
        return f"{kind} (deprecated)" if always_refused else None
    label = next((label for network, label in REFUSED_V6 if ip in network), None)
    if label is None and ip not in _GLOBAL_UNICAST:
        label = "not global unicast"
    if label is None and not ip.is_global:
        label = "not globally routable"
    return label


def _v4_reason(ip: ipaddress.IPv4Address) -> str | None:
    for network, label in REFUSED_V4:
        if ip in network:
            return label
    return None if ip.is_global else "not globally routable"


def _embedded_v4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address, bool] | None:
    """``(kind, embedded IPv4, always refused)`` for the IPv6 forms that carry an IPv4."""
    if ip in _MAPPED:
        return "IPv4-mapped", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), False
    if ip in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), False
    if ip in _COMPATIBLE and int(ip) > 1:  # ::/128 and ::1 are in the table
        return "IPv4-compatible", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), True
    if ip in _SIX_TO_FOUR:
        return "6to4", ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF), True
    if ip in _TEREDO:
        # The client address is stored inverted in the low 32 bits.
        return "Teredo", ipaddress.IPv4Address(~int(ip) & 0xFFFFFFFF), True
    return None


def is_public(ip: IPAddress) -> bool:
    """True when ``ip`` is a public unicast address a webhook may reach.

    Refused (``REFUSED_V4`` / ``REFUSED_V6`` list them with their names): unspecified,
    0.0.0.0/8, loopback, private 10/8 172.16/12 192.168/16, CGNAT 100.64/10, link-local
    169.254/16 (cloud metadata 169.254.169.254) and fe80::/10, 192.0.0.0/24, TEST-NETs,
    benchmarking 198.18/15, multicast, 240/4, broadcast, unique-local fc00::/7, site-local
    fec0::/10, discard 100::/64, documentation 2001:db8::/32 and 3fff::/20, local-use NAT64,
    anything outside 2000::/3, and whatever ``ipaddress`` does not call global. IPv4-mapped
    and NAT64 addresses are judged by their IPv4 address; IPv4-compatible, 6to4 and Teredo
    addresses are always refused (they tunnel to an IPv4 address we cannot vouch for).
    """
    return not_public_reason(ip) is None


def check_url(url: str, allow: AllowList, denied_ports: Collection[int]) -> Target:
    """Check a webhook URL without DNS; return where it points.

    Refuses (``SsrfBlocked``, the message never repeats the path or query): schemes other
    than http/https, user info (``http://example.com@127.0.0.1/``), whitespace, control
    characters and backslashes, a missing host, IPv6 zone ids, malformed or non-public IP
    literals in any spelling, ``localhost`` names, ports other than 80/443 below 1024 and
    ``denied_ports``. Allow-listed hosts skip the address and port rules.
    """
    for char in url:
        if char == "\\" or unicodedata.category(char)[0] in "CZ":
            raise SsrfBlocked(
                "ssrf_blocked: the URL contains whitespace, a control character or a backslash"
            )
    try:
        split = urlsplit(url)
        parsed = httpx.URL(url)
    except (ValueError, httpx.InvalidURL):
        raise SsrfBlocked("ssrf_blocked: the URL cannot be parsed") from None
    scheme = split.scheme.lower()
    if scheme not in DEFAULT_PORTS or parsed.scheme != scheme:
        shown = scheme[:16] or "(none)"
        raise SsrfBlocked(f"ssrf_blocked: scheme {shown!r} is not allowed (only http and https)")
    if "@" in split.netloc or parsed.userinfo:
        raise SsrfBlocked("ssrf_blocked: credentials (user info) in the URL are not allowed")
    raw_host = parsed.raw_host.decode("ascii").lower()
    if not raw_host:
        raise SsrfBlocked("ssrf_blocked: the URL has no host")
    if "%" in raw_host:
        raise SsrfBlocked("ssrf_blocked: IPv6 zone ids and escapes in the host are not allowed")
    host = raw_host.removesuffix(".") if ":" not in raw_host else raw_host
    port = parsed.port if parsed.port is not None else DEFAULT_PORTS[scheme]
    allowed = _check_host(host, allow)
    if not allowed and not _port_allowed(port, denied_ports):
        raise SsrfBlocked(f"ssrf_blocked: port {port} is not allowed")
    return Target(scheme=scheme, host=host, port=port, url=str(parsed))


def _check_host(host: str, allow: AllowList) -> bool:
    """Refuse a non-public literal or a localhost name; True when the host is allow-listed."""
    if allow.allows_host(host):
        return True
    ip = ip_literal(host)
    if ip is None:
        if host == "localhost" or host.endswith(".localhost"):
            ip = ipaddress.IPv4Address("127.0.0.1")  # RFC 6761: always loopback
            if allow.allows_ip(ip):
                return True
            raise SsrfBlocked(f"ssrf_blocked: {host} is a loopback name")
        if not _is_host_name(host):
            raise SsrfBlocked("ssrf_blocked: the host is not a valid DNS name")
        return False
    if allow.allows_ip(ip):
        return True
    reason = not_public_reason(ip)
    if reason is not None:
        # An IPv4 address spelled oddly (0x7f.1) is shown with what it means.
        shown = f"{host} is" if ":" in host or host == str(ip) else f"{host} means {ip},"
        raise SsrfBlocked(f"ssrf_blocked: {shown} not a public address ({reason})")
    return False


def _port_allowed(port: int, denied_ports: Collection[int]) -> bool:
    if port in DEFAULT_PORTS.values():
        return True
    return FIRST_UNPRIVILEGED_PORT <= port <= _MAX_PORT and port not in denied_ports


def ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells, or None for a name.

    IPv6 without brackets (``::1``); IPv4 in the forms browsers and ``inet_aton`` accept:
    dotted, decimal (``2130706433``), octal (``0177.0.0.1``), hex (``0x7f.1``), short
    (``127.1``). A host whose last label is a number but is no valid address is refused
    (``SsrfBlocked``): it would be read differently by different parsers.
    """
    if ":" in host:
        if "%" in host:
            raise SsrfBlocked("ssrf_blocked: IPv6 zone ids are not allowed")
        try:
            return ipaddress.IPv6Address(host.strip("[]"))
        except ValueError:
            raise SsrfBlocked("ssrf_blocked: the host is not a valid IPv6 address") from None
    try:
        return _ipv4_literal_or_none(host)
    except ValueError:
        raise SsrfBlocked(
            "ssrf_blocked: the host looks like an IPv4 address but is not a valid one"
        ) from None


def _ipv4_literal_or_none(host: str) -> ipaddress.IPv4Address | None:
    """WHATWG URL IPv4 parsing: None for a name, ValueError for a number that is no address."""
    parts = host.lower().split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    if not _NUMERIC.match(parts[-1]):
        return None
    if len(parts) > _IPV4_PARTS or not all(_NUMERIC.match(part) for part in parts):
        raise ValueError(host)
    numbers = [_ipv4_number(part) for part in parts]
    *leading, last = numbers
    if any(n > _OCTET for n in leading) or last >= 1 << (8 * (_IPV4_PARTS + 1 - len(numbers))):
        raise ValueError(host)
    value = last
    for index, number in enumerate(leading):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _ipv4_number(part: str) -> int:
    # ``part`` matched _NUMERIC (ASCII digits or 0x + hex digits, no underscores or signs).
    if part.startswith("0x"):
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        return int(part, 8)  # ValueError for 8 or 9: not an octal number
    return int(part)


def _is_host_name(name: str) -> bool:
    return 0 < len(name) <= _MAX_NAME and all(_LABEL.match(label) for label in name.split("."))


def _normal_name(host: str) -> str:
    return host.lower().removesuffix(".")


def system_resolver(host: str, port: int) -> list[str]:
    """Every distinct address ``getaddrinfo`` gives for ``host`` (A and AAAA), in its order.

    Raises ``socket.gaierror`` when the name does not resolve (or cannot be a name).
    """
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except UnicodeError as exc:  # the IDNA codec refuses the name (e.g. a 64-byte label)
        raise socket.gaierror(socket.EAI_NONAME, f"invalid host name: {exc}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def resolve_checked(
    host: str, port: int, allow: AllowList, resolver: Resolver = system_resolver
) -> list[IPAddress]:
    """Resolve ``host`` and return its addresses if every one of them may be reached.

    One non-public, non-allow-listed record refuses the host (``SsrfBlocked``: "ssrf_blocked:
    hooks.example.com resolves to 10.0.0.5 (private)"). Every address of an allow-listed
    name is accepted. IP literals in any spelling go through the resolver too, which
    normalises them. Raises ``socket.gaierror`` when the name does not resolve (or resolves
    to nothing).
    """
    return check_addresses(host, resolver(host, port), allow)


def check_addresses(host: str, answers: Iterable[str], allow: AllowList) -> list[IPAddress]:
    """The distinct addresses of ``answers`` if all may be reached (see ``resolve_checked``)."""
    trusted_name = allow.allows_host(host)
    checked: list[IPAddress] = []
    for answer in answers:
        try:
            ip = ipaddress.ip_address(answer.split("%", 1)[0])
        except ValueError:
            raise SsrfBlocked(f"ssrf_blocked: {host} resolves to a malformed address") from None
        if ip in checked:
            continue
        if not trusted_name and not allow.allows_ip(ip):
            reason = not_public_reason(ip)
            if reason is not None:
                raise SsrfBlocked(f"ssrf_blocked: {host} resolves to {ip} ({reason})")
        checked.append(ip)
    if not checked:
        raise socket.gaierror(socket.EAI_NONAME, f"{host} resolves to no address")
    return checked


class GuardedBackend(httpcore.NetworkBackend):
    """An httpcore backend that only connects to checked addresses.

    ``connect_tcp`` resolves the host once with ``resolver``, refuses the host if any
    address is not public (``SsrfBlocked``, which httpx passes through unchanged), then
    connects to the checked addresses in order, each given an equal share of the time left,
    through ``inner`` (``httpcore.SyncBackend``) with the address itself as host: the
    socket layer never looks the name up again, so it cannot be rebound in between. TLS is
    unaffected: httpcore takes SNI and the certificate's expected name from the request's
    origin, not from the address we connect to.

    The lookup counts against the connect timeout: it runs on a daemon thread, and the
    caller stops waiting when the timeout expires (``httpcore.ConnectTimeout``); a name that
    does not resolve raises ``httpcore.ConnectError``. Unix sockets are refused.
    """

    def __init__(
        self,
        allow: AllowList,
        resolver: Resolver = system_resolver,
        inner: httpcore.NetworkBackend | None = None,
    ) -> None:
        """Guard connections with ``allow`` and ``resolver``; sockets come from ``inner``."""
        self.allow = allow
        self.resolver = resolver
        self.inner: httpcore.NetworkBackend = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        """Resolve, check every address, connect to the first checked one that answers."""
        deadline = None if timeout is None else time.monotonic() + timeout
        addresses = self._resolve(host, port, timeout)
        failure: Exception | None = None
        for index, ip in enumerate(addresses):
            share = None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                share = left / (len(addresses) - index)
            try:
                return self.inner.connect_tcp(
                    str(ip),
                    port,
                    timeout=share,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        if isinstance(failure, httpcore.ConnectError):
            raise failure
        raise httpcore.ConnectTimeout(f"connecting to {host}:{port} timed out") from failure

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        """Refused: a webhook never goes to a local socket."""
        del path, timeout, socket_options
        raise SsrfBlocked("ssrf_blocked: unix sockets are not allowed")

    def _resolve(self, host: str, port: int, timeout: float | None) -> list[IPAddress]:
        answers = _call_within(lambda: self.resolver(host, port), timeout)
        if answers is None:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out")
        if isinstance(answers, OSError):
            raise httpcore.ConnectError(f"cannot resolve {host}: {answers}") from answers
        try:
            return check_addresses(host, answers, self.allow)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(str(exc)) from exc


def _call_within(
    lookup: Callable[[], list[str]], timeout: float | None
) -> list[str] | OSError | None:
    """``lookup()``'s answer or OSError, or None when it took longer than ``timeout``."""
    if timeout is None:
        try:
            return lookup()
        except OSError as exc:
            return exc
    outcome: list[list[str] | BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append(lookup())
        except BaseException as exc:  # handed to the waiting thread
            outcome.append(exc)
        finally:
            done.set()

    # getaddrinfo has no timeout of its own: a lookup stuck in the system resolver keeps
    # its daemon thread until the resolver gives up, but no delivery waits for it.
    threading.Thread(target=run, name="webhook-resolve", daemon=True).start()
    if not done.wait(max(timeout, 0.0)):
        return None
    result = outcome[0]
    if isinstance(result, OSError):
        return result
    if isinstance(result, BaseException):
        raise result
    return result
