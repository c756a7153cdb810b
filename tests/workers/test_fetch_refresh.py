"""Expired result links: the fetcher asks the provider (simulated) for a fresh link and tries it once."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import httpx
import pytest

from shared.errors import DownloadFailed, DownloadRefused, FreshLinkPending, ResultLinkGone
from simulator import FaultConfig, RunningSimulator
from tests.support.provider import StartSimulator, client_for
from tests.support.servers import FileServer, png_bytes
from workers.fetch import FetchLimits, ResultFetcher, create_http_client

LIMITS = FetchLimits(max_image_bytes=5_000_000, max_video_bytes=5_000_000)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    client = create_http_client(connect_timeout_s=2, read_timeout_s=2, max_redirects=2, max_connections=4)
    yield client
    client.close()


def expired_result_url(sim: RunningSimulator) -> tuple[str, str]:
    """(taskId, its first result URL, issued already expired)."""
    task = sim.provider.submit(task_type="mj_upscale", params={}, prompt={}, callback_url="", delay_s=0)
    deadline = time.monotonic() + 5
    while not task.result_urls:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return task.task_id, task.result_urls[0]


def test_an_expired_link_is_refreshed_and_the_file_fetched(
    start_simulator: StartSimulator, http: httpx.Client
) -> None:
    sim = start_simulator(faults=FaultConfig(file_expired_share=1.0))
    task_id, url = expired_result_url(sim)
    with client_for(sim) as provider:
        fetched = ResultFetcher(http, LIMITS, refresh_url=provider.download_url).fetch(url)
    try:
        expected = sim.expected_file(task_id, 0)
        assert fetched.sha256 == hashlib.sha256(expected).hexdigest()
        assert fetched.source_url == url  # the manifest names the URL of the result, not the fresh link
    finally:
        fetched.close()


def test_without_a_provider_key_an_expired_link_is_final(
    start_simulator: StartSimulator, http: httpx.Client
) -> None:
    sim = start_simulator(faults=FaultConfig(file_expired_share=1.0))
    _, url = expired_result_url(sim)
    with pytest.raises(ResultLinkGone, match="HTTP 410"):
        ResultFetcher(http, LIMITS).fetch(url)


@pytest.mark.parametrize("status", [403, 404, 410])
def test_a_link_the_provider_cannot_refresh_fails_with_both_reasons(
    start_simulator: StartSimulator, http: httpx.Client, file_server: FileServer, status: int
) -> None:
    # A URL that is not the provider's: download-url answers 422
    sim = start_simulator()
    url = file_server.add("/gone.png", b"gone", status=status)
    with client_for(sim) as provider, pytest.raises(DownloadRefused) as caught:
        ResultFetcher(http, LIMITS, refresh_url=provider.download_url).fetch(url)
    assert f"HTTP {status}; no fresh link: provider answered 422" in str(caught.value)
    assert file_server.hits["/gone.png"] == 1


def test_a_provider_unavailable_for_the_refresh_makes_the_file_retry_later(
    start_simulator: StartSimulator, http: httpx.Client, file_server: FileServer
) -> None:
    sim = start_simulator(maintenance=True)
    url = file_server.add("/gone.png", b"gone", status=410)
    with (
        client_for(sim, attempts=1) as provider,
        pytest.raises(DownloadFailed, match="no fresh link for now"),
    ):
        ResultFetcher(http, LIMITS, refresh_url=provider.download_url).fetch(url)


def test_other_refusals_are_not_refreshed(
    start_simulator: StartSimulator, http: httpx.Client, file_server: FileServer
) -> None:
    sim = start_simulator()
    url = file_server.add("/teapot", b"no", status=418)
    asked: list[str] = []
    with client_for(sim) as provider:

        def refresh(link: str) -> str:
            asked.append(link)
            return provider.download_url(link)

        with pytest.raises(DownloadRefused, match="HTTP 418"):
            ResultFetcher(http, LIMITS, refresh_url=refresh).fetch(url)
    assert asked == []


def test_a_link_redirecting_to_an_expired_file_is_refreshed(
    http: httpx.Client, file_server: FileServer
) -> None:
    # Given a result URL that redirects (the fetcher follows it itself) to a file answering 410,
    # and a provider handing out a fresh link for it
    file_server.add("/expired.png", b"gone", status=410)
    url = file_server.add_redirect("/result.png", "/expired.png")
    image = png_bytes(3)
    fresh = file_server.add("/fresh.png", image)
    asked: list[str] = []

    def refresh(link: str) -> str:
        asked.append(link)
        return fresh

    # When it is fetched
    fetched = ResultFetcher(http, LIMITS, refresh_url=refresh).fetch(url)
    # Then the fresh link was asked for the result URL, and its file is the one fetched
    try:
        assert asked == [url]
        assert fetched.sha256 == hashlib.sha256(image).hexdigest()
        assert fetched.source_url == url
    finally:
        fetched.close()


def test_a_refused_api_key_leaves_an_expired_link_to_be_refreshed_later(
    start_simulator: StartSimulator, http: httpx.Client
) -> None:
    """Given an expired provider link and an API key the provider refuses (401: rotated, mistyped)
    When the file is fetched
    Then it fails for now (FreshLinkPending: retried, handed to the polling fallback on the last
    attempt), as for a provider that cannot answer: the operator mends the key, and download-url
    renews the link then. It failed the file for good."""
    sim = start_simulator(faults=FaultConfig(file_expired_share=1.0))
    _, url = expired_result_url(sim)
    with client_for(sim, api_key="a-rotated-key") as provider, pytest.raises(FreshLinkPending, match="401"):
        ResultFetcher(http, LIMITS, refresh_url=provider.download_url).fetch(url)
