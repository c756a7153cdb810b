"""Tell a result file's media type from its first bytes, never from what the server claims."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import IO

from shared.errors import DownloadRefused

#: Bytes needed to recognise every type below, but for an ISO-BMFF file's whole ``ftyp`` box
#: (:func:`bytes_to_sniff`).
SNIFF_BYTES = 64
#: Longest ``ftyp`` box accepted: every compatible brand in it is read before the type is told
#: (a real one lists a handful); a longer box is refused.
MAX_FTYP_BYTES = 4096


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

#: Major brands of an ISO-BMFF ``ftyp`` box that make the file an MP4 video: ISO base media
#: (``isom``, ``iso2``..``iso9``), MPEG-4 (``mp41``, ``mp42``), H.264 (``avc1``), DASH segments,
#: iTunes video (``M4V ``), mobile MP4 (``mmp4``) and Adobe's F4V. Any other major brand (QuickTime
#: ``qt  ``, 3GPP ``3gp*``, audio ``M4A ``, HEIF/AVIF images, camera raw files) is not stored.
MP4_BRANDS = frozenset(
    {b"isom", *(f"iso{n}".encode() for n in range(2, 10)), b"mp41", b"mp42", b"avc1", b"dash"}
    | {b"M4V ", b"mmp4", b"f4v "}
)
#: Brands of still images and image sequences in the same container (HEIF, HEIC, AVIF, MIAF): a
#: file listing one, even among its compatible brands, is a picture, which must not get the video
#: size cap and skip the pixel check.
IMAGE_BRANDS = frozenset(
    {b"mif1", b"mif2", b"msf1", b"miaf", b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"}
    | {b"hevm", b"hevs", b"avif", b"avis", b"avio", b"MA1A", b"MA1B", b"jpgs"}
)
#: Where an ``ftyp`` box's brands sit: its major brand, then (after the minor version) the
#: compatible brands, four bytes each, up to the box's size.
_MAJOR_BRAND = slice(8, 12)
_COMPATIBLE_FROM = 16


def bytes_to_sniff(head: bytes) -> int:
    """How many leading bytes :func:`sniff_media` needs to judge a file starting with ``head``:
    :data:`SNIFF_BYTES`, or for an ISO-BMFF file its whole ``ftyp`` box (at most
    :data:`MAX_FTYP_BYTES`: an image brand listed past the first bytes must be seen too)."""
    if head[4:8] == b"ftyp":
        return max(SNIFF_BYTES, min(int.from_bytes(head[:4], "big"), MAX_FTYP_BYTES))
    return SNIFF_BYTES


def sniff_media(head: bytes) -> MediaType | None:
    """The media type of a file starting with ``head`` (give it :data:`SNIFF_BYTES` bytes when
    the file has them), or None when it is none of png, jpeg, gif, webp, mp4, webm. Raises
    :class:`DownloadRefused`, naming the brand, for an ISO-BMFF file that is not an MP4 video (an
    AVIF or HEIC image, a QuickTime movie, a 3GP clip)."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith((b"GIF87a", b"GIF89a")):
        return GIF
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    if head[4:8] == b"ftyp":
        return _iso_bmff_video(head)
    # Matroska's EBML header, whose DocType element says "webm" for a WebM file.
    if head.startswith(_EBML_MAGIC):
        doc_type = ebml_doc_type(head[:SNIFF_BYTES])
        if doc_type is not None:
            doc_type = doc_type.rstrip(b"\x00")  # a string element may be zero-padded
        if doc_type == b"webm":
            return WEBM
        if doc_type is not None:
            raise DownloadRefused(f"a Matroska file of doc type {_brand(doc_type[:16])}, not a WebM video")
    return None


_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
#: The EBML header element holding the file's doc type ("webm", "matroska").
_EBML_DOC_TYPE = b"\x42\x82"


def ebml_doc_type(head: bytes) -> bytes | None:
    """The DocType of the EBML header at the start of ``head``; None when ``head`` does not hold
    it whole (too short, or malformed). Each element is an ID (1-4 bytes, its length in the
    leading zero bits of its first byte) and a size (1-8 bytes, likewise), then its data."""
    at = len(_EBML_MAGIC)
    header_size = _ebml_vint(head, at)
    if header_size is None:
        return None
    at, end = header_size[0], min(len(head), header_size[0] + header_size[1])
    while at < end:
        first = head[at]
        id_length = 9 - first.bit_length() if first else 9
        if id_length > 4:
            return None
        element_id = head[at : at + id_length]
        size = _ebml_vint(head, at + id_length)
        if size is None:
            return None
        at, length = size
        if element_id == _EBML_DOC_TYPE:
            return head[at : at + length] if at + length <= len(head) else None
        at += length
    return None


def _ebml_vint(head: bytes, at: int) -> tuple[int, int] | None:
    """The variable-size integer at ``at`` in ``head`` (its length marker removed): (the offset
    after it, its value); None when ``head`` ends first or it is longer than 8 bytes."""
    if at >= len(head) or head[at] == 0:
        return None
    length = 9 - head[at].bit_length()
    if at + length > len(head):
        return None
    value = int.from_bytes(head[at : at + length], "big") & ((1 << (7 * length)) - 1)
    return at + length, value


def _iso_bmff_video(head: bytes) -> MediaType | None:
    """MP4 when the ``ftyp`` box at the start of ``head`` names an MP4 major brand and no image
    brand among the compatible ones it holds within ``head`` (give it :func:`bytes_to_sniff`
    bytes); None when ``head`` is too short to hold the major brand. A box of an impossible size
    (under 16 bytes, or over :data:`MAX_FTYP_BYTES`) is refused."""
    major = head[_MAJOR_BRAND]
    if len(major) < 4:
        return None
    box = int.from_bytes(head[:4], "big")
    if not _COMPATIBLE_FROM <= box <= MAX_FTYP_BYTES:
        raise DownloadRefused(f"an ISO-BMFF file whose ftyp box declares {box} bytes")
    end = min(box, len(head))
    compatible = {head[at : at + 4] for at in range(_COMPATIBLE_FROM, end - 3, 4)}
    if major not in MP4_BRANDS:
        raise DownloadRefused(f"an ISO-BMFF file of brand {_brand(major)}, not an MP4 video")
    images = sorted(compatible & IMAGE_BRANDS)
    if images:
        brands = f"brand {_brand(major)}, compatible with {_brand(images[0])}"
        raise DownloadRefused(f"an ISO-BMFF image ({brands}), not an MP4 video")
    return MP4


#: Signatures a file of a type above starts with, whole (ISO-BMFF and WEBP have theirs at an offset).
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"\x1a\x45\xdf\xa3")


def could_start_media(head: bytes) -> bool:
    """Whether a file starting with ``head`` could still be one :func:`sniff_media` recognises
    once more bytes follow: ``head`` is the start of a signature (or holds one whole), empty
    included. A body cut before it can be sniffed is judged by this: the start of a PNG may be
    whole the next time; an error page's text will not be an image."""
    if any(signature.startswith(head[: len(signature)]) for signature in _SIGNATURES):
        return True
    if b"RIFF".startswith(head[:4]) and b"WEBP".startswith(head[8:12]):
        return True
    # An ISO-BMFF file: its ftyp box's size (at most MAX_FTYP_BYTES: two zero bytes first), then
    # "ftyp".
    return b"\x00\x00".startswith(head[:2]) and b"ftyp".startswith(head[4:8])


def _brand(brand: bytes) -> str:
    """A brand as readable text, whatever bytes it holds (it is the sender's)."""
    return repr(brand.decode("latin-1"))


#: The last bytes of a whole file, per format: JPEG's end of image (a GIF's end is judged by
#: walking its blocks: :func:`gif_ends_whole`).
_ENDINGS = {
    JPEG: b"\xff\xd9",
}
#: Most chunks walked in a PNG to find its end (IEND): encoders write a few dozen, a large image's
#: data split in 8 KiB chunks some hundreds; a file of empty chunks would make the walk long. Past
#: them, the file's last bytes are taken for its IEND chunk.
MAX_PNG_END_CHUNKS = 100_000
#: A whole PNG's last bytes when nothing follows its IEND chunk.
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
#: Most top-level boxes walked in an MP4 to find where it ends: a real file has a handful (``ftyp``,
#: ``moov``, ``mdat``, ``free``), a fragmented one two per fragment (thousands for hours of video);
#: a file made of empty boxes would make the walk long.
MAX_MP4_BOXES = 100_000


def ends_whole(media: MediaType, body: IO[bytes], size: int) -> bool:
    """Whether ``body`` (``size`` bytes) ends as a whole file of ``media`` does: JPEG with its
    closing bytes, PNG with a whole IEND chunk (:func:`png_ends_whole`), WEBP holding the length
    its RIFF header declares, MP4 where its last top-level box ends (:func:`mp4_ends_whole`), GIF
    with its blocks whole (:func:`gif_ends_whole`). WebM, without such an end, is taken as
    whole. Leaves ``body``'s position anywhere."""
    if media == WEBP:
        body.seek(4)
        declared = body.read(4)
        # Bytes past the RIFF chunk (some tools append metadata) are no sign of a cut.
        return len(declared) == 4 and int.from_bytes(declared, "little") + 8 <= size
    if media == PNG:
        return png_ends_whole(body, size)
    if media == GIF:
        return gif_ends_whole(body, size)
    if media == MP4:
        return mp4_ends_whole(body, size)
    ending = _ENDINGS.get(media)
    if ending is None:
        return True
    if size < len(ending):
        return False
    body.seek(size - len(ending))
    return body.read(len(ending)) == ending


def png_ends_whole(body: IO[bytes], size: int) -> bool:
    """Whether the PNG ``body`` (``size`` bytes) holds its chunks up to a whole IEND chunk: each
    chunk declares its length, so a file cut short lacks its IEND or has a chunk running past the
    end. Bytes after IEND (some tools append them) are no sign of a cut. Walks the chunks, their
    data unread; past :data:`MAX_PNG_END_CHUNKS` chunks, judges by the file's last bytes."""
    at = 8  # the signature
    for _ in range(MAX_PNG_END_CHUNKS):
        body.seek(at)
        header = body.read(8)
        if len(header) < 8:
            return False
        length, kind = struct.unpack(">I4s", header)
        at += 12 + length  # length and type, the data, its CRC
        if at > size:
            return False
        if kind == b"IEND":
            return True
    body.seek(size - len(_PNG_END))
    return body.read(len(_PNG_END)) == _PNG_END


#: Most blocks (frames, extensions, stray bytes) and data sub-blocks walked in a GIF: a real one
#: of 64 MiB in 255-byte sub-blocks has ~263,000 of them; one made of empty extensions or 1-byte
#: sub-blocks would make the walk long.
MAX_GIF_BLOCKS = 100_000
MAX_GIF_SUB_BLOCKS = 1_000_000


def gif_ends_whole(body: IO[bytes], size: int) -> bool:
    """Whether the GIF ``body`` (``size`` bytes) holds its blocks whole: its walk reaches the
    trailer, or the file's end between two blocks (decoders take a GIF without its trailer). One
    ending inside a block, its color table or its data was cut. Bytes after the trailer are no
    sign of a cut. Leaves ``body``'s position anywhere."""
    body.seek(0)
    walked = walk_gif(body)
    return walked is not None and walked[1] and body.tell() <= size


def walk_gif(body: IO[bytes]) -> tuple[tuple[int, int], bool] | None:
    """Walk the GIF ``body`` (positioned at its start) block by block, skipping their data unread
    and any stray byte between blocks (decoders skip them too, and read the frames after): its
    canvas (see :func:`workers.dimensions.gif_canvas`), and whether the walk ended between
    blocks (at the trailer or the file's end) rather than inside one. None without a logical screen. Raises
    :class:`DownloadRefused` past :data:`MAX_GIF_BLOCKS` blocks or :data:`MAX_GIF_SUB_BLOCKS`
    sub-blocks (a file of empty extensions would make the walk long)."""
    header = body.read(13)
    if len(header) < 13:
        return None
    width, height, packed = struct.unpack_from("<HHB", header, 6)
    _skip_color_table(body, packed)
    walk = _GifWalk()
    while (introducer := body.read(1)) not in (b"", b";"):  # ";" is the trailer
        walk.block()
        if introducer == b"!":  # an extension: its label, then its data sub-blocks
            if not body.read(1) or not walk.skip_sub_blocks(body):
                return (width, height), False
        elif introducer == b",":
            descriptor = body.read(9)
            if len(descriptor) < 9:
                return (width, height), False
            left, top, frame_width, frame_height, packed = struct.unpack("<HHHHB", descriptor)
            width, height = max(width, left + frame_width), max(height, top + frame_height)
            _skip_color_table(body, packed)
            if not body.read(1) or not walk.skip_sub_blocks(body):  # LZW code size, then the data
                return (width, height), False
    return (width, height), True


class _GifWalk:
    """Counts the blocks and sub-blocks of one GIF walk, refusing the file past the bounds."""

    def __init__(self) -> None:
        self._blocks = 0
        self._sub_blocks = 0

    def block(self) -> None:
        self._blocks += 1
        if self._blocks > MAX_GIF_BLOCKS:
            raise DownloadRefused(f"gif image of more than {MAX_GIF_BLOCKS} blocks")

    def skip_sub_blocks(self, body: IO[bytes]) -> bool:
        """Past a run of data sub-blocks (each a length byte, then that many bytes) and the empty
        one ending it; False when the file ends first."""
        while size := body.read(1):
            if size == b"\x00":
                return True
            self._sub_blocks += 1
            if self._sub_blocks > MAX_GIF_SUB_BLOCKS:
                raise DownloadRefused(f"gif image of more than {MAX_GIF_SUB_BLOCKS} data sub-blocks")
            body.seek(size[0], io.SEEK_CUR)
        return False


def _skip_color_table(body: IO[bytes], packed: int) -> None:
    """Past the color table a GIF block's packed byte announces (bit 7 set: 3 x 2^(n+1) bytes)."""
    if packed & 0x80:
        body.seek(3 << ((packed & 0x07) + 1), io.SEEK_CUR)


def _zeros(body: IO[bytes], at: int, size: int) -> bool:
    """Whether ``body``'s bytes from ``at`` to ``size`` are all zeros, read in pieces."""
    body.seek(at)
    while at < size and (piece := body.read(min(64 * 1024, size - at))):
        if piece.strip(b"\x00"):
            return False
        at += len(piece)
    return True


def mp4_ends_whole(body: IO[bytes], size: int) -> bool:
    """Whether the ISO-BMFF ``body`` (``size`` bytes) is its top-level boxes end to end, the last
    ending at ``size``: each box declares its length (32 bits; 1: a 64-bit length follows the
    type; 0: the box runs to the end of the file), so a file cut short has its last box declaring
    more bytes than arrived. Walks the boxes, their data unread. A tail of zeros that is no box
    (padding) is no sign of a cut after whole ``moov`` and ``mdat`` boxes in a file of no
    fragments (``moof``: a cut one's next fragment header looks the same), and is one otherwise;
    a box running past the end always is. Raises :class:`DownloadRefused` past :data:`MAX_MP4_BOXES` boxes."""
    at = 0
    whole: set[bytes] = set()
    for _ in range(MAX_MP4_BOXES):
        if at == size:
            return True
        body.seek(at)
        header = body.read(8)
        length, kind = struct.unpack(">I4s", header) if len(header) == 8 else (-1, b"")
        header_bytes = 8
        if length == 0:  # this box runs to the end of the file
            return True
        if length == 1:  # a 64-bit length after the type
            large = body.read(8)
            if len(large) < 8:
                return False  # cut in the length
            length = struct.unpack(">Q", large)[0]
            header_bytes = 16
        if length < header_bytes:  # no box here: padding after the media, or a cut header
            return {b"moov", b"mdat"} <= whole and b"moof" not in whole and _zeros(body, at, size)
        if at + length > size:
            return False
        at += length
        whole.add(kind)
    if at == size:
        return True
    raise DownloadRefused(f"mp4 video of more than {MAX_MP4_BOXES} top-level boxes")
