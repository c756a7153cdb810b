"""A download's name lookup counts against the download's time: a resolver that never answers
cannot hold a worker thread past the download's deadline.

The injected resolver blocks on an event the test sets when it ends; nothing is resolved for
real and no socket opens (the connector fails the test if asked for any connection)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpcore
import pytest

from shared.errors import DownloadFailed
from workers.fetch import FetchLimits, ResultFetcher, create_http_client
from workers.guard import FetchPolicy, GuardedBackend, create_guarded_transport

#: A public address the hanging resolver would give, were it ever released during a fetch.
PUBLIC_V4 = "93.184.215.14"
#: Longest the blocked resolver waits for the test to release it, seconds: without the lookup
#: bounded, the fetch waits this long and the test fails rather than hangs.
RESOLVER_GIVES_UP_S = 10.0
LIMITS = FetchLimits(max_image_bytes=100_000, max_video_bytes=100_000)


@dataclass
class HangingResolver:
    """A resolver that blocks until ``release`` is set (or ``RESOLVER_GIVES_UP_S`` passes)."""

    release: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)
    returned: threading.Event = field(default_factory=threading.Event)
    #: The hosts it was asked for, one per call.
    asked: list[str] = field(default_factory=list)

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        self.started.set()
        self.release.wait(RESOLVER_GIVES_UP_S)
        self.returned.set()
        return [PUBLIC_V4]


def no_connection(
    host: str,
    port: int,
    timeout: float | None = None,
    local_address: str | None = None,
    socket_options: Iterable[Any] | None = None,
) -> httpcore.NetworkStream:
    raise AssertionError(f"no connection was expected, asked for {host}:{port}")


@pytest.fixture
def resolver() -> Iterator[HangingResolver]:
    hanging = HangingResolver()
    yield hanging
    # Release the lookup thread the guard gave up on, and see it end.
    hanging.release.set()
    if hanging.started.is_set():
        assert hanging.returned.wait(RESOLVER_GIVES_UP_S)


def fetcher_with(resolver: HangingResolver, limits: FetchLimits) -> ResultFetcher:
    transport = create_guarded_transport(FetchPolicy(), resolver=resolver, connector=no_connection)
    # A connect timeout far above the deadline: the deadline is what ends the lookup.
    client = create_http_client(
        connect_timeout_s=60, read_timeout_s=60, max_redirects=3, max_connections=4, transport=transport
    )
    return ResultFetcher(client, limits)


def test_a_hanging_lookup_ends_at_the_download_s_time_limit(resolver: HangingResolver) -> None:
    """Given a resolver that never answers and downloads limited to 0.2 s in all
    When a URL naming a host is fetched
    Then the download fails for now (transient) as one over its time, while the resolver is still
    blocked: the lookup did not hold it past its deadline."""
    fetcher = fetcher_with(resolver, dataclasses.replace(LIMITS, max_seconds=0.2))

    with pytest.raises(DownloadFailed, match="too long"):
        fetcher.fetch("http://hangs.example/image.png")

    assert resolver.started.is_set()
    assert not resolver.returned.is_set()


def test_a_hanging_lookup_ends_at_the_deadline_the_caller_gives(resolver: HangingResolver) -> None:
    """Given a resolver that never answers, no time limit in the fetch limits
    When a URL naming a host is fetched with 0.2 s left for the attempt's downloads
    Then the download fails for now as one over its time, the resolver still blocked."""
    with pytest.raises(DownloadFailed, match="too long"):
        fetcher_with(resolver, LIMITS).fetch("http://hangs.example/image.png", max_seconds=0.2)

    assert resolver.started.is_set()
    assert not resolver.returned.is_set()


@dataclass
class SlowNetwork:
    """A resolver and a connector on a fake clock: the lookup takes ``lookup_s``, each connect
    attempt ``connect_s`` and then fails; every timeout a connect attempt is given is kept."""

    lookup_s: float
    connect_s: float
    now: float = 1000.0
    timeouts: list[float | None] = field(default_factory=list)
    #: The addresses it was asked to connect to.
    asked: list[str] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def resolve(self, host: str, port: int) -> list[str]:
        self.now += self.lookup_s
        return [PUBLIC_V4, "93.184.215.15", "93.184.215.16", "93.184.215.17"]

    def connect(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        self.timeouts.append(timeout)
        self.asked.append(host)
        self.now += self.connect_s
        raise httpcore.ConnectError(f"{host} refused (fake)")


def test_the_lookup_and_every_connect_attempt_share_one_timeout() -> None:
    """Given a lookup taking 3 s of a 5 s connect timeout, and addresses that each refuse after 1 s
    When the guarded backend connects
    Then the first attempt gets the 2 s left, the second 1 s, and none comes after (the last
    refusal is the error): the lookup and the attempts together take no longer than the timeout
    (each was given all of it before)."""
    network = SlowNetwork(lookup_s=3.0, connect_s=1.0)
    backend = GuardedBackend(
        FetchPolicy(), resolver=network.resolve, connector=network.connect, clock=network.clock
    )

    with pytest.raises(httpcore.ConnectError, match=r"93\.184\.215\.15 refused"):
        backend.connect_tcp("slow.example", 80, timeout=5.0)

    assert network.timeouts == [2.0, 1.0]


def test_a_lookup_over_the_whole_timeout_tries_no_connect() -> None:
    network = SlowNetwork(lookup_s=6.0, connect_s=1.0)
    backend = GuardedBackend(
        FetchPolicy(), resolver=network.resolve, connector=network.connect, clock=network.clock
    )

    with pytest.raises(httpcore.ConnectTimeout, match=r"took over 5\.0 s"):
        backend.connect_tcp("slow.example", 80, timeout=5.0)

    assert network.timeouts == []


def test_lookups_a_hanging_resolver_holds_are_bounded(resolver: HangingResolver) -> None:
    """Given a resolver that hangs and a backend allowing 2 lookups waiting on it
    When three connections are asked for, each giving up its lookup after 0.2 s
    Then the resolver is asked twice: the third finds no slot and fails for now (a connect
    timeout) without a thread of its own; once the resolver returns, the slots are free again and
    the next lookup reaches the resolver and the connector."""
    network = SlowNetwork(lookup_s=0.0, connect_s=0.0)  # its connector alone: refuses at once
    backend = GuardedBackend(FetchPolicy(), resolver=resolver, connector=network.connect, max_lookups=2)

    for host in ("one.example", "two.example"):
        with pytest.raises(httpcore.ConnectTimeout, match=r"took over 0\.2 s"):
            backend.connect_tcp(host, 80, timeout=0.2)
    with pytest.raises(httpcore.ConnectTimeout, match="2 lookups still wait on the resolver"):
        backend.connect_tcp("three.example", 80, timeout=0.2)

    assert resolver.asked == ["one.example", "two.example"]
    assert network.asked == []

    resolver.release.set()
    for thread in threading.enumerate():
        if thread.name == "mjhook-lookup":
            thread.join(RESOLVER_GIVES_UP_S)
    with pytest.raises(httpcore.ConnectError, match="refused"):
        backend.connect_tcp("four.example", 80, timeout=5.0)

    assert resolver.asked == ["one.example", "two.example", "four.example"]
    assert network.asked == [PUBLIC_V4]
