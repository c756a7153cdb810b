"""The SSRF guard of result downloads: hostile URLs are refused before any socket is opened.

This machine may only send traffic to loopback. Every test that could reach another address
injects a connector that never opens a socket to it: `FakeInternet.connect` answers from memory
for its few made-up public addresses and fails the test for anything else, `loopback_only`
connects to 127.0.0.1 and fails the test for anything else."""

from __future__ import annotations

import http.server
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

import httpcore
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import ConfigError, DownloadFailed, DownloadRefused
from shared.settings import Settings
from workers.fetch import FetchLimits, ResultFetcher, create_http_client
from workers.guard import (
    Connector,
    FetchPolicy,
    GuardedTransport,
    check_url,
    create_guarded_transport,
    guarded_transport_from_settings,
    is_blocked,
)
from workers.sniff import PNG

#: A 1x1 PNG's chunks, its header (IHDR), a comment and its end (IEND), CRCs left zero: a PNG is
#: stored only whole, whatever its framing.
PNG_BODY = (
    b"\x89PNG\r\n\x1a\n"
    + b"\x00\x00\x00\rIHDR"
    + b"\x00\x00\x00\x01" * 2
    + bytes(5 + 4)
    + b"\x00\x00\x00\x3btEXt"
    + bytes(0x3B + 4)
    + b"\x00\x00\x00\x00IEND\xaeB`\x82"
)

#: Made-up public addresses the fake internet answers for; nothing ever connects to them.
PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:4700::6810:84e5"

#: The injected resolver's answers.
DNS: dict[str, list[str]] = {
    "public.example": [PUBLIC_V4],
    "public6.example": [PUBLIC_V6],
    "localhost": ["127.0.0.1", "::1"],
    "localhost.": ["127.0.0.1", "::1"],
    "metadata.google.internal": ["169.254.169.254"],
    "internal.example": ["10.1.2.3"],
    "v6internal.example": ["fd12:3456::1"],
    "mixed.example": [PUBLIC_V4, "10.0.0.5"],
    "rebind.example": ["::ffff:127.0.0.1"],
    "nat64.example": ["64:ff9b::a00:1"],
    "siit.example": ["::ffff:0:a00:1"],
    "siit-loopback.example": ["::ffff:0:7f00:1"],
    "siit-public.example": ["::ffff:0:5db8:d70e"],
    "alibaba.example": ["100.100.100.200"],
    "127.0.0.1.nip.io": ["127.0.0.1"],
    "minio.internal": ["10.9.8.7"],
}


def redirect_to(target: str) -> str:
    """A public URL whose fake server answers 302 to ``target``."""
    return f"http://public.example/redirect/{quote(target, safe='')}"


class FakeStream(httpcore.NetworkStream):
    """A made-up public server in memory: answers each request by its path."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.sni: str | None = None
        self._pending = b""

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        self.requests.append(buffer)
        path = unquote(buffer.split(b" ", 2)[1].decode())
        if path == "/redirect-long":
            self._pending += _response(302, [("Location", "/image.png?" + "a" * 5000)], b"")
        elif path.startswith("/redirect/"):
            self._pending += _response(302, [("Location", path.removeprefix("/redirect/"))], b"")
        elif path.split("?")[0] == "/image.png":
            self._pending += _response(200, [("Content-Type", "image/png")], PNG_BODY)
        else:
            self._pending += _response(404, [], b"")

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        chunk, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return chunk

    def close(self) -> None:
        pass

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        self.sni = server_hostname
        return self

    def get_extra_info(self, info: str) -> Any:
        return None


def _response(status: int, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class RecordingConnector:
    """A connector that records every connection asked for, opens those to ``reachable`` with
    ``opener`` and fails the test for any other address."""

    reachable: frozenset[str]
    opener: Callable[..., httpcore.NetworkStream]
    connects: list[tuple[str, int]] = field(default_factory=list)

    def __call__(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        self.connects.append((host, port))
        if host not in self.reachable:
            raise AssertionError(f"the guard let a connection to {host}:{port} through")
        return self.opener(host, port, timeout, local_address, socket_options)


@dataclass
class FakeInternet:
    """The injected resolver and connector: records every lookup and every connection asked for;
    connections to the made-up public addresses get an in-memory server."""

    resolved: list[str] = field(default_factory=list)
    streams: list[FakeStream] = field(default_factory=list)
    connect: RecordingConnector = field(init=False)

    def __post_init__(self) -> None:
        self.connect = RecordingConnector(frozenset({PUBLIC_V4, PUBLIC_V6}), self._open)

    @property
    def connects(self) -> list[tuple[str, int]]:
        return self.connect.connects

    def resolve(self, host: str, port: int) -> list[str]:
        self.resolved.append(host)
        if host not in DNS:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return DNS[host]

    def _open(self, *args: Any) -> httpcore.NetworkStream:
        stream = FakeStream()
        self.streams.append(stream)
        return stream


def make_fetcher(transport: httpx.BaseTransport) -> ResultFetcher:
    client = create_http_client(
        connect_timeout_s=2, read_timeout_s=2, max_redirects=3, max_connections=4, transport=transport
    )
    return ResultFetcher(client, FetchLimits(max_image_bytes=100_000, max_video_bytes=100_000))


@pytest.fixture
def internet() -> FakeInternet:
    return FakeInternet()


def guarded_fetcher(internet: FakeInternet, policy: FetchPolicy | None = None) -> ResultFetcher:
    transport = create_guarded_transport(
        policy or FetchPolicy(), resolver=internet.resolve, connector=internet.connect
    )
    return make_fetcher(transport)


# --- hostile URLs -----------------------------------------------------------------------

#: Refused from the URL alone: scheme, credentials, port, length, or an IP literal.
HOSTILE_LITERALS = [
    "http://127.0.0.1/",
    "http://127.0.0.53:80/",
    "http://10.0.0.1/",
    "https://10.0.0.1:443/",
    "http://172.16.0.1/",
    "http://172.31.255.254/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://100.100.100.200/latest/meta-data/",
    "http://168.63.129.16/machine",
    "http://192.0.0.192/opc/v1/instance/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://[fd00::1]/",
    "http://[fe80::1%25eth0]/",
    "http://[fe80::1]/",
    "http://[::ffff:10.0.0.1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::1]/",
    "http://[::]/",
    "http://[::127.0.0.1]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[::ffff:0:7f00:1]/",
    "http://[::ffff:0:10.0.0.1]/",
    "http://[::ffff:0:a9fe:a9fe]/",
    "http://[2002:7f00:1::]/",
    "http://[fec0::1]/",
    "http://[ff02::1]/",
    "http://0.0.0.0/",
    "http://0/",
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://0x7f.0.0.1/",
    "http://0x7f000001/",
    "http://127.1/",
    "http://10.1/",
    "http://1.2.3.4.5/",
    "http://127.0.0.1./",
    "http://224.0.0.1/",
    "http://255.255.255.255/",
    "http://100.64.0.1/",
    "http://198.18.0.1/",
    "http://192.0.2.1/",
    "ftp://public.example/a.png",
    "file:///etc/passwd",
    "gopher://public.example:70/_SLAVEOF",
    "dict://public.example:11211/stat",
    "http://user:pass@public.example/a.png",
    "http://user@public.example/a.png",
    "http://public.example:22/",
    "http://public.example:6379/",
    "http://public.example:8080/a.png",
    "http:///a.png",
    "http://public.example/" + "a" * 5000,
    "http://xn--zz.com/a.png",
    "http://xn--/",
]

#: Names the injected resolver maps to addresses the guard refuses.
HOSTILE_NAMES = [
    "http://localhost/",
    "http://localhost./",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://internal.example/",
    "http://v6internal.example/",
    "http://mixed.example/image.png",
    "http://rebind.example/",
    "http://nat64.example/",
    "http://siit.example/",
    "http://siit-loopback.example/",
    "http://alibaba.example/",
    "http://127.0.0.1.nip.io/",
    "https://internal.example/",
]

#: A public server redirects to a refused target.
HOSTILE_REDIRECTS = [
    redirect_to("http://10.0.0.1/image.png"),
    redirect_to("http://169.254.169.254/latest/meta-data/"),
    redirect_to("http://metadata.google.internal/computeMetadata/v1/"),
    redirect_to("http://[::1]:6379/"),
    redirect_to("http://2130706433/"),
    redirect_to("http://public.example:22/"),
    redirect_to("file:///etc/passwd"),
    redirect_to("gopher://public.example/_x"),
    redirect_to(redirect_to("http://internal.example/")),
    redirect_to("http://user:pass@public.example/image.png"),
    redirect_to("http://xn--zz.com/a.png"),
    "http://public.example/redirect-long",
]


def test_the_table_has_enough_hostile_urls() -> None:
    assert len(HOSTILE_LITERALS) + len(HOSTILE_NAMES) + len(HOSTILE_REDIRECTS) >= 35


@pytest.mark.parametrize("url", HOSTILE_LITERALS)
def test_hostile_literals_are_refused_by_the_url_check(url: str) -> None:
    with pytest.raises(DownloadRefused):
        check_url(url, FetchPolicy())


@pytest.mark.parametrize("url", HOSTILE_LITERALS + HOSTILE_NAMES)
def test_hostile_urls_are_refused_before_any_connection(internet: FakeInternet, url: str) -> None:
    with pytest.raises(DownloadRefused):
        guarded_fetcher(internet).fetch(url)
    assert internet.connects == []


@pytest.mark.parametrize("url", HOSTILE_NAMES)
def test_names_pass_the_url_check_and_are_refused_for_what_they_resolve_to(
    internet: FakeInternet, url: str
) -> None:
    check_url(url, FetchPolicy())
    with pytest.raises(DownloadRefused, match="is not allowed"):
        guarded_fetcher(internet).fetch(url)
    assert internet.resolved == [httpx.URL(url).host]
    assert internet.connects == []


@pytest.mark.parametrize("url", HOSTILE_REDIRECTS)
def test_redirects_to_hostile_targets_are_refused_before_connecting(internet: FakeInternet, url: str) -> None:
    with pytest.raises(DownloadRefused):
        guarded_fetcher(internet).fetch(url)
    # Only the public redirecting server was connected to, once per redirect hop it served.
    assert internet.connects
    assert set(internet.connects) == {(PUBLIC_V4, 80)}


@pytest.mark.parametrize("port", [0, 65536, 2**63])
@pytest.mark.parametrize("via", ["given", "redirect"])
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_port_no_tcp_connection_can_use_is_refused_before_resolving_or_connecting(
    internet: FakeInternet, host: str, port: int, via: str
) -> None:
    # Given an allow-listed host (any port goes there) named with a port outside 1-65535, as the
    # result URL or as the target of a public server's redirect
    policy = FetchPolicy.from_allow(["127.0.0.1", "localhost"])
    target = f"http://{host}:{port}/a.png"
    url = target if via == "given" else redirect_to(target)
    # When it is fetched
    with pytest.raises(DownloadRefused, match=f"port {port} is not a TCP port"):
        guarded_fetcher(internet, policy).fetch(url)
    # Then it is refused as an unusable URL (getaddrinfo would raise OverflowError, outside the
    # error tree), before the host is resolved or connected to
    assert internet.resolved == ([] if via == "given" else ["public.example"])
    assert internet.connects == ([] if via == "given" else [(PUBLIC_V4, 80)])


def test_a_name_with_one_public_and_one_private_address_is_refused(internet: FakeInternet) -> None:
    with pytest.raises(DownloadRefused, match=r"mixed\.example \(10\.0\.0\.5\).*private network"):
        guarded_fetcher(internet).fetch("http://mixed.example/image.png")
    assert internet.connects == []


def test_a_name_that_does_not_resolve_is_a_transient_failure(internet: FakeInternet) -> None:
    with pytest.raises(DownloadFailed):
        guarded_fetcher(internet).fetch("http://nowhere.example/image.png")
    assert internet.connects == []


# --- allowed targets -----------------------------------------------------------------------


def test_a_public_name_is_resolved_once_and_connected_by_its_checked_address(internet: FakeInternet) -> None:
    fetched = guarded_fetcher(internet).fetch("http://public.example/image.png")
    fetched.close()
    assert fetched.media == PNG
    assert internet.resolved == ["public.example"]
    assert internet.connects == [(PUBLIC_V4, 80)]
    assert b"Host: public.example\r\n" in internet.streams[0].requests[0]


def test_a_name_resolving_to_an_ipv4_translated_public_address_is_connected_to(
    internet: FakeInternet,
) -> None:
    # Given a name whose only answer is SIIT's IPv4-translated form of a public address
    siit_public = "::ffff:0:5db8:d70e"
    internet.connect.reachable = frozenset({siit_public})
    # When it is fetched
    fetched = guarded_fetcher(internet).fetch("http://siit-public.example/image.png")
    fetched.close()
    # Then the embedded public address passes the guard, and the checked answer is connected to
    assert fetched.media == PNG
    assert internet.connects == [(siit_public, 80)]


@pytest.mark.parametrize(
    ("allow", "url"),
    [
        ("siit-loopback.example", "http://siit-loopback.example/"),
        ("::ffff:0:0:0/96", "http://siit.example/"),
        ("::ffff:0:7f00:1", "http://[::ffff:0:7f00:1]/"),
    ],
)
def test_an_allow_listed_ipv4_translated_target_is_not_refused(
    internet: FakeInternet, allow: str, url: str
) -> None:
    # Given an allow-list naming the host, or the translated addresses themselves
    policy = FetchPolicy.from_allow([allow])
    # When the target is fetched, Then the guard lets it through to the connector (which, on this
    # machine, refuses every non-loopback address itself)
    with pytest.raises(AssertionError, match="the guard let a connection to ::ffff:0:"):
        guarded_fetcher(internet, policy).fetch(url)


def test_tls_still_names_the_original_host(internet: FakeInternet) -> None:
    fetched = guarded_fetcher(internet).fetch("https://public6.example/image.png")
    fetched.close()
    assert internet.connects == [(PUBLIC_V6, 443)]
    assert internet.streams[0].sni == "public6.example"


def test_a_redirect_between_public_hosts_is_followed(internet: FakeInternet) -> None:
    fetched = guarded_fetcher(internet).fetch(redirect_to("https://public6.example/image.png"))
    fetched.close()
    assert internet.connects == [(PUBLIC_V4, 80), (PUBLIC_V6, 443)]


def test_allow_entries_parse_hosts_addresses_and_networks() -> None:
    policy = FetchPolicy.from_allow(["127.0.0.1", " ::1", "LocalHost.", "10.0.0.0/8", ""])
    assert policy.allow_hosts == frozenset({"localhost"})
    assert policy.allow_networks == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("10.0.0.0/8"),
    )


@pytest.mark.parametrize("entry", ["http://minio", "10.0.0.0/33", "1.2.3.4.5", "two words"])
def test_an_unusable_allow_entry_is_a_config_error(entry: str) -> None:
    with pytest.raises(ConfigError, match="MJHOOK_FETCH_ALLOW"):
        FetchPolicy.from_allow([entry])


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://127.0.0.1:8333/a.png",
        "http://2130706433/",
        "http://[::ffff:127.0.0.1]:9000/",
        "http://10.2.3.4:9000/a.png",
        "http://localhost:8080/",
    ],
)
def test_allow_listed_addresses_and_networks_pass_on_any_port(url: str) -> None:
    policy = FetchPolicy.from_allow(["127.0.0.1", "localhost", "10.0.0.0/8"])
    assert check_url(url, policy).allow_listed


def test_an_allow_listed_network_admits_names_resolving_into_it(internet: FakeInternet) -> None:
    policy = FetchPolicy.from_allow(["10.0.0.0/8"])
    with pytest.raises(AssertionError, match=r"connection to 10\.9\.8\.7:80"):
        guarded_fetcher(internet, policy).fetch("http://minio.internal/a.png")
    # Still refused: the rest of private space, and odd ports on names not in the list.
    with pytest.raises(DownloadRefused, match=r"172\.16"):
        check_url("http://172.16.0.1/", policy)
    with pytest.raises(DownloadRefused, match="port 9000"):
        check_url("http://minio.internal:9000/", policy)


def test_settings_build_the_policy_from_the_environment() -> None:
    settings = Settings.from_env({"MJHOOK_FETCH_ALLOW": "127.0.0.1,::1,localhost,10.0.0.0/8"})
    assert isinstance(guarded_transport_from_settings(settings), GuardedTransport)
    with pytest.raises(ConfigError):
        guarded_transport_from_settings(Settings(fetch_allow=("http://x/",)))


# --- blocked address ranges (no sockets) ---------------------------------------------------

BLOCKED_V4 = [
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
]
BLOCKED_V6 = [
    ipaddress.IPv6Network(n)
    for n in ("::/128", "::1/128", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8", "2001:db8::/32")
]


def _addresses_in(networks: list[Any]) -> st.SearchStrategy[Any]:
    return st.sampled_from(networks).flatmap(
        lambda net: st.integers(0, net.num_addresses - 1).map(lambda i: net[i])
    )


def _mapped(v4: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(0xFFFF_0000_0000 | int(v4))


def _nat64(v4: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | int(v4))


def _sixtofour(v4: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address((0x2002 << 112) | (int(v4) << 80))


def _translated(v4: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    """SIIT's IPv4-translated form, ``::ffff:0:a.b.c.d``."""
    return ipaddress.IPv6Address(0xFFFF_0000_0000_0000 | int(v4))


blocked_v4 = _addresses_in(BLOCKED_V4)
blocked_addresses = st.one_of(
    blocked_v4,
    _addresses_in(BLOCKED_V6),
    blocked_v4.map(_mapped),
    blocked_v4.map(_nat64),
    blocked_v4.map(_sixtofour),
    blocked_v4.map(_translated),
)


@given(blocked_addresses)
def test_addresses_in_blocked_ranges_are_always_refused(ip: Any) -> None:
    assert is_blocked(ip) is not None


@given(st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address))
def test_an_ipv4_address_and_its_ipv6_embeddings_get_the_same_verdict(v4: ipaddress.IPv4Address) -> None:
    verdict = is_blocked(v4) is None
    embeddings = (_mapped(v4), _nat64(v4), _translated(v4))
    assert all((is_blocked(v6) is None) == verdict for v6 in embeddings)
    if verdict:
        assert v4.is_global


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("169.254.169.254", "metadata"),
        ("127.0.0.1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("255.255.255.255", "broadcast"),
        ("::ffff:10.0.0.1", "IPv4-mapped 10.0.0.1: private"),
        ("64:ff9b::7f00:1", "NAT64 127.0.0.1: loopback"),
        ("::ffff:0:7f00:1", "IPv4-translated 127.0.0.1: loopback"),
        ("::ffff:0:a00:1", "IPv4-translated 10.0.0.1: private"),
        ("fd00::1", "unique local"),
        ("fe80::1%eth0", "link-local"),
    ],
)
def test_refusals_name_the_range(address: str, reason: str) -> None:
    assert reason in (is_blocked(ipaddress.ip_address(address)) or "")


@pytest.mark.parametrize(
    "address", ["93.184.215.14", "1.1.1.1", "2606:4700::1111", "64:ff9b::808:808", "::ffff:0:808:808"]
)
def test_public_addresses_are_not_blocked(address: str) -> None:
    assert is_blocked(ipaddress.ip_address(address)) is None


# --- real connections, loopback only -------------------------------------------------------


@dataclass
class LoopbackServer:
    port: int
    hits: list[str]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def loopback_server() -> Iterator[LoopbackServer]:
    hits: list[str] = []
    redirects = {
        "/redir-private": "http://10.0.0.1/image.png",
        "/redir-metadata": "http://169.254.169.254/latest/meta-data/",
        "/redir-self": "/image.png",
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            if self.path in redirects:
                self._answer(302, {"Location": redirects[self.path]})
            elif self.path == "/image.png":
                self._answer(200, {"Content-Type": "image/png"}, PNG_BODY)
            else:
                self._answer(404, {})

        def _answer(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    redirects["/redir-loopback2"] = f"http://127.0.0.2:{port}/image.png"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield LoopbackServer(port=port, hits=hits)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def loopback_only() -> RecordingConnector:
    """Real sockets to 127.0.0.1, and nowhere else."""
    return RecordingConnector(frozenset({"127.0.0.1"}), httpcore.SyncBackend().connect_tcp)


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"nothing here should be resolved, asked for {host}")


def loopback_fetcher(policy: FetchPolicy, connector: Connector) -> ResultFetcher:
    return make_fetcher(create_guarded_transport(policy, resolver=no_dns, connector=connector))


def test_an_allow_listed_loopback_server_is_fetched(loopback_server: LoopbackServer) -> None:
    connector = loopback_only()
    fetched = loopback_fetcher(FetchPolicy.from_allow(["127.0.0.1"]), connector).fetch(
        loopback_server.url("/redir-self")
    )
    fetched.close()
    assert fetched.media == PNG
    assert loopback_server.hits == ["/redir-self", "/image.png"]
    assert set(connector.connects) == {("127.0.0.1", loopback_server.port)}


@pytest.mark.parametrize(
    ("policy", "reason"),
    [(FetchPolicy(), "port"), (FetchPolicy(ports=frozenset({0})), "loopback")],
    ids=["default-ports", "port-allowed"],
)
def test_loopback_is_refused_without_the_allow_list(
    loopback_server: LoopbackServer, policy: FetchPolicy, reason: str
) -> None:
    # Let the server's port through when asked, so the address check is what refuses.
    if policy.ports == frozenset({0}):
        policy = FetchPolicy(ports=frozenset({loopback_server.port}))
    connector = loopback_only()
    with pytest.raises(DownloadRefused, match=reason):
        loopback_fetcher(policy, connector).fetch(loopback_server.url("/image.png"))
    assert loopback_server.hits == []
    assert connector.connects == []


@pytest.mark.parametrize("path", ["/redir-private", "/redir-metadata", "/redir-loopback2"])
def test_a_redirect_from_an_allowed_server_to_a_blocked_address_is_refused(
    loopback_server: LoopbackServer, path: str
) -> None:
    connector = loopback_only()
    with pytest.raises(DownloadRefused, match="not allowed"):
        loopback_fetcher(FetchPolicy.from_allow(["127.0.0.1"]), connector).fetch(loopback_server.url(path))
    assert loopback_server.hits == [path]
    assert connector.connects == [("127.0.0.1", loopback_server.port)]


def test_the_worker_transport_fetches_from_an_allow_listed_loopback_server(
    loopback_server: LoopbackServer,
) -> None:
    # The production resolver and connector: the URL is a loopback literal and the server does
    # not redirect, so nothing but 127.0.0.1 can be reached.
    settings = Settings.from_env({"MJHOOK_FETCH_ALLOW": "127.0.0.1"})
    fetched = make_fetcher(guarded_transport_from_settings(settings)).fetch(loopback_server.url("/image.png"))
    fetched.close()
    assert fetched.size == len(PNG_BODY)
    assert loopback_server.hits == ["/image.png"]


def test_settings_choose_the_ports_allowed_on_other_hosts() -> None:
    # Refused at the URL check, before any name is resolved or socket opened.
    transport = guarded_transport_from_settings(Settings.from_env({"MJHOOK_FETCH_PORTS": "443"}))
    with httpx.Client(transport=transport) as client, pytest.raises(DownloadRefused, match="port 80"):
        client.get("http://public.example/a.png")
