"""Tell a result file's media type from its first bytes, never from what the server claims."""

from __future__ import annotations

from dataclasses import dataclass

#: Bytes needed to recognise every type below.
SNIFF_BYTES = 64


@dataclass(frozen=True, slots=True)
class MediaType:
    ext: str
    content_type: str
    #: "image" or "video": which size cap applies.
    kind: str


PNG = MediaType("png", "image/png", "image")
JPEG = MediaType("jpg", "image/jpeg", "image")
GIF = MediaType("gif", "image/gif", "image")
WEBP = MediaType("webp", "image/webp", "image")
MP4 = MediaType("mp4", "video/mp4", "video")
WEBM = MediaType("webm", "video/webm", "video")


def sniff_media(head: bytes) -> MediaType | None:
    """The media type of a file starting with ``head`` (give it :data:`SNIFF_BYTES` bytes when
    the file has them), or None when it is none of png, jpeg, gif, webp, mp4, webm."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith((b"GIF87a", b"GIF89a")):
        return GIF
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    if head[4:8] == b"ftyp":
        return MP4
    # Matroska's EBML header; WebM names its doc type "webm" within the first bytes.
    if head.startswith(b"\x1a\x45\xdf\xa3") and b"webm" in head[:SNIFF_BYTES]:
        return WEBM
    return None
