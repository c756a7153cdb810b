"""Media types come from the bytes, not from what a server claims."""

from __future__ import annotations

import pytest

from workers.sniff import GIF, JPEG, MP4, PNG, WEBM, WEBP, MediaType, sniff_media


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, PNG),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", JPEG),
        (b"GIF89a" + b"\x00" * 10, GIF),
        (b"GIF87a" + b"\x00" * 10, GIF),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", WEBP),
        (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00", MP4),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\x82\x84webm", WEBM),
        (b"<!DOCTYPE html><html><body>Access denied</body></html>", None),
        (b'{"error": "expired"}', None),
        (b"", None),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", None),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01matroska", None),
    ],
)
def test_sniff_media(head: bytes, expected: MediaType | None) -> None:
    assert sniff_media(head) == expected
