"""Signed, expiring result URLs: ``{base}/files/{taskId}/{index}.{ext}?exp=<unix s>&sig=<hmac>``.

Like the provider's temporary links, a URL works until ``exp`` and only as issued: the
signature covers the path and the expiry, so neither can be edited.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

#: The route of result files, and the file names in it.
FILES_ROUTE = "/files/{task_id}/{name}"
FILE_NAME_PATTERN = re.compile(r"(?P<index>0|[1-9][0-9]{0,2})\.(?P<ext>png|mp4)")
#: Hex digits of the HMAC kept in a URL (128 bits).
SIGNATURE_HEX_CHARS = 32
#: An expiry as issued: ASCII digits, Unix seconds. The cap keeps int() in its limits (and far
#: past any date a link could carry); "²" or a 5000-digit number is a bad signature, not a crash.
EXPIRES_PATTERN = re.compile(r"[0-9]{1,15}")
#: A signature as issued (compare_digest raises TypeError on a str with non-ASCII characters).
SIGNATURE_PATTERN = re.compile(rf"[0-9a-f]{{{SIGNATURE_HEX_CHARS}}}")


class LinkCheck(enum.Enum):
    VALID = "valid"
    BAD_SIGNATURE = "bad signature"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class FileRef:
    """Which result file a URL names."""

    task_id: str
    index: int
    ext: str

    @property
    def name(self) -> str:
        return f"{self.index}.{self.ext}"


class LinkSigner:
    """Issues and checks result URLs under ``base_url``; ``clock`` gives Unix seconds."""

    def __init__(self, *, secret: bytes, base_url: str, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self.base_url = base_url.rstrip("/")
        self._clock = clock

    def link(self, ref: FileRef, *, ttl_s: float) -> str:
        """A URL for ``ref`` valid at least ``ttl_s`` seconds from now (its expiry, in whole
        seconds, is rounded up: never early); a negative ``ttl_s`` gives one that has already
        expired (rounded down: never valid)."""
        at = self._clock() + ttl_s
        expires = math.ceil(at) if ttl_s >= 0 else math.floor(at)
        path = FILES_ROUTE.format(task_id=ref.task_id, name=ref.name)
        return f"{self.base_url}{path}?exp={expires}&sig={self._sign(ref, expires)}"

    def check(self, ref: FileRef, *, expires: str, signature: str) -> LinkCheck:
        """Whether a request for ``ref`` carrying ``exp`` and ``sig`` may have the file."""
        if EXPIRES_PATTERN.fullmatch(expires) is None or SIGNATURE_PATTERN.fullmatch(signature) is None:
            return LinkCheck.BAD_SIGNATURE
        if not hmac.compare_digest(signature, self._sign(ref, int(expires))):
            return LinkCheck.BAD_SIGNATURE
        if int(expires) < self._clock():
            return LinkCheck.EXPIRED
        return LinkCheck.VALID

    def parse(self, url: str) -> FileRef | None:
        """The file a URL of ours names (signature and expiry not checked), or None when the
        URL is not one of ours (or not a URL at all). The path of ``base_url`` (a simulator
        behind a proxy at ``/sim``) comes before ``/files/...``."""
        try:
            parts = urlsplit(url)
        except ValueError:  # "http://[::1"
            return None
        ours = urlsplit(self.base_url)
        if (parts.scheme, parts.netloc) != (ours.scheme, ours.netloc):
            return None
        base_path = ours.path.rstrip("/")
        if not parts.path.startswith(base_path + "/"):
            return None
        segments = parts.path[len(base_path) :].split("/")
        if len(segments) != 4 or segments[:2] != ["", "files"]:
            return None
        match = FILE_NAME_PATTERN.fullmatch(segments[3])
        if match is None or not segments[2] or "sig" not in parse_qs(parts.query):
            return None
        return FileRef(segments[2], int(match["index"]), match["ext"])

    def _sign(self, ref: FileRef, expires: int) -> str:
        message = f"{ref.task_id}/{ref.name}:{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:SIGNATURE_HEX_CHARS]
