"""How a host names an address, and what an entry of ``MJHOOK_FETCH_ALLOW`` (or of an address
list: ``MJHOOK_CALLBACK_ALLOW_FROM``, ``MJHOOK_TRUSTED_PROXIES``) is. Read the same way by the
settings, which refuse an unusable entry at start-up, and by the fetcher's SSRF guard
(workers/guard.py) and the ingress's source filter (ingress/sources.py), which use them."""

from __future__ import annotations

import ipaddress
import re
import socket

from shared.errors import DownloadRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# WHATWG URL: a host whose last label is a number is an IPv4 address or invalid, never a name.
_ENDS_IN_NUMBER = re.compile(r"(?:^|\.)(?:[0-9]+|0x[0-9a-f]*)$")
_HOSTNAME = re.compile(
    r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*"
)


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells, read the way a resolver reads it: IPv4 in any form
    ``inet_aton`` takes (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``), IPv6 with or
    without brackets and with a zone id (``fe80::1%25eth0``); None for a hostname. A host that
    ends in a number but is no address is refused (:class:`DownloadRefused`)."""
    text = normal_host(host)
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text.replace("%25", "%", 1))
        except ValueError:
            raise DownloadRefused(f"malformed IPv6 host {host!r}") from None
    if not _ENDS_IN_NUMBER.search(text):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        raise DownloadRefused(f"malformed numeric host {host!r}") from None


def normal_host(host: str) -> str:
    """``host`` as hosts are compared: lower case, without brackets or a trailing dot."""
    text = host.lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return text.removesuffix(".")


def parse_allow_entry(entry: str) -> IPNetwork | str:
    """The network (an address is a network of one) or the hostname (:func:`normal_host`) an
    allow-list entry names, blanks around it aside. Raises ValueError for an entry that is none
    of these (the entry, no secret, is quoted)."""
    text = normal_host(entry.strip())
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        pass
    try:
        ip = parse_ip_literal(text)
    except DownloadRefused:
        ip = None
    if ip is not None:
        return ipaddress.ip_network(ip)
    if not _HOSTNAME.fullmatch(text) or _ENDS_IN_NUMBER.search(text):
        raise ValueError(f"{entry!r} is not a hostname, IP address or CIDR network")
    return text


def parse_network(entry: str) -> IPNetwork:
    """The network an entry of an address list names (an address is a network of one; brackets
    around an IPv6 one and blanks around it aside). Raises ValueError for anything else (the
    entry, no secret, is quoted)."""
    try:
        return ipaddress.ip_network(entry.strip().strip("[]"), strict=False)
    except ValueError:
        raise ValueError(f"{entry!r} is not an IP address or CIDR network") from None
