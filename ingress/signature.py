"""The provider's optional callback signature: who sent it, and when.

The provider signs ``f"{taskId}.{timestamp}"`` with HMAC-SHA256 and sends
``X-Webhook-Timestamp`` (Unix seconds) and ``X-Webhook-Signature`` (base64 of the 32-byte
digest). The signature does NOT cover the body: it proves the sender knew the key and names
this taskId at this time, not that ``code`` or ``resultUrls`` are the provider's.

Decisions:
- The signature header is decoded and the raw digests are compared, so standard and url-safe
  base64, with or without ``=`` padding, are all accepted: each spells the same 32 bytes, and
  forging any of them still needs the digest itself.
- The timestamp is signed as the header spells it (surrounding whitespace aside): decimal
  digits only, no sign, no fraction.
- Several keys may be configured (a rotation); each is always tried, whichever matches, so
  the time taken says nothing about which one did.
- A reason never holds a key, a digest or the signature received."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Sequence

from shared.errors import ConfigError, InvalidCallback
from shared.settings import comma_list

#: The request header holding the signing time, Unix seconds.
TIMESTAMP_HEADER = "X-Webhook-Timestamp"
#: The request header holding base64(HMAC-SHA256(key, f"{taskId}.{timestamp}")).
SIGNATURE_HEADER = "X-Webhook-Signature"
#: How far a timestamp may lie from our clock, either way, in seconds.
DEFAULT_WINDOW_S = 300

_DIGEST_BYTES = hashlib.sha256().digest_size
#: Longest signature header worth decoding: 44 characters spell 32 bytes; leave room for noise.
_MAX_SIGNATURE_CHARS = 128
#: Up to 15 digits: far beyond any real time, short enough to keep int() trivial.
_TIMESTAMP = re.compile(r"[0-9]{1,15}")
#: Url-safe base64 spelled in the standard alphabet.
_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")


class SignatureVerifier:
    """Checks the provider's signature headers against one or more keys.

    ``window_s`` bounds the clock difference either way (seconds); ``clock`` returns Unix
    seconds. ``key`` is one key or a sequence of keys (a rotation), each used as given."""

    def __init__(
        self,
        key: bytes | Sequence[bytes],
        *,
        window_s: int = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        keys = (key,) if isinstance(key, bytes) else tuple(key)
        if not keys or not all(keys):
            raise ConfigError("the webhook HMAC key must not be empty")
        if window_s < 1:
            raise ConfigError(f"the signature window must be at least 1 s, not {window_s}")
        self._keys = keys
        self._window_s = window_s
        self._clock = clock

    @classmethod
    def from_setting(
        cls,
        value: str,
        *,
        window_s: int = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.time,
    ) -> SignatureVerifier:
        """A verifier for ``MJHOOK_WEBHOOK_HMAC_KEY``: comma-separated keys (whitespace around
        each ignored), each used as its UTF-8 bytes. Raises :class:`ConfigError` when no key
        is left."""
        keys = [key.encode() for key in comma_list(value)]
        if not keys:
            raise ConfigError("MJHOOK_WEBHOOK_HMAC_KEY holds no key")
        return cls(keys, window_s=window_s, clock=clock)

    def verify(self, task_id: str, timestamp_header: str | None, signature_header: str | None) -> None:
        """Return when the headers carry a fresh, valid signature of ``task_id``; raise
        :class:`InvalidCallback` (status 401) saying what is wrong otherwise."""
        timestamp = (timestamp_header or "").strip()
        signature_text = (signature_header or "").strip()
        given = {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signature_text}
        missing = [name for name, value in given.items() if not value]
        if missing:
            raise InvalidCallback(f"missing signature header {' and '.join(missing)}", status=401)
        self._check_fresh(timestamp)
        signature = _decode_signature(signature_text)
        message = f"{task_id}.{timestamp}".encode()
        expected = [hmac.new(key, message, hashlib.sha256).digest() for key in self._keys]
        # Every key is compared, always: no early exit tells which key (if any) matched.
        matches = [hmac.compare_digest(signature, digest) for digest in expected]
        if not any(matches):
            raise InvalidCallback("signature does not match", status=401)

    def _check_fresh(self, timestamp: str) -> None:
        if not _TIMESTAMP.fullmatch(timestamp):
            raise InvalidCallback(f"{TIMESTAMP_HEADER} must be Unix seconds (decimal digits)", status=401)
        skew = int(timestamp) - self._clock()
        if skew < -self._window_s:
            raise InvalidCallback(
                f"signature timestamp is {int(-skew)} s old, beyond the {self._window_s} s window",
                status=401,
            )
        if skew > self._window_s:
            raise InvalidCallback(
                f"signature timestamp is {int(skew)} s in the future, beyond the {self._window_s} s "
                "window (is a clock wrong?)",
                status=401,
            )


def _decode_signature(text: str) -> bytes:
    """The digest ``text`` spells, in standard or url-safe base64, padded or not."""
    digest = b""
    if len(text) <= _MAX_SIGNATURE_CHARS and text.isascii():
        raw = text.encode("ascii").translate(_URLSAFE_TO_STANDARD).rstrip(b"=")
        try:
            digest = base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
        except (binascii.Error, ValueError):
            digest = b""
    if len(digest) != _DIGEST_BYTES:
        raise InvalidCallback("signature is not base64 of an HMAC-SHA256 digest", status=401)
    return digest
