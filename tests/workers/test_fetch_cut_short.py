"""A file cut short is never stored as the file, however the server framed its answer: ended by
the connection closing before its type can be told, cut by a Content-Length or chunks that stop
short, or an MP4 whose last box declares more bytes than arrived. Each is transient (it may be
whole the next time); a short body that could not start any image or video is still refused.

Only 127.0.0.1 is ever connected to: the scripted server listens there, and the guarded fetcher
gets a resolver that refuses to resolve and a connector that opens sockets to 127.0.0.1 only."""

from __future__ import annotations

import hashlib
import io
import struct

import pytest
from PIL import Image

from shared.errors import DownloadFailed, DownloadRefused
from simulator.video import mp4_bytes
from tests.support.servers import png_bytes
from tests.workers.test_fetch_hostile_servers import (
    Serve,
    answer,
    chunked,
    fetched,
)
from workers import sniff
from workers.fetch import FetchedFile
from workers.sniff import MP4, ends_whole


def encoded(fmt: str, size: tuple[int, int] = (48, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(out, format=fmt)
    return out.getvalue()


def box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


FTYP = box(b"ftyp", b"isom" + b"\x00\x00\x02\x00" + b"isom" + b"mp41")


def framed(body: bytes, framing: str) -> bytes:
    """An answer carrying all of ``body`` under its ``framing``: "content-length" or "chunked"."""
    if framing == "content-length":
        return answer(f"200 OK\r\nContent-Length: {len(body)}", body)
    return answer("200 OK\r\nTransfer-Encoding: chunked", chunked(body))


# --- a close-delimited body cut before its type can be told --------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"", b"\x89PN", b"\x89PNG\r\n\x1a", b"RIFF\x10", b"\x00\x00\x00\x20ftypis"],
    ids=["nothing", "3 bytes of a png", "7 bytes of a png", "5 bytes of a webp", "an mp4 before its brand"],
)
def test_a_close_delimited_body_cut_before_its_type_can_be_told_is_transient(
    serve: Serve, body: bytes
) -> None:
    # Given an answer with neither a Content-Length nor chunks, the connection closed (cleanly)
    # right after the headers, or after the first bytes of an image or video
    outcome = fetched(serve, answer("200 OK\r\nContent-Type: image/png", body), "/x.png")
    # Then it is failed for now, as the same image cut after 1000 bytes is: not refused for good
    assert isinstance(outcome, DownloadFailed), outcome
    assert "ended early" in str(outcome)


@pytest.mark.parametrize("body", [b"Access denied", b'{"error": "x"}'], ids=["text", "json"])
def test_a_short_close_delimited_body_no_image_starts_with_is_still_refused(
    serve: Serve, body: bytes
) -> None:
    # Given a close-delimited answer of a few bytes that no image or video starts with
    outcome = fetched(serve, answer("200 OK", body))
    # Then it is refused for good as before: more bytes would not make it an image
    assert isinstance(outcome, DownloadRefused), outcome
    assert "not an image or video" in str(outcome)


# --- a Content-Length or chunks that end the body before the file's end --------------------------


@pytest.mark.parametrize(
    "image",
    [png_bytes(4, 64, 64), encoded("WEBP"), mp4_bytes("cut", 0, size=60_000)],
    ids=["png", "webp", "mp4"],
)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_file_cut_by_its_own_framing_is_transient_not_stored(
    serve: Serve, image: bytes, framing: str
) -> None:
    # Given a server whose Content-Length (or chunks) says the body is half the file: the bytes
    # it sends past that are not read
    half = len(image) // 2
    if framing == "content-length":
        raw = answer(f"200 OK\r\nContent-Length: {half}", image)
    else:
        raw = answer("200 OK\r\nTransfer-Encoding: chunked", chunked(image[:half]))
    # When it is fetched
    outcome = fetched(serve, raw)
    # Then the half file is not stored as the file: failed for now (the next try, or a fresh
    # link, may serve it whole), and recorded failed once the tries are used up
    assert isinstance(outcome, DownloadFailed), outcome
    assert "ended early" in str(outcome)


@pytest.mark.parametrize(
    "image",
    [
        png_bytes(4, 64, 64),
        encoded("GIF"),
        encoded("WEBP"),
        encoded("JPEG"),
        mp4_bytes("whole", 0, size=60_000),
    ],
    ids=["png", "gif", "webp", "jpeg", "mp4"],
)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_whole_file_under_its_framing_is_stored(serve: Serve, image: bytes, framing: str) -> None:
    outcome = fetched(serve, framed(image, framing))
    assert isinstance(outcome, FetchedFile), outcome
    assert outcome.sha256 == hashlib.sha256(image).hexdigest()


def test_a_jpeg_with_bytes_after_its_end_of_image_is_stored_under_a_content_length(serve: Serve) -> None:
    # Given a valid JPEG followed by bytes past its end of image (FFD9), as many cameras and
    # editors write, served whole under its Content-Length
    image = encoded("JPEG") + b"\x00" * 32
    outcome = fetched(serve, answer(f"200 OK\r\nContent-Length: {len(image)}", image))
    # Then it is stored: a JPEG's end is not judged by its last bytes when the length was given
    assert isinstance(outcome, FetchedFile), outcome
    assert outcome.size == len(image)


@pytest.mark.parametrize("image", [png_bytes(4, 64, 64), encoded("WEBP")], ids=["png", "webp"])
@pytest.mark.parametrize("framing", ["content-length", "close"])
def test_a_png_or_webp_with_bytes_after_its_end_is_stored(serve: Serve, image: bytes, framing: str) -> None:
    # Given a valid PNG (or WebP) with bytes appended past its IEND chunk (its RIFF chunk), as
    # some tools write
    padded = image + b"\x00" * 32
    if framing == "content-length":
        raw = answer(f"200 OK\r\nContent-Length: {len(padded)}", padded)
    else:
        raw = answer("200 OK\r\nConnection: close", padded)
    # Then it is stored as it came: its end is whole, what follows is no sign of a cut (its last
    # bytes were taken for the end it must have: failed, after every retry)
    outcome = fetched(serve, raw)
    assert isinstance(outcome, FetchedFile), outcome
    assert outcome.sha256 == hashlib.sha256(padded).hexdigest()


def test_a_png_cut_inside_its_iend_chunk_is_not_whole() -> None:
    image = png_bytes(4, 64, 64)
    assert ends_whole(sniff.PNG, io.BytesIO(image), len(image))
    assert not ends_whole(sniff.PNG, io.BytesIO(image[:-2]), len(image) - 2)
    assert not ends_whole(sniff.PNG, io.BytesIO(image[:-12]), len(image) - 12)


# --- an MP4 whose last top-level box is not all there ------------------------------------------


def test_a_close_delimited_mp4_cut_short_is_transient_not_stored(serve: Serve) -> None:
    # Given a playable MP4 cut in the middle of its mdat box, the connection then closed
    video = mp4_bytes("cut", 1, size=60_000)
    outcome = fetched(serve, answer("200 OK\r\nContent-Type: video/mp4", video[: len(video) // 2]), "/x.mp4")
    # Then it is failed for now, not stored as the video
    assert isinstance(outcome, DownloadFailed), outcome
    assert "ended early" in str(outcome)


def test_a_close_delimited_whole_mp4_is_stored(serve: Serve) -> None:
    video = mp4_bytes("whole", 1, size=60_000)
    outcome = fetched(serve, answer("200 OK\r\nContent-Type: video/mp4", video), "/x.mp4")
    assert isinstance(outcome, FetchedFile), outcome
    assert outcome.media == MP4
    assert outcome.sha256 == hashlib.sha256(video).hexdigest()


@pytest.mark.parametrize(
    ("video", "whole"),
    [
        (FTYP + box(b"moov", bytes(16)) + box(b"mdat", bytes(100)), True),
        (FTYP + box(b"moov", bytes(16)) + box(b"mdat", bytes(100))[:-1], False),
        # mdat with a 64-bit length (size field 1, then the length after the type)
        (FTYP + struct.pack(">I4sQ", 1, b"mdat", 16 + 100) + bytes(100), True),
        (FTYP + struct.pack(">I4sQ", 1, b"mdat", 16 + 100) + bytes(99), False),
        (FTYP + struct.pack(">I4s", 1, b"mdat") + b"\x00\x00\x00", False),  # cut in its length
        # a last box of size 0 runs to the end of the file, wherever that is
        (FTYP + box(b"moov", bytes(16)) + struct.pack(">I4s", 0, b"mdat") + bytes(57), True),
        (FTYP + box(b"moov", bytes(16)) + b"\x00\x00\x00", False),  # cut in the next box's header
        (FTYP + struct.pack(">I4s", 4, b"moov") + bytes(8), False),  # a length under its header
        (FTYP[:20], False),  # cut within the ftyp box
    ],
    ids=[
        "whole",
        "last box short",
        "64-bit length",
        "64-bit length short",
        "cut in a 64-bit length",
        "size 0: to the end",
        "cut in a box header",
        "impossible length",
        "cut in ftyp",
    ],
)
def test_an_mp4_ends_whole_where_its_last_top_level_box_ends(video: bytes, whole: bool) -> None:
    assert sniff.sniff_media(FTYP + bytes(64)) == MP4
    assert ends_whole(MP4, io.BytesIO(video), len(video)) is whole


def test_an_mp4_of_too_many_top_level_boxes_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a bound of 10 boxes and a file of 10 empty boxes after its ftyp
    monkeypatch.setattr(sniff, "MAX_MP4_BOXES", 10)
    many = FTYP + box(b"free", b"") * 10
    # Then its end is not walked to: it is refused, as a file of millions of empty boxes would be
    with pytest.raises(DownloadRefused, match="more than 10 top-level boxes"):
        ends_whole(MP4, io.BytesIO(many), len(many))
    few = FTYP + box(b"free", b"") * 9
    assert ends_whole(MP4, io.BytesIO(few), len(few))


# --- what whole files carry after their end (review) ---------------------------------------


@pytest.mark.parametrize(
    "image",
    [
        encoded("GIF") + b"\x00",  # a byte after its trailer
        encoded("GIF")[:-1],  # no trailer: decoders take it
        FTYP + box(b"moov", bytes(16)) + box(b"mdat", bytes(100)) + bytes(4),  # padding
    ],
    ids=["gif-trailing", "gif-no-trailer", "mp4-padding"],
)
def test_a_file_with_bytes_past_its_end_under_a_content_length_is_stored(serve: Serve, image: bytes) -> None:
    outcome = fetched(serve, answer(f"200 OK\r\nContent-Length: {len(image)}", image))
    assert isinstance(outcome, FetchedFile), outcome
    assert outcome.sha256 == hashlib.sha256(image).hexdigest()


@pytest.mark.parametrize("text", [b"OK", b"null", b"{}\n", b"no"])
def test_a_short_text_body_the_connection_ended_is_refused_not_retried(serve: Serve, text: bytes) -> None:
    outcome = fetched(serve, answer("200 OK\r\nConnection: close", text))
    assert isinstance(outcome, DownloadRefused), outcome


def test_a_png_of_more_chunks_than_the_walk_takes_is_judged_by_its_last_bytes() -> None:
    # Given a whole PNG whose data comes in more chunks than MAX_PNG_END_CHUNKS (tiny IDATs)
    head, tail = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + bytes(17), b""
    chunk = struct.pack(">I", 0) + b"IDAT" + bytes(4)
    image = head + chunk * (sniff.MAX_PNG_END_CHUNKS + 5) + b"\x00\x00\x00\x00IEND\xaeB`\x82"
    # Then it is whole (it was refused for good), and cut, it is not
    assert ends_whole(sniff.PNG, io.BytesIO(image), len(image))
    assert not ends_whole(sniff.PNG, io.BytesIO(image[:-3] + tail), len(image) - 3)


def test_a_fragmented_mp4_cut_inside_its_next_fragment_header_is_not_whole() -> None:
    # Given a fragmented MP4 (moov, then moof+mdat pairs) cut 5 bytes into its second moof
    fragment = box(b"moof", bytes(24)) + box(b"mdat", bytes(200))
    video = FTYP + box(b"moov", bytes(16)) + fragment + fragment
    cut = video[: len(FTYP) + 24 + len(fragment) + 5]
    # Then it is not whole: after whole moov and mdat, that looked like padding
    assert ends_whole(MP4, io.BytesIO(video), len(video))
    assert not ends_whole(MP4, io.BytesIO(cut), len(cut))


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_gif_cut_inside_its_image_data_under_its_framing_is_transient(serve: Serve, framing: str) -> None:
    # Given a GIF cut in the middle of its image data, served under a length or chunks that end there
    image = encoded("GIF", (200, 200))[:-200]
    outcome = fetched(serve, framed(image, framing))
    # Then it is not stored: its block walk ends inside a block
    assert isinstance(outcome, DownloadFailed), outcome
