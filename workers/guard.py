"""The SSRF guard of result downloads: which URLs and addresses the fetcher may reach.

Result URLs come from the internet but are fetched from inside the operator's network, so a
hostile URL must not reach loopback, private networks or cloud metadata. The guard checks every
request (each redirect hop too: the fetcher sends every hop as a request of its own) and again the
address actually connected to: the host is resolved once, every answer is checked, and the socket
goes to a checked address, so no second DNS answer (rebinding) decides where a connection goes."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpcore
import httpx

from shared.allow_list import IPAddress, IPNetwork, normal_host, parse_allow_entry, parse_ip_literal
from shared.errors import ConfigError, DownloadRefused
from shared.http_backend import WaitLimitedBackend, pool_over
from shared.settings import Settings

#: The only schemes a result URL may ever use.
SAFE_SCHEMES = frozenset({"http", "https"})
#: Ports a result URL may name unless its host is in the allow-list.
DEFAULT_PORTS = frozenset({80, 443})
#: Longest result URL accepted, in characters.
DEFAULT_MAX_URL_LENGTH = 4096
#: The ports TCP has; a URL may spell any number, and getaddrinfo fails outside the error tree
#: (OverflowError) on one past them.
TCP_PORTS = range(1, 65536)
#: Resolved addresses tried, in order, before a connection counts as failed; bounds the connect
#: time to this many connect timeouts.
DEFAULT_MAX_ADDRESSES_TRIED = 4
#: Name lookups a process may have waiting on the resolver at once, including those a download
#: gave up on (``getaddrinfo`` cannot be stopped): a resolver that hangs holds at most this many
#: threads, and downloads beyond them fail for now, within their connect timeout.
MAX_PENDING_LOOKUPS = 64

_SCHEME_PORTS = {"http": 80, "https": 443}
#: IPv6 ranges whose last 32 bits are an IPv4 address a translator forwards to, each with the
#: name a refusal gives it: NAT64 (RFC 6052) and SIIT's IPv4-translated form (RFC 2765,
#: ``::ffff:0:a.b.c.d``; not the IPv4-mapped ``::ffff:a.b.c.d``).
_TRANSLATED_IPV4 = (
    (ipaddress.IPv6Network("64:ff9b::/96"), "NAT64"),
    (ipaddress.IPv6Network("::ffff:0:0:0/96"), "IPv4-translated"),
)


def _table(*rows: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(network), reason) for network, reason in rows)


#: Special-purpose ranges (IANA registries plus cloud endpoints), each with the reason a refusal
#: names. The first match wins, so narrower ranges come before the ranges containing them.
BLOCKED_NETWORKS = _table(
    ("169.254.169.254/32", "cloud metadata endpoint"),
    ("168.63.129.16/32", "Azure platform endpoint"),
    ("0.0.0.0/32", "unspecified address"),
    ("0.0.0.0/8", "'this network' (0/8)"),
    ("10.0.0.0/8", "private network (10/8)"),
    ("100.64.0.0/10", "carrier-grade NAT (100.64/10)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (169.254/16)"),
    ("172.16.0.0/12", "private network (172.16/12)"),
    ("192.0.0.0/24", "IETF protocol assignments (192.0.0/24)"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private network (192.168/16)"),
    ("198.18.0.0/15", "benchmarking (198.18/15)"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved (240/4)"),
    ("::/128", "unspecified address"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible IPv6 (deprecated)"),
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("100::/64", "discard-only (100::/64)"),
    ("2001::/23", "IETF protocol assignments (2001::/23, incl. Teredo)"),
    ("2001:db8::/32", "documentation (2001:db8::/32)"),
    ("3fff::/20", "documentation (3fff::/20)"),
    ("5f00::/16", "SRv6 segment identifiers"),
    ("fc00::/7", "unique local address (fc00::/7)"),
    ("fe80::/10", "link-local (fe80::/10)"),
    ("fec0::/10", "site-local (fec0::/10, deprecated)"),
    ("ff00::/8", "multicast"),
)


def is_blocked(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be fetched from, or None when it is a public unicast address. An IPv6
    address embedding an IPv4 one (IPv4-mapped, 6to4, NAT64, SIIT's IPv4-translated) gets the
    verdict of the IPv4 one."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            kind, inner = embedded
            reason = is_blocked(inner)
            return None if reason is None else f"{kind} {inner}: {reason}"
    for network, reason in BLOCKED_NETWORKS:
        if ip in network:
            return reason
    # Whatever the table misses, the interpreter's copy of the IANA registries catches.
    if not ip.is_global:
        return "not globally routable"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", ip.ipv4_mapped
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    for network, kind in _TRANSLATED_IPV4:
        if ip in network:
            return kind, ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """What a result download may reach. Build it with :meth:`from_allow`."""

    #: A subset of http and https.
    schemes: frozenset[str] = SAFE_SCHEMES
    #: Ports a URL may name unless its host is allow-listed (then any port goes).
    ports: frozenset[int] = DEFAULT_PORTS
    #: Hostnames (lower case, no trailing dot) reachable whatever they resolve to.
    allow_hosts: frozenset[str] = frozenset()
    #: Networks reachable although private, loopback or otherwise blocked.
    allow_networks: tuple[IPNetwork, ...] = ()
    #: Longest URL accepted, in characters.
    max_url_length: int = DEFAULT_MAX_URL_LENGTH

    def __post_init__(self) -> None:
        if not self.schemes or not self.schemes <= SAFE_SCHEMES:
            raise ConfigError(f"fetch schemes must be among http, https, not {sorted(self.schemes)}")

    @classmethod
    def from_allow(
        cls,
        entries: Sequence[str],
        *,
        ports: Iterable[int] = DEFAULT_PORTS,
        max_url_length: int = DEFAULT_MAX_URL_LENGTH,
    ) -> FetchPolicy:
        """A policy from ``MJHOOK_FETCH_ALLOW``-style entries: hostnames (matched exactly, case
        and trailing dot aside), IP addresses or CIDR networks. Raises :class:`ConfigError` for
        an entry that is none of these."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            if not entry.strip():
                continue
            try:
                parsed = parse_allow_entry(entry)
            except ValueError as exc:
                raise ConfigError(f"MJHOOK_FETCH_ALLOW: {exc}") from None
            if isinstance(parsed, str):
                hosts.add(parsed)
            else:
                networks.append(parsed)
        return cls(
            ports=frozenset(ports),
            allow_hosts=frozenset(hosts),
            allow_networks=tuple(dict.fromkeys(networks)),
            max_url_length=max_url_length,
        )

    def allows_host(self, host: str) -> bool:
        """Whether ``host`` is an allow-listed hostname."""
        return normal_host(host) in self.allow_hosts

    def allows_address(self, ip: IPAddress) -> bool:
        """Whether ``ip`` (or the IPv4 address it maps) lies in an allow-listed network."""
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(candidate in network for candidate in candidates for network in self.allow_networks)


@dataclass(frozen=True, slots=True)
class ParsedTarget:
    """Where a checked URL points."""

    #: "http" or "https".
    scheme: str
    #: Lower case, without brackets or trailing dot.
    host: str
    #: The URL's port, or the scheme's default.
    port: int
    #: The address when the host is an IP literal (in any spelling), else None.
    ip: IPAddress | None
    #: The host or its address is in the allow-list: any port, any address goes.
    allow_listed: bool


def check_url(url: str | httpx.URL, policy: FetchPolicy) -> ParsedTarget:
    """Where ``url`` points, if ``policy`` lets the fetcher go there. Raises
    :class:`DownloadRefused` with the reason otherwise. Parses with httpx, so the host checked is
    the host httpx would connect to. A hostname is not resolved here; the transport checks what
    it resolves to."""
    text = str(url)
    if len(text) > policy.max_url_length:
        raise DownloadRefused(f"URL of {len(text)} characters is over the {policy.max_url_length} limit")
    try:
        parsed = httpx.URL(url)
        parsed.host  # noqa: B018 - decodes an xn-- label as httpx will for the Host header
    except httpx.InvalidURL as exc:
        raise DownloadRefused(f"unusable URL: {exc}") from None
    except UnicodeError as exc:
        raise DownloadRefused(f"unusable URL: the host is not a valid IDNA name ({exc})") from None
    if parsed.scheme not in policy.schemes:
        raise DownloadRefused(f"scheme {parsed.scheme!r} is not allowed (only http and https)")
    if parsed.userinfo:
        raise DownloadRefused("credentials in the URL are not allowed")
    port = parsed.port if parsed.port is not None else _SCHEME_PORTS[parsed.scheme]
    return check_target(parsed.scheme, parsed.raw_host.decode("ascii"), port, policy)


def check_target(scheme: str, host: str, port: int, policy: FetchPolicy) -> ParsedTarget:
    """The host and port part of :func:`check_url`, also run by the transport at connect time."""
    name = normal_host(host)
    if not name:
        raise DownloadRefused("the URL has no host")
    if port not in TCP_PORTS:
        raise DownloadRefused(f"unusable URL: port {port} is not a TCP port (1-65535)")
    ip = parse_ip_literal(name)
    allow_listed = policy.allows_host(name) or (ip is not None and policy.allows_address(ip))
    if not allow_listed and port not in policy.ports:
        allowed = ", ".join(str(p) for p in sorted(policy.ports))
        raise DownloadRefused(f"port {port} is not allowed (only {allowed} outside the allow-list)")
    if ip is not None and not allow_listed:
        _refuse_blocked(name, ip)
    return ParsedTarget(scheme=scheme, host=name, port=port, ip=ip, allow_listed=allow_listed)


def check_addresses(target: ParsedTarget, answers: Iterable[str], policy: FetchPolicy) -> list[IPAddress]:
    """The resolved ``answers`` for ``target``, parsed and deduplicated in order, if every one of
    them may be reached; one blocked answer refuses the host (:class:`DownloadRefused`)."""
    checked: list[IPAddress] = []
    for answer in answers:
        try:
            ip = ipaddress.ip_address(answer)
        except ValueError:
            raise DownloadRefused(f"{target.host} resolved to {answer!r}, not an address") from None
        if not (target.allow_listed or policy.allows_address(ip)):
            _refuse_blocked(target.host, ip)
        if ip not in checked:
            checked.append(ip)
    return checked


def _refuse_blocked(host: str, ip: IPAddress) -> None:
    reason = is_blocked(ip)
    if reason is not None:
        where = str(ip) if host == str(ip) else f"{host} ({ip})"
        raise DownloadRefused(f"address {where} is not allowed: {reason}")


#: Resolves a hostname and port to IP address strings.
Resolver = Callable[[str, int], Iterable[str]]


def resolve_host(host: str, port: int) -> list[str]:
    """The addresses ``socket.getaddrinfo`` gives for ``host``, in its order (the default
    resolver)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class Connector(Protocol):
    """Opens a TCP connection to an IP address: ``httpcore.SyncBackend().connect_tcp``'s shape."""

    def __call__(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream: ...


class GuardedBackend(httpcore.NetworkBackend):
    """An httpcore network backend that resolves once, checks every answer and connects the
    socket to a checked address. TLS still names the original host (httpcore passes the URL's
    host as SNI to ``start_tls``), and so does the Host header."""

    def __init__(
        self,
        policy: FetchPolicy,
        *,
        resolver: Resolver = resolve_host,
        connector: Connector | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_lookups: int = MAX_PENDING_LOOKUPS,
    ) -> None:
        self._policy = policy
        self._resolver = resolver
        self._connector: Connector = connector or httpcore.SyncBackend().connect_tcp
        self._clock = clock
        #: One slot per lookup thread until its resolver returns, given up on or not: a resolver
        #: that hangs holds at most ``max_lookups`` threads of a process, not one per download.
        self._lookup_slots = threading.BoundedSemaphore(max_lookups)
        self._max_lookups = max_lookups

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        """Connect to a checked address of ``host``. ``timeout`` (the connect timeout, cut to what
        is left of the download's time by the wait-limited backend in front of this one) bounds
        the lookup and every connect attempt together, not each of them."""
        # The scheme was checked per request (handle_request); here the host and port count.
        target = check_target("tcp", host, port, self._policy)
        deadline = None if timeout is None else self._clock() + timeout
        errors: list[Exception] = []
        for ip in self._addresses(host, port, target, timeout)[:DEFAULT_MAX_ADDRESSES_TRIED]:
            left = None if deadline is None else deadline - self._clock()
            if left is not None and left <= 0:
                break
            try:
                return self._connector(str(ip), port, left, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                errors.append(exc)
        if not errors:  # the lookup took it all
            raise httpcore.ConnectTimeout(f"connecting to {host!r} took over {timeout:.1f} s")
        raise errors[-1]

    def _addresses(
        self, host: str, port: int, target: ParsedTarget, timeout: float | None
    ) -> list[IPAddress]:
        if target.ip is not None:
            return [target.ip]
        try:
            answers = self._lookup(host, port, timeout)
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from exc
        addresses = check_addresses(target, answers, self._policy)
        if not addresses:
            raise httpcore.ConnectError(f"{host!r} resolved to no address")
        return addresses

    def _lookup(self, host: str, port: int, timeout: float | None) -> list[str]:
        """The resolver's answers for ``host``, waited for at most ``timeout`` seconds (None: no
        bound): the connect timeout, cut to what is left of the download's time by the
        wait-limited backend in front of this one. ``getaddrinfo`` takes no timeout, so the lookup
        runs in a daemon thread of its own; one given up on ends when the resolver returns, its
        answers unused, and keeps its slot until then: with ``max_lookups`` threads waiting on the
        resolver, the next lookup waits for a slot within the same timeout. Raises
        ``httpcore.ConnectTimeout`` when the wait ends first: the download fails for now
        (:class:`DownloadFailed`, over its time or timed out)."""
        started = self._clock()
        if not self._lookup_slots.acquire(timeout=timeout):
            raise httpcore.ConnectTimeout(
                f"resolving {host!r}: {self._max_lookups} lookups still wait on the resolver"
            )
        outcome: list[list[str] | BaseException] = []

        def look_up() -> None:
            try:
                outcome.append(list(self._resolver(host, port)))
            except BaseException as exc:  # handed to the waiting thread, raised there
                outcome.append(exc)
            finally:
                self._lookup_slots.release()

        try:
            thread = threading.Thread(target=look_up, name="mjhook-lookup", daemon=True)
            thread.start()
        except BaseException:
            self._lookup_slots.release()
            raise
        thread.join(None if timeout is None else max(0.0, timeout - (self._clock() - started)))
        if not outcome:
            raise httpcore.ConnectTimeout(f"resolving {host!r} took over {timeout:.1f} s")
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise DownloadRefused("unix sockets are not allowed")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """An ``httpx.HTTPTransport`` that checks every request's URL (:func:`check_url`) and
    connects through a :class:`GuardedBackend`. Build it with :func:`create_guarded_transport`."""

    def __init__(
        self,
        policy: FetchPolicy,
        *,
        backend: GuardedBackend,
        limits: httpx.Limits,
        verify: bool | ssl.SSLContext = True,
    ) -> None:
        # trust_env off, as in create_http_client: nothing in the environment steers downloads.
        ssl_context = httpx.create_ssl_context(verify=verify, trust_env=False)
        super().__init__(verify=ssl_context, limits=limits, trust_env=False)
        self._policy = policy
        # The pool HTTPTransport built would connect on its own; this one connects through the
        # guard, and waits on sockets no longer than a download's minimum rate allows (fetch.py).
        self._pool = pool_over(WaitLimitedBackend(backend), ssl_context=ssl_context, limits=limits)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        check_url(request.url, self._policy)
        return super().handle_request(request)


def create_guarded_transport(
    policy: FetchPolicy,
    *,
    resolver: Resolver = resolve_host,
    connector: Connector | None = None,
    limits: httpx.Limits | None = None,
    verify: bool | ssl.SSLContext = True,
) -> GuardedTransport:
    """A transport for :func:`workers.fetch.create_http_client` that only reaches what ``policy``
    allows. ``resolver`` defaults to ``socket.getaddrinfo``, ``connector`` to httpcore's own
    socket opener; ``limits`` default to httpx's (a client's ``limits`` do not reach a transport
    passed to it); ``verify``: certificates checked against certifi's CAs (True), or a context
    of one's own (a test's CA)."""
    backend = GuardedBackend(policy, resolver=resolver, connector=connector)
    return GuardedTransport(policy, backend=backend, limits=limits or httpx.Limits(), verify=verify)


def guarded_transport_from_settings(
    settings: Settings, *, max_connections: int | None = None
) -> GuardedTransport:
    """The guarded transport of a worker process: allow-list ``fetch_allow``, ports
    ``fetch_ports`` (for hosts not on the allow-list), URL limit
    ``max_url_length``, and a pool of ``max_connections`` (default: twice
    ``download_concurrency``, as the worker's client asks for)."""
    connections = max_connections if max_connections is not None else settings.download_concurrency * 2
    policy = FetchPolicy.from_allow(
        settings.fetch_allow, ports=settings.fetch_ports, max_url_length=settings.max_url_length
    )
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return create_guarded_transport(policy, limits=limits)
