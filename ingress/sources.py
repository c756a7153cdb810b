"""Which network addresses may deliver callbacks.

The client address is the TCP peer, unless that peer is one of our own trusted proxies: then
it is read from the proxy's header (``X-Forwarded-For`` style, or RFC 7239 ``Forwarded``),
walking the chain from the right and stopping at the first address that is not a trusted
proxy. Everything left of that point was written by the client and is ignored, so a sender
cannot pick its own address by sending the header itself."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

from shared.allow_list import parse_network
from shared.errors import ConfigError, InvalidCallback

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The RFC 7239 header, read by its own rules (``for=`` parameters); any other header name is
#: read as a comma-separated address list (``X-Forwarded-For``, ``X-Real-IP``).
FORWARDED_HEADER = "forwarded"
#: Longest client address a caller gets back when the chain holds something unreadable.
_MAX_ECHO_CHARS = 64
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


class SourceFilter:
    """Refuses callbacks from addresses outside ``allow`` (IPs or CIDR networks; empty: allow
    all). ``trusted_proxy_header`` is honoured only on requests whose TCP peer lies in
    ``trusted_proxies`` (IPs or CIDR networks). IPv4-mapped IPv6 addresses count as IPv4."""

    def __init__(
        self,
        allow: Sequence[str],
        *,
        trusted_proxy_header: str | None = None,
        trusted_proxies: Sequence[str] = (),
    ) -> None:
        self._allow = _parse_networks(allow, "MJHOOK_CALLBACK_ALLOW_FROM")
        self._proxies = _parse_networks(trusted_proxies, "MJHOOK_TRUSTED_PROXIES")
        header = (trusted_proxy_header or "").strip().lower()
        self._header = header or None
        if self._header and not self._proxies:
            raise ConfigError("a trusted proxy header needs MJHOOK_TRUSTED_PROXIES: whose header to trust")

    @property
    def allows_all(self) -> bool:
        """True when no allow list is set: :meth:`check` never refuses."""
        return not self._allow

    def client_address(self, remote_addr: str | None, headers: Mapping[str, str]) -> str:
        """The address the request comes from: the TCP peer ``remote_addr``, or, when the peer
        is a trusted proxy, the right-most address of the proxy header that is not a trusted
        proxy (the left-most one when all are). Unreadable text comes back cut short."""
        peer = parse_address(remote_addr or "")
        if peer is None:
            return _echo(remote_addr or "")
        if self._header is None or not self._is_proxy(peer):
            return str(peer)
        hops = _forwarded_hops(_header_value(headers, self._header), self._header)
        client: IPAddress = peer
        for hop in reversed(hops):
            address = parse_address(hop)
            if address is None:
                # Our own proxy writes addresses; anything else here is refused, not guessed at.
                return _echo(hop)
            client = address
            if not self._is_proxy(address):
                break
        return str(client)

    def check(self, remote_addr: str | None, headers: Mapping[str, str]) -> None:
        """Raise :class:`InvalidCallback` (status 403) unless the client address is allowed."""
        if not self._allow:
            return
        address = parse_address(self.client_address(remote_addr, headers))
        if address is None or not any(address in network for network in self._allow):
            raise InvalidCallback("source address not allowed", status=403)

    def _is_proxy(self, address: IPAddress) -> bool:
        return any(address in network for network in self._proxies)


def parse_address(text: str) -> IPAddress | None:
    """The IP address ``text`` spells, or None. Accepts ``1.2.3.4``, ``1.2.3.4:5678``,
    ``::1``, ``[::1]``, ``[::1]:5678`` and quoted forms; drops an IPv6 zone id; turns an
    IPv4-mapped IPv6 address into its IPv4 address."""
    token = text.strip().strip('"')
    if token.startswith("["):
        token = token[1:].split("]", 1)[0]
    elif token.count(":") == 1:
        token = token.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(token.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _parse_networks(entries: Sequence[str], setting: str) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    for entry in entries:
        if not entry.strip():
            continue
        try:
            network = parse_network(entry)
        except ValueError as exc:
            raise ConfigError(f"{setting}: {exc}") from None
        networks.append(_unmapped(network))
    return tuple(dict.fromkeys(networks))


def _unmapped(network: IPNetwork) -> IPNetwork:
    """``::ffff:10.0.0.0/104`` as ``10.0.0.0/8``: peers are compared in their IPv4 form."""
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_IPV4_MAPPED):
        base = network.network_address.ipv4_mapped
        if base is not None:
            return ipaddress.IPv4Network((base, network.prefixlen - 96))
    return network


def _header_value(headers: Mapping[str, str], name: str) -> str:
    """The value of header ``name``, whatever the case of the keys of ``headers``."""
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return ""


def _forwarded_hops(value: str, header: str) -> list[str]:
    """The addresses of a proxy header, client first: RFC 7239 ``for=`` values, or the items of
    a comma-separated list. Several headers of one name arrive joined by commas (falcon joins them)."""
    items = [item.strip() for item in value.split(",")]
    if header != FORWARDED_HEADER:
        return [item for item in items if item]
    hops: list[str] = []
    for element in filter(None, items):
        nodes = [
            node.strip()
            for name, _, node in (pair.partition("=") for pair in element.split(";"))
            if name.strip().lower() == "for"
        ]
        # An element without ``for=`` is a hop we cannot place: kept as unreadable, not skipped.
        hops.append(nodes[0] if nodes else "")
    return hops


def _echo(text: str) -> str:
    return text.strip()[:_MAX_ECHO_CHARS]
