"""Rejected callbacks, kept for inspection: the ingress writes them, the operator lists them and,
once the cause is mended (a wrong token or key configured, a limit set too low), replays them.

Each is one JSON entry in the Redis list ``keys.REJECTED``, newest first, the list capped in
length: when, why (status and reason), from where, and the start of the body. Refusals of
senders that did not pass every check of who they are configured (the source, the token, the
signature: a 401 or 403, and with a webhook key set any refusal before its signature was checked)
go to a list of their own, ``keys.REJECTED_UNAUTHENTICATED``, capped alike: anyone can cause those,
and they must not push the others out. The two are listed as one. An entry's id is derived from
its bytes (:func:`entry_id`), so entries written before ids existed have one too, and an id stays
valid while entries come and go around it."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import redis

from shared import keys
from shared.callback import Callback, CallbackLimits, parse_callback, without_callback_url
from shared.clock import utc_iso
from shared.errors import InvalidCallback, QueueUnavailable, TaskRecordUnusable

log = logging.getLogger(__name__)

#: Hex digits of an entry's sha256 that make its id.
ID_HEX_DIGITS = 16
#: Most characters of a refused body written to the log when Redis cannot keep its entry.
LOGGED_BODY_CHARS = 2048
#: The largest body size an entry records: a sender's Content-Length may claim any number, and
#: JSON (orjson) writes no integer past 64 bits.
MAX_RECORDED_SIZE = 2**63 - 1
#: Every list of kept refusals.
REJECTED_LISTS = (keys.REJECTED, keys.REJECTED_UNAUTHENTICATED)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A callback the ingress refused, as it is kept."""

    status: int
    reason: str
    #: The start of the body (what was read of it) and its whole size in bytes, as far as known.
    body: bytes
    size: int
    remote_addr: str
    content_type: str
    #: ``body`` is not all of it: the ingress stopped reading (a body over its size limit).
    partial: bool = False
    #: The sender passed every check of who it is that is configured (source, token, signature);
    #: else the refusal is kept in the list anyone can fill.
    vouched: bool = True


class RejectLog:
    """Keeps the latest ``keep`` rejected callbacks in Redis, each body cut to ``body_bytes``."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        keep: int,
        body_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._keep = keep
        self._body_bytes = body_bytes
        self._clock = clock

    def record(self, rejection: Rejection) -> None:
        """Best effort: a Redis outage must not turn a 4xx into a 5xx, so it is only logged."""
        log.info("rejected callback: %s %s", rejection.status, rejection.reason)
        if self._keep <= 0:
            return
        kept = rejection.body[: self._body_bytes]
        try:
            body, lossy = kept.decode("utf-8"), False
        except UnicodeDecodeError:
            body, lossy = kept.decode("utf-8", "replace"), True
        fields = {
            "at": utc_iso(self._clock()),
            "status": rejection.status,
            "reason": rejection.reason,
            "remoteAddr": rejection.remote_addr,
            "contentType": rejection.content_type,
            "bodySize": min(rejection.size, MAX_RECORDED_SIZE),
            "body": body,
            "truncated": rejection.partial or len(rejection.body) > self._body_bytes,
            # Bytes that are not UTF-8 were replaced: the kept body is not the one received.
            "bodyLossy": lossy,
        }
        entry = orjson.dumps(fields)
        try:
            kept_in = keys.REJECTED if rejection.vouched else keys.REJECTED_UNAUTHENTICATED
            pipe = self._client.pipeline(transaction=False)
            pipe.lpush(kept_in, entry)
            pipe.ltrim(kept_in, 0, self._keep - 1)
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            # Kept in the log instead (the entry is JSON: the body's controls are escaped), its body
            # cut shorter: refusals cost the sender nothing, and the log is not capped as the list is.
            # Without its callBackUrl: the provider echoes it, MJHOOK_CALLBACK_TOKEN and all, and
            # logs travel further than Redis.
            logged = without_callback_url(body) or ""
            fields.update(body=logged[:LOGGED_BODY_CHARS])
            if len(logged) > LOGGED_BODY_CHARS:
                fields.update(truncated=True)
            log.warning(
                "could not keep a rejected callback for inspection in Redis (%s); the entry: %s",
                type(exc).__name__,
                orjson.dumps(fields).decode(),
            )


@dataclass(frozen=True, slots=True)
class RejectedCallback:
    """One kept entry, as read back."""

    id: str
    #: When it arrived (ISO 8601 UTC), or '' when the entry cannot be read.
    at: str
    status: int
    reason: str
    remote_addr: str
    content_type: str
    #: The whole body's size in bytes, and what was kept of it.
    body_size: int
    body: str
    truncated: bool
    body_lossy: bool
    #: The entry as stored, and the list holding it, to remove exactly it.
    raw: bytes = field(repr=False)
    list_key: str = keys.REJECTED

    @property
    def replay_refusal(self) -> str | None:
        """Why this entry cannot be replayed as it arrived, or None when it can."""
        if not self.at:
            return "the entry cannot be read"
        kept = len(self.body.encode())
        # Cut to MJHOOK_REJECTED_BODY_BYTES, or only partly read in the first place (a body over
        # MJHOOK_MAX_BODY_BYTES: the ingress reads no further).
        if self.body_size > kept:
            return f"only the first {kept} of its {self.body_size} bytes were kept"
        if self.truncated:
            return f"only its first {kept} bytes were kept"
        if self.body_lossy:
            return "its body was not UTF-8 and was kept with replacement characters"
        return None

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "at": self.at,
            "status": self.status,
            "reason": self.reason,
            "remoteAddr": self.remote_addr,
            "contentType": self.content_type,
            "bodySize": self.body_size,
            "truncated": self.truncated,
            "bodyLossy": self.body_lossy,
            "body": self.body,
        }


def entry_id(raw: bytes) -> str:
    """The id of a kept entry: the start of its sha256."""
    return hashlib.sha256(raw).hexdigest()[:ID_HEX_DIGITS]


def read_entry(raw: bytes, list_key: str = keys.REJECTED) -> RejectedCallback:
    """``raw`` (one entry of the list ``list_key``) read back; an entry that is not what
    :class:`RejectLog` writes comes back with an empty ``at`` and its bytes as the body."""
    try:
        document = orjson.loads(raw)
        if not isinstance(document, dict):
            raise TypeError("not an object")
        return RejectedCallback(
            id=entry_id(raw),
            at=str(document["at"]),
            status=_int64(document["status"]),
            reason=str(document["reason"]),
            remote_addr=str(document.get("remoteAddr", "")),
            content_type=str(document.get("contentType", "")),
            body_size=_int64(document.get("bodySize", 0)),
            body=str(document.get("body", "")),
            truncated=bool(document.get("truncated", False)),
            # Written before the flag: the writer always replaced what was not UTF-8.
            body_lossy=bool(document.get("bodyLossy", "\ufffd" in str(document.get("body", "")))),
            raw=raw,
            list_key=list_key,
        )
    except (orjson.JSONDecodeError, TypeError, KeyError, ValueError, OverflowError):
        text = raw.decode("utf-8", "replace")
        return RejectedCallback(
            id=entry_id(raw),
            at="",
            status=0,
            reason="unreadable entry",
            remote_addr="",
            content_type="",
            body_size=len(raw),
            body=text,
            truncated=False,
            body_lossy=False,
            raw=raw,
            list_key=list_key,
        )


def _int64(value: str | int | float) -> int:
    """A kept entry's number as an int that JSON (orjson) and the table can show: a ValueError
    for one outside the signed 64-bit range (written by another program; the entry is then read
    as unreadable)."""
    number = int(value)
    if not -(2**63) <= number < 2**63:
        raise ValueError("a number outside the signed 64-bit range")
    return number


def count_rejected(client: redis.Redis) -> int:
    """How many refusals are kept, in both lists."""
    pipe = client.pipeline(transaction=False)
    for list_key in REJECTED_LISTS:
        pipe.llen(list_key)
    return sum(int(length) for length in pipe.execute())


def list_rejected(client: redis.Redis, *, limit: int | None = None) -> list[RejectedCallback]:
    """The kept entries of both lists, newest first (an unreadable entry last), at most ``limit``."""
    end = -1 if limit is None else limit - 1
    pipe = client.pipeline(transaction=False)
    for list_key in REJECTED_LISTS:
        pipe.lrange(list_key, 0, end)
    entries = [
        read_entry(raw, list_key)
        for list_key, raws in zip(REJECTED_LISTS, pipe.execute(), strict=True)
        for raw in cast(list[bytes], raws)
    ]
    # ISO 8601 UTC times of one format: their text sorts as the times do (a stable sort keeps each
    # list's own order among equal times).
    entries.sort(key=lambda entry: entry.at, reverse=True)
    return entries if limit is None else entries[:limit]


@dataclass(slots=True)
class RejectedReplay:
    #: (entry id, taskId) of each entry queued, in the order asked.
    replayed: list[tuple[str, str]] = field(default_factory=list)
    #: Asked for, but not (or no longer) kept.
    missing: list[str] = field(default_factory=list)
    #: (entry id, why) of each entry that cannot be replayed: cut short, still invalid, or its
    #: task's record in Redis unusable.
    refused: list[tuple[str, str]] = field(default_factory=list)
    #: Why the replay stopped early (the queue refused), or None.
    error: str | None = None


def replay_rejected(
    client: redis.Redis,
    ids: Iterable[str],
    *,
    limits: CallbackLimits,
    queue: Callable[[Callback], Any],
) -> RejectedReplay:
    """Check the entries ``ids`` again as callbacks (the body checks of the ingress, with
    ``limits``; not the token, signature or source checks: replaying is the operator vouching for
    them) and hand each valid one to ``queue``, with the time it first arrived; then drop it from
    the list. An entry whose task's record ``queue`` finds unusable (:class:`TaskRecordUnusable`:
    nothing of it recorded or queued) is refused and stays, and the others go on; one ``queue``
    fails on otherwise (:class:`QueueUnavailable`) stays, and the replay stops there."""
    result = RejectedReplay()
    kept = {entry.id: entry for entry in list_rejected(client)}
    for wanted in dict.fromkeys(ids):
        entry = kept.get(wanted)
        if entry is None:
            result.missing.append(wanted)
            continue
        refusal = entry.replay_refusal
        if refusal is not None:
            result.refused.append((entry.id, refusal))
            continue
        try:
            callback = parse_callback(entry.body.encode(), received_at=entry.at, limits=limits)
        except InvalidCallback as exc:
            result.refused.append((entry.id, f"still invalid: {exc.reason}"))
            continue
        try:
            queue(callback)
        except QueueUnavailable as exc:
            result.error = str(exc)
            return result
        except TaskRecordUnusable as exc:
            # One task's odd record: the entry stays, and the others are replayed all the same.
            result.refused.append((entry.id, str(exc)))
            continue
        result.replayed.append((entry.id, callback.task_id))
        try:
            # A readable entry is JSON, so UTF-8: decoded, it is encoded back to the same bytes.
            client.lrem(entry.list_key, 1, entry.raw.decode())
        except (redis.RedisError, OSError) as exc:
            result.error = f"{entry.id} was queued but is still listed ({type(exc).__name__})"
            return result
    return result
