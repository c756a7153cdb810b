"""Who may deliver callbacks: the TCP peer, or the address our own proxy saw."""

from __future__ import annotations

import pytest

from ingress.sources import SourceFilter, parse_address
from shared.errors import ConfigError, InvalidCallback

PROVIDER = "203.0.113.7"
PROXY = "10.0.0.2"
XFF = "X-Forwarded-For"


def allowed(source: SourceFilter, remote_addr: str | None, headers: dict[str, str] | None = None) -> bool:
    """Whether ``check`` lets the request through; a refusal must be the one 403."""
    refusal: InvalidCallback | None = None
    try:
        source.check(remote_addr, headers or {})
    except InvalidCallback as exc:
        refusal = exc
    if refusal is None:
        return True
    assert (refusal.status, refusal.reason) == (403, "source address not allowed")
    return False


def behind_proxy(allow: tuple[str, ...] = ("203.0.113.0/24",), header: str = XFF) -> SourceFilter:
    return SourceFilter(allow, trusted_proxy_header=header, trusted_proxies=("10.0.0.0/24", "fd00::/64"))


# --- no proxy -------------------------------------------------------------------------------


def test_an_empty_allow_list_allows_everyone() -> None:
    source = SourceFilter(())
    assert source.allows_all
    assert allowed(source, "198.51.100.1")
    assert allowed(source, None)


@pytest.mark.parametrize(
    ("remote_addr", "expected"),
    [
        ("203.0.113.7", True),
        ("203.0.113.255", True),
        ("203.0.114.1", False),
        ("2001:db8::5", True),
        ("2001:db9::5", False),
        ("::ffff:203.0.113.7", True),  # an IPv4 peer on a dual-stack socket
        ("::ffff:198.51.100.1", False),
        ("", False),
        (None, False),
        ("not-an-address", False),
    ],
)
def test_the_peer_is_checked_against_ips_and_networks(remote_addr: str | None, expected: bool) -> None:
    source = SourceFilter(["203.0.113.0/24", "2001:db8::/32", "192.0.2.1"])
    assert allowed(source, remote_addr) is expected


def test_an_ipv4_mapped_allow_entry_matches_ipv4_peers() -> None:
    source = SourceFilter(["::ffff:203.0.113.0/120"])
    assert allowed(source, "203.0.113.9")
    assert allowed(source, "::ffff:203.0.113.9")
    assert not allowed(source, "203.0.114.9")


def test_a_forwarded_header_from_an_untrusted_peer_is_ignored() -> None:
    # Given no trusted proxy at all: a sender cannot choose its address with the header
    source = SourceFilter([PROVIDER])
    assert not allowed(source, "198.51.100.1", {XFF: PROVIDER})
    assert source.client_address("198.51.100.1", {XFF: PROVIDER}) == "198.51.100.1"


# --- behind a trusted proxy -----------------------------------------------------------------


def test_the_header_names_the_client_when_the_peer_is_a_trusted_proxy() -> None:
    source = behind_proxy()
    assert source.client_address(PROXY, {XFF: PROVIDER}) == PROVIDER
    assert allowed(source, PROXY, {XFF: PROVIDER})
    assert not allowed(source, PROXY, {XFF: "198.51.100.1"})


def test_the_header_is_ignored_when_the_peer_is_not_a_trusted_proxy() -> None:
    source = behind_proxy()
    assert source.client_address("198.51.100.1", {XFF: PROVIDER}) == "198.51.100.1"
    assert not allowed(source, "198.51.100.1", {XFF: PROVIDER})


def test_addresses_a_client_put_left_of_the_real_one_are_ignored() -> None:
    # Given a sender that sent "X-Forwarded-For: <provider>" itself; our proxy appended its address
    headers = {XFF: f"{PROVIDER}, 198.51.100.1"}
    source = behind_proxy()
    assert source.client_address(PROXY, headers) == "198.51.100.1"
    assert not allowed(source, PROXY, headers)


def test_trusted_hops_on_the_right_are_skipped() -> None:
    # Given a chain of two of our proxies (10.0.0.3 forwarded to 10.0.0.2)
    headers = {XFF: f"198.51.100.1, {PROVIDER}, 10.0.0.3"}
    assert behind_proxy().client_address(PROXY, headers) == PROVIDER


def test_when_every_hop_is_trusted_the_left_most_is_the_client() -> None:
    assert behind_proxy().client_address(PROXY, {XFF: "10.0.0.5, 10.0.0.3"}) == "10.0.0.5"


def test_the_proxy_itself_is_the_client_when_it_sends_no_header() -> None:
    source = behind_proxy(allow=("10.0.0.0/24",))
    assert source.client_address(PROXY, {}) == PROXY
    assert allowed(source, PROXY, {})


@pytest.mark.parametrize("key", ["X-FORWARDED-FOR", "x-forwarded-for", "X-Forwarded-For"])
def test_header_names_match_whatever_their_case(key: str) -> None:
    assert behind_proxy().client_address(PROXY, {key: PROVIDER}) == PROVIDER


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"{PROVIDER}:54321", PROVIDER),
        ("[2001:db8::7]:443", "2001:db8::7"),
        ("2001:db8::7", "2001:db8::7"),
        ("::ffff:203.0.113.7", PROVIDER),
        (f"  {PROVIDER}  ,", PROVIDER),
    ],
)
def test_forwarded_addresses_with_ports_brackets_and_mapping_are_read(value: str, expected: str) -> None:
    assert behind_proxy().client_address(PROXY, {XFF: value}) == expected


def test_an_unreadable_hop_where_our_proxy_writes_is_refused_not_guessed() -> None:
    source = behind_proxy()
    headers = {XFF: f"{PROVIDER}, unknown"}
    assert source.client_address(PROXY, headers) == "unknown"
    assert not allowed(source, PROXY, headers)


def test_an_unreadable_hop_is_echoed_cut_short() -> None:
    assert len(behind_proxy().client_address(PROXY, {XFF: "x" * 10_000})) == 64


def test_ipv6_proxies_and_mapped_peers_are_recognised() -> None:
    source = behind_proxy()
    assert source.client_address("fd00::1", {XFF: PROVIDER}) == PROVIDER
    assert source.client_address("::ffff:10.0.0.2", {XFF: PROVIDER}) == PROVIDER


def test_x_real_ip_is_read_as_a_one_address_list() -> None:
    source = behind_proxy(header="X-Real-IP")
    assert source.client_address(PROXY, {"X-Real-IP": PROVIDER, XFF: "198.51.100.1"}) == PROVIDER


def test_the_rfc_7239_forwarded_header_is_read_by_its_for_parameters() -> None:
    source = behind_proxy(header="Forwarded")
    value = f'for=198.51.100.1;proto=https, for="{PROVIDER}:4711";by=10.0.0.2'
    assert source.client_address(PROXY, {"Forwarded": value}) == PROVIDER
    ipv6 = 'for="[2001:db8::7]:4711"'
    assert source.client_address(PROXY, {"Forwarded": ipv6}) == "2001:db8::7"


def test_a_forwarded_element_without_for_is_refused_not_skipped() -> None:
    # Given our proxy's element lacks for=: the client's own element must not be believed
    source = behind_proxy(header="Forwarded")
    headers = {"Forwarded": f"for={PROVIDER}, proto=https"}
    assert not allowed(source, PROXY, headers)


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["example.com", "10.0.0.0/33", "300.1.1.1", "10.0.0.0/8/8"])
def test_an_allow_entry_that_is_no_address_or_network_is_a_config_error(entry: str) -> None:
    with pytest.raises(ConfigError):
        SourceFilter([entry])


def test_a_trusted_proxy_entry_that_is_no_address_or_network_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        SourceFilter([], trusted_proxy_header=XFF, trusted_proxies=["proxy.internal"])


def test_a_proxy_header_without_trusted_proxies_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        SourceFilter([PROVIDER], trusted_proxy_header=XFF)


def test_host_bits_and_blank_entries_are_tolerated() -> None:
    source = SourceFilter(["203.0.113.9/24", " ", ""])
    assert allowed(source, "203.0.113.200")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("[::1]", "::1"),
        ("fe80::1%eth0", "fe80::1"),
        ('"203.0.113.7:80"', "203.0.113.7"),
        ("_hidden", None),
        ("", None),
    ],
)
def test_parse_address(text: str, expected: str | None) -> None:
    parsed = parse_address(text)
    assert (None if parsed is None else str(parsed)) == expected
