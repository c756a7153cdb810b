"""Media types come from the bytes, not from what a server claims."""

from __future__ import annotations

import io
import struct

import pytest
from PIL import Image

from shared.errors import DownloadRefused
from workers.sniff import GIF, JPEG, MP4, PNG, SNIFF_BYTES, WEBM, WEBP, MediaType, sniff_media


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    """The ``ftyp`` box an ISO-BMFF file starts with, then the start of its next box."""
    body = major + b"\x00\x00\x02\x00" + b"".join(compatible)
    return struct.pack(">I", 8 + len(body)) + b"ftyp" + body + b"\x00\x00\x00\x08free"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, PNG),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", JPEG),
        (b"GIF89a" + b"\x00" * 10, GIF),
        (b"GIF87a" + b"\x00" * 10, GIF),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", WEBP),
        (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00", MP4),
        (ftyp(b"isom", b"isom", b"iso2", b"avc1", b"mp41"), MP4),  # the simulator's videos
        (ftyp(b"mp42", b"mp42", b"mp41", b"isom"), MP4),
        (ftyp(b"iso6", b"iso6", b"dash"), MP4),
        (ftyp(b"M4V ", b"M4V ", b"M4A ", b"mp42", b"isom"), MP4),
        (ftyp(b"mp42", b"mp42", b"qt  "), MP4),  # an MP4 that QuickTime can play too
        (b"\x00\x00\x00\x20ftypis", None),  # cut before its major brand
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


@pytest.mark.parametrize(
    ("head", "brand"),
    [
        (ftyp(b"avif", b"avif", b"mif1", b"miaf", b"MA1B"), "'avif'"),
        (ftyp(b"avis", b"avis", b"msf1", b"miaf"), "'avis'"),
        (ftyp(b"heic", b"mif1", b"heic"), "'heic'"),
        (ftyp(b"mif1", b"mif1", b"heic"), "'mif1'"),
        (ftyp(b"qt  ", b"qt  "), "'qt  '"),
        (ftyp(b"3gp4", b"3gp4", b"isom"), "'3gp4'"),
        (ftyp(b"M4A ", b"M4A ", b"mp42", b"isom"), "'M4A '"),
        (ftyp(b"crx ", b"crx ", b"isom"), "'crx '"),  # a Canon raw photo
        # An MP4 major brand does not make a picture a video.
        (ftyp(b"isom", b"isom", b"avif", b"mif1"), "'avif'"),
    ],
)
def test_an_iso_bmff_file_that_is_no_mp4_video_is_refused_naming_its_brand(head: bytes, brand: str) -> None:
    """Given the first bytes of an AVIF or HEIC image, a QuickTime movie, a 3GP clip, an audio file
    or a raw photo: all ISO-BMFF, ``ftyp`` at byte 4 like an MP4's
    When they are sniffed
    Then the file is refused, with the brand that says what it is, instead of being stored as
    ``{index}.mp4`` under the video size cap and without the image pixel check."""
    with pytest.raises(DownloadRefused, match="not an MP4 video") as refused:
        sniff_media(head)
    assert brand in str(refused.value)


def test_an_avif_image_encoded_by_pillow_is_refused() -> None:
    """Given a real AVIF image (Pillow's encoder, as a result server could serve it)
    When its first bytes are sniffed
    Then it is refused as no MP4 video, not labelled ``video/mp4``."""
    out = io.BytesIO()
    Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48).save(out, format="AVIF")
    with pytest.raises(DownloadRefused, match="'avif'"):
        sniff_media(out.getvalue()[:SNIFF_BYTES])


#: ffmpeg's EBML header of a WebM file (EBMLVersion, ReadVersion, MaxIDLength, MaxSizeLength,
#: DocType, DocTypeVersion, DocTypeReadVersion), and of a Matroska one naming "webm" elsewhere.
WEBM_HEADER = bytes.fromhex("1a45dfa3 9f 4286 81 01 42f7 81 01 42f2 81 04 42f3 81 08 4282 84") + b"webm"
WEBM_HEADER += bytes.fromhex("4287 81 04 4285 81 02")
MATROSKA_HEADER = bytes.fromhex("1a45dfa3 a3 4286 81 01 42f7 81 01 42f2 81 04 42f3 81 08 4282 88")
MATROSKA_HEADER += b"matroska" + bytes.fromhex("4287 81 04 4285 81 02") + bytes.fromhex("ec 84") + b"webm"


def test_an_ebml_file_is_webm_by_its_doc_type_not_by_the_word_somewhere() -> None:
    assert sniff_media(WEBM_HEADER) == WEBM
    # A Matroska file whose header holds the bytes "webm" elsewhere (a Void element here) was
    # stored as video/webm; it is refused, naming its doc type
    with pytest.raises(DownloadRefused, match="doc type 'matroska', not a WebM video"):
        sniff_media(MATROSKA_HEADER)


def test_a_webm_whose_doc_type_is_zero_padded_is_webm() -> None:
    # An EBML string may be padded with zeros (RFC 8794): "webm\0\0\0\0" still names WebM
    padded = bytes.fromhex("1a45dfa3 93 4282 88") + b"webm\x00\x00\x00\x00" + bytes.fromhex("4287 81 04")
    assert sniff_media(padded) == WEBM
