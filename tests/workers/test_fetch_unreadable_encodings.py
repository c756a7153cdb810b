"""An answer whose encoding can never be read is refused for good, not retried: a body labelled
gzip or deflate that is not, a Transfer-Encoding the client does not read. The same server sends
the same bytes every time; retrying it only delays the file's failure by the whole retry
schedule. A connection failing under way (the peer closing early) stays transient.

Only 127.0.0.1 is ever connected to: the scripted server listens there, and the guarded fetcher
gets a resolver that refuses to resolve and a connector that opens sockets to 127.0.0.1 only."""

from __future__ import annotations

import gzip
import zlib

import pytest

from shared.errors import DownloadFailed, DownloadRefused
from tests.support.servers import png_bytes
from tests.workers.test_fetch_hostile_servers import (
    Serve,
    answer,
    chunked,
    fetched,
)
from workers.fetch import FetchedFile


@pytest.mark.parametrize("coding", ["gzip", "x-gzip", "deflate"])
def test_a_body_labelled_with_an_encoding_it_is_not_in_is_refused(serve: Serve, coding: str) -> None:
    # Given an object stored raw but served with "Content-Encoding: gzip" (or deflate)
    image = png_bytes(3, 32, 32)
    outcome = fetched(
        serve, answer(f"200 OK\r\nContent-Encoding: {coding}\r\nContent-Length: {len(image)}", image)
    )
    # Then it is refused for good: the same bytes will not decode the next time either
    assert isinstance(outcome, DownloadRefused), outcome
    assert "undecodable encoded body" in str(outcome)


def test_a_gzip_body_whose_check_fails_is_refused(serve: Serve) -> None:
    # Given a gzip body whose trailer's CRC does not match what it decodes to
    image = png_bytes(3, 32, 32)
    body = bytearray(gzip.compress(image))
    body[-8] ^= 0xFF
    outcome = fetched(
        serve, answer(f"200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {len(body)}", bytes(body))
    )
    assert isinstance(outcome, DownloadRefused), outcome


def test_a_gzip_body_cut_by_the_connection_closing_is_still_transient(serve: Serve) -> None:
    # Given a gzip body whose Content-Length is all of it, but the connection closing after half
    body = gzip.compress(png_bytes(3, 32, 32))
    outcome = fetched(
        serve, answer(f"200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {len(body)}", body[:100])
    )
    # Then it is failed for now: the next try may get all of it
    assert isinstance(outcome, DownloadFailed), outcome


def test_a_deflate_body_decodes_still(serve: Serve) -> None:
    image = png_bytes(3, 32, 32)
    body = zlib.compress(image)
    outcome = fetched(
        serve, answer(f"200 OK\r\nContent-Encoding: deflate\r\nContent-Length: {len(body)}", body)
    )
    assert isinstance(outcome, FetchedFile), outcome
    assert outcome.size == len(image)


@pytest.mark.parametrize(
    "transfer_encoding",
    ["gzip, chunked", "identity", "chunked\r\nTransfer-Encoding: chunked"],
    ids=["gzip-chunked", "identity", "twice"],
)
def test_a_transfer_encoding_the_client_cannot_read_is_refused(serve: Serve, transfer_encoding: str) -> None:
    # Given an answer framed by a transfer coding h11 does not read (anything but a lone chunked)
    body = chunked(gzip.compress(png_bytes(5, 32, 32)))
    outcome = fetched(serve, answer(f"200 OK\r\nTransfer-Encoding: {transfer_encoding}", body))
    # Then it is refused for good, saying why, not retried as a transfer that failed
    assert isinstance(outcome, DownloadRefused), outcome
    assert "Transfer-Encoding" in str(outcome)


def test_a_peer_closing_before_its_content_length_is_still_transient(serve: Serve) -> None:
    # Given a server closing the connection after 1000 bytes of a Content-Length of more
    image = png_bytes(6, 64, 64)
    outcome = fetched(serve, answer(f"200 OK\r\nContent-Length: {len(image)}", image[:1000]))
    # Then it is failed for now (a protocol error too, but not the server's framing)
    assert isinstance(outcome, DownloadFailed), outcome
    assert "RemoteProtocolError" in str(outcome)


def test_a_chunked_body_cut_before_its_last_chunk_is_still_transient(serve: Serve) -> None:
    image = png_bytes(6, 64, 64)
    outcome = fetched(serve, answer("200 OK\r\nTransfer-Encoding: chunked", chunked(image)[:1000]))
    assert isinstance(outcome, DownloadFailed), outcome
