"""Dead-lettered messages of a queue on dramatiq's Redis broker: list them with the reason they
died, put them back on their queue, or drop them.

dramatiq keeps a dead letter as it was last enqueued (``{queue}.XQ`` scored by time of death,
``{queue}.XQ.msgs`` holding the message), without the error that killed it: the Retries
middleware only records a traceback in the copy it re-enqueues, so a message that failed for
good on its first try (a permanent error) carries none. The reason is therefore taken from the
first of these that has one (:class:`ReasonSource`): what the worker recorded when it gave up
(:func:`record_dead_reason`), the traceback of the last retried failure, the callback's own
validation (a message the workers refused as invalid fails it the same way here), or the
failure reason in the task's state record."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, cast

import dramatiq
import orjson
import redis
from dramatiq.common import q_name
from dramatiq.errors import BrokerConnectionError, DecodeError

from shared import keys
from shared.callback import TASK_ID_PATTERN, Callback
from shared.errors import InvalidCallback, TaskRecordUnusable
from shared.printable import shortened
from shared.queue import PROCESS_CALLBACK
from shared.taskstate import TaskState, TaskStore

#: Options a replay drops so that the message starts over: its retry count and last error, and
#: what the Redis broker sets on each enqueue.
RESET_OPTIONS = frozenset({"retries", "traceback", "requeue_timestamp", "redis_message_id", "eta"})

#: A byte of an id that is no UTF-8 text, as :func:`shown_id` shows it.
_SHOWN_BYTE = re.compile(r"\\x([0-9a-f]{2})")
#: Dead letters read or removed per round trip.
DEFAULT_BATCH = 500

#: Longest reason kept, in characters.
MAX_REASON_CHARS = 500

#: Longest taskId kept of one that is no task id (``TASK_ID_PATTERN``), in characters.
MAX_ODD_TASK_ID_CHARS = 64

#: Latest time of death a dead letter's score is taken as, Unix ms: the last a date can show
#: (the end of year 9999).
MAX_DEAD_AT_MS = 253_402_300_799_999

#: Largest retry count a dead letter is read with: what JSON output takes (a signed 64-bit integer).
MAX_RETRIES = 2**63 - 1


class ReasonSource(StrEnum):
    #: Recorded by the worker when it gave up (:func:`record_dead_reason`).
    WORKER = "worker"
    #: The last line of the traceback of the last failure that was retried.
    TRACEBACK = "traceback"
    #: The message's callback fails validation, as it did in the worker.
    VALIDATION = "validation"
    #: The failure reason in the task's state record.
    TASK = "task"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    #: The broker's id of the message (dramatiq's ``redis_message_id``): what replay and purge take.
    id: str
    #: dramatiq's id of the message, the same over retries; None when the message is unreadable.
    message_id: str | None
    actor: str | None
    #: The message's taskId; one that is no task id shortened to ``MAX_ODD_TASK_ID_CHARS``.
    task_id: str | None
    retries: int
    #: When it was dead-lettered, Unix ms; None when its score is no such time (written by hand).
    dead_at_ms: int | None
    reason: str
    reason_source: ReasonSource

    def age_s(self, now_ms: int) -> float | None:
        return None if self.dead_at_ms is None else max(0.0, (now_ms - self.dead_at_ms) / 1000)


@dataclass(slots=True)
class ReplayResult:
    #: (dead letter id, id of the message now on the queue), in the order replayed.
    replayed: list[tuple[str, str]] = field(default_factory=list)
    #: Asked for, but not (or no longer) dead-lettered.
    missing: list[str] = field(default_factory=list)
    #: Dead letters that cannot be decoded; left in place.
    unreadable: list[str] = field(default_factory=list)
    #: Why the replay stopped early (the broker refused an enqueue, Redis failed), or None.
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PurgeResult:
    removed: list[str]
    missing: list[str]


def record_dead_reason(client: redis.Redis, redis_message_id: str, reason: str, *, ttl_s: int) -> None:
    """Keep why the workers gave up on a message, for as long as its dead letter (``ttl_s``)."""
    client.set(keys.dead_reason(redis_message_id), reason[:MAX_REASON_CHARS], ex=ttl_s)


def count_dead(client: redis.Redis, *, namespace: str, queue: str) -> int:
    return int(client.zcard(keys.broker_dead(namespace, queue)))


def dead_ids(client: redis.Redis, *, namespace: str, queue: str) -> list[str]:
    """The ids of every dead letter of ``queue`` now, oldest first (see :func:`shown_id`)."""
    return [
        _id_of(member)
        for member in cast(list[bytes], client.zrange(keys.broker_dead(namespace, queue), 0, -1))
    ]


def shown_id(dead_id: str) -> str:
    """A dead letter's id as text to show: the bytes of one that is no UTF-8 text as ``\\xNN``
    escapes. Such an id (written by hand or by another program) is held as its bytes decoded with
    ``surrogateescape``: lookups by it find the letter, and its surrogates cannot be printed or
    put in JSON."""
    try:
        raw = _bytes_of(dead_id)
    except UnicodeEncodeError:  # a lone surrogate (an id named through an API): no bytes at all
        return dead_id.encode(errors="backslashreplace").decode()
    return raw.decode(errors="backslashreplace")


def named_ids(client: redis.Redis, ids: Iterable[str], *, namespace: str, queue: str) -> list[str]:
    """``ids`` as an operator names them: each as given, or, where that is no dead letter but its
    :func:`shown_id` form decoded (``\\xNN`` taken for that byte) is one, that letter's id: the
    id ``mjhook dlq list`` shows (and prints in JSON) for one that is no UTF-8 text names it."""
    named = list(ids)
    # Each id with escapes that stand for bytes, and the id those bytes make
    decoded = {
        dead_id: letter_id
        for dead_id in named
        if (letter_id := _id_from_shown(dead_id)) is not None and letter_id != dead_id
    }
    if not decoded:
        return named
    as_given = set(dead_among(client, decoded, namespace=namespace, queue=queue))
    renamed = {dead_id: letter_id for dead_id, letter_id in decoded.items() if dead_id not in as_given}
    found = set(dead_among(client, renamed.values(), namespace=namespace, queue=queue))
    return [renamed[dead_id] if renamed.get(dead_id) in found else dead_id for dead_id in named]


def _id_from_shown(shown: str) -> str | None:
    """The id :func:`shown_id` shows as ``shown`` (each ``\\xNN`` one byte, the rest UTF-8);
    None when no id is shown so."""
    parts = _SHOWN_BYTE.split(shown)  # text, byte, text, byte, ..., text
    try:
        raw = b"".join(
            bytes([int(part, 16)]) if index % 2 else part.encode() for index, part in enumerate(parts)
        )
    except UnicodeEncodeError:
        return None  # a lone surrogate: nothing shown has one
    dead_id = _id_of(raw)
    return dead_id if shown_id(dead_id) == shown else None


def _id_of(member: bytes) -> str:
    """A dead letter's id from its Redis member; see :func:`shown_id`."""
    return member.decode(errors="surrogateescape")


def _bytes_of(dead_id: str) -> bytes:
    """The Redis member (or key part) of a dead letter's id: redis-py encodes text strictly."""
    return dead_id.encode(errors="surrogateescape")


def _is_text(dead_id: str) -> bool:
    """Whether ``dead_id`` is UTF-8 text, not the bytes of one that is none (:func:`shown_id`)."""
    try:
        dead_id.encode()
    except UnicodeEncodeError:
        return False
    return True


def dead_among(client: redis.Redis, ids: Iterable[str], *, namespace: str, queue: str) -> list[str]:
    """Those of ``ids`` that are dead letters of ``queue`` now, each once, in the order first
    named."""
    dead_key = keys.broker_dead(namespace, queue)
    found: list[str] = []
    for batch in _unique_batches(ids, unusable=[]):
        present = _present(client, dead_key, batch)
        found.extend(dead_id for dead_id in batch if dead_id in present)
    return found


def list_dead(
    client: redis.Redis,
    *,
    namespace: str,
    queue: str,
    tasks: TaskStore | None = None,
    limit: int | None = None,
) -> list[DeadLetter]:
    """The dead letters of ``queue``, most recent first, at most ``limit``. ``tasks`` (optional)
    supplies the last resort for reasons, the task's own record."""
    end = -1 if limit is None else limit - 1
    entries = cast(
        list[tuple[bytes, float]],
        client.zrevrange(keys.broker_dead(namespace, queue), 0, end, withscores=True),
    )
    letters = []
    for start in range(0, len(entries), DEFAULT_BATCH):
        batch = entries[start : start + DEFAULT_BATCH]
        members = [member for member, _ in batch]
        ids = [_id_of(member) for member in members]
        pipe = client.pipeline(transaction=False)
        pipe.hmget(keys.broker_dead_messages(namespace, queue), members)
        pipe.mget([_bytes_of(keys.dead_reason(dead_id)) for dead_id in ids])
        bodies, recorded = pipe.execute()
        for dead_id, (_, score), body, reason in zip(ids, batch, bodies, recorded, strict=True):
            if body is not None:  # else dropped between our reads
                # A score no date shows (infinite, negative, past year 9999) was written by hand
                dead_at_ms = int(score) if 0 <= score <= MAX_DEAD_AT_MS else None
                letters.append(_dead_letter(dead_id, dead_at_ms, body, reason, tasks))
    return letters


def _dead_letter(
    dead_id: str, dead_at_ms: int | None, body: bytes, recorded: bytes | None, tasks: TaskStore | None
) -> DeadLetter:
    message = _message_of(dead_id, body)
    if message is None:
        return DeadLetter(
            id=dead_id,
            message_id=None,
            actor=None,
            task_id=None,
            retries=0,
            dead_at_ms=dead_at_ms,
            reason="the message cannot be decoded" if _is_text(dead_id) else "the id is no UTF-8 text",
            reason_source=ReasonSource.UNKNOWN,
        )
    payload = message.args[0] if message.args and isinstance(message.args[0], dict) else {}
    task_id = payload.get("taskId")
    task_id = task_id if isinstance(task_id, str) else None
    if recorded is not None:
        # Our workers write UTF-8; a byte that is none (another program's) is shown replaced
        reason, source = recorded.decode(errors="replace"), ReasonSource.WORKER
    else:
        reason, source = _find_reason(message, payload, task_id, tasks)
    if task_id is not None and not TASK_ID_PATTERN.fullmatch(task_id):
        task_id = shortened(task_id, MAX_ODD_TASK_ID_CHARS)
    return DeadLetter(
        id=dead_id,
        message_id=message.message_id,
        actor=message.actor_name,
        task_id=task_id,
        retries=int(message.options.get("retries") or 0),
        dead_at_ms=dead_at_ms,
        reason=reason[:MAX_REASON_CHARS],
        reason_source=source,
    )


def _find_reason(
    message: dramatiq.Message[Any], payload: dict[str, Any], task_id: str | None, tasks: TaskStore | None
) -> tuple[str, ReasonSource]:
    traceback = str(message.options.get("traceback") or "")
    lines = [line.strip() for line in traceback.splitlines() if line.strip()]
    if lines:
        return lines[-1], ReasonSource.TRACEBACK
    if message.actor_name == PROCESS_CALLBACK:
        try:
            Callback.from_message(payload)
        except InvalidCallback as exc:
            return f"InvalidCallback: {exc.reason}", ReasonSource.VALIDATION
    try:
        record = tasks.get(task_id) if tasks is not None and task_id is not None else None
    except TaskRecordUnusable:
        record = None  # an odd task record must not hide the dead letters from whoever lists them
    if record is not None and record.state is TaskState.FAILED and record.fields.get("reason"):
        return record.fields["reason"], ReasonSource.TASK
    return "no reason recorded", ReasonSource.UNKNOWN


def _message_of(dead_id: str, body: bytes) -> dramatiq.Message[Any] | None:
    """The message of the dead letter ``dead_id``, ``body``; None for one that cannot be decoded,
    and for one whose id is no UTF-8 text (:func:`shown_id`): listed as such, left in place by a
    replay."""
    return _decode(body) if _is_text(dead_id) else None


def _decode(body: bytes) -> dramatiq.Message[Any] | None:
    """A dead letter's message; None when it is none, or one whose fields are not of the types
    dramatiq writes (a letter written by hand or by another program): such a letter is listed as
    one that cannot be decoded, and a replay leaves it in place and goes on."""
    try:
        message = dramatiq.Message.decode(body)
        # Strict UTF-8 throughout: a JSON escape can make a lone surrogate ("\\udcff"), which no
        # terminal prints and no JSON output takes
        orjson.dumps(message.asdict())
    except (DecodeError, TypeError):
        return None
    options = message.options
    retries = options.get("retries") if isinstance(options, dict) else None
    usable = (
        all(isinstance(text, str) for text in (message.queue_name, message.actor_name, message.message_id))
        and isinstance(message.kwargs, dict)
        and isinstance(options, dict)
        and (retries is None or (isinstance(retries, int) and 0 <= retries <= MAX_RETRIES))
    )
    return message if usable else None


def replay_dead(
    client: redis.Redis,
    broker: dramatiq.Broker,
    *,
    namespace: str,
    queue: str,
    ids: Sequence[str] | None = None,
    clock: Callable[[], float] = time.time,
    result: ReplayResult | None = None,
) -> ReplayResult:
    """Put dead letters (``ids``, each once however often named, or all when None) back on their
    queue through ``broker``, as new messages with their retries reset, and remove each from the
    dead letters only once the broker took it. One that cannot be decoded is left in place
    (``unreadable``) and the replay goes on. Stops at the first enqueue the broker refuses, or
    at Redis failing (``error`` says why; those replayed before it are in the result). Two
    replays at once may enqueue a message twice; the workers' dedup makes the second harmless.
    ``result``: where to record what was done as it is done (a caller interrupted meanwhile, by
    Ctrl-C, still knows), a new one when None."""
    dead_key = keys.broker_dead(namespace, queue)
    bodies_key = keys.broker_dead_messages(namespace, queue)
    if ids is None:
        ids = dead_ids(client, namespace=namespace, queue=queue)
    result = result if result is not None else ReplayResult()
    for batch in _unique_batches(ids, unusable=result.missing):
        try:
            present = _present(client, dead_key, batch)
            bodies = cast(
                list[bytes | None], client.hmget(bodies_key, [_bytes_of(dead_id) for dead_id in batch])
            )
        except (redis.RedisError, OSError) as exc:
            # Those replayed so far are on the queue: the result says so, and why it stopped.
            result.error = f"Redis unavailable: {type(exc).__name__}: {exc}"
            return result
        for dead_id, body in zip(batch, bodies, strict=True):
            if body is None or dead_id not in present:
                result.missing.append(dead_id)
                continue
            message = _message_of(dead_id, body)
            if message is None:
                result.unreadable.append(dead_id)  # left in place: the others are replayed still
                continue
            try:
                sent = broker.enqueue(fresh_copy(message, now_ms=int(clock() * 1000)))
            except (redis.RedisError, BrokerConnectionError, OSError) as exc:
                result.error = f"the broker refused the message: {type(exc).__name__}: {exc}"
                return result
            result.replayed.append((dead_id, str(sent.options.get("redis_message_id", ""))))
            try:
                _remove(client, dead_key, bodies_key, [dead_id])
            except (redis.RedisError, OSError) as exc:
                # On the queue, and still a dead letter: a second replay would queue it again.
                result.error = (
                    f"{dead_id} was replayed but is still a dead letter: {type(exc).__name__}: {exc}"
                )
                return result
    return result


def fresh_copy(message: dramatiq.Message[Any], *, now_ms: int) -> dramatiq.Message[Any]:
    """``message`` as a new enqueue on its own queue: same id, actor and arguments, retries reset."""
    return dramatiq.Message(
        queue_name=q_name(message.queue_name),
        actor_name=message.actor_name,
        args=message.args,
        kwargs=message.kwargs,
        options={key: value for key, value in message.options.items() if key not in RESET_OPTIONS},
        message_id=message.message_id,
        message_timestamp=now_ms,
    )


def purge_dead(
    client: redis.Redis, *, namespace: str, queue: str, ids: Sequence[str] | None = None
) -> PurgeResult:
    """Drop dead letters for good: ``ids`` (each once however often named), or all there are now
    when None."""
    dead_key = keys.broker_dead(namespace, queue)
    bodies_key = keys.broker_dead_messages(namespace, queue)
    if ids is None:
        ids = dead_ids(client, namespace=namespace, queue=queue)
    removed: list[str] = []
    missing: list[str] = []
    for batch in _unique_batches(ids, unusable=missing):
        present = _present(client, dead_key, batch)
        removed.extend(dead_id for dead_id in batch if dead_id in present)
        missing.extend(dead_id for dead_id in batch if dead_id not in present)
        _remove(client, dead_key, bodies_key, batch)
    return PurgeResult(removed=removed, missing=missing)


def _present(client: redis.Redis, dead_key: str, ids: Sequence[str]) -> set[str]:
    members: list[Any] = [_bytes_of(dead_id) for dead_id in ids]  # redis-py types them as str alone
    scores = client.zmscore(dead_key, members)
    return {dead_id for dead_id, score in zip(ids, scores, strict=True) if score is not None}


def _remove(client: redis.Redis, dead_key: str, bodies_key: str, ids: Sequence[str]) -> None:
    pipe = client.pipeline(transaction=True)
    members = [_bytes_of(dead_id) for dead_id in ids]
    pipe.zrem(dead_key, *members)
    pipe.hdel(bodies_key, *members)
    pipe.delete(*(_bytes_of(keys.dead_reason(dead_id)) for dead_id in ids))
    pipe.execute()


def _unique_batches(ids: Iterable[str], *, unusable: list[str]) -> Iterable[list[str]]:
    """``ids`` without repeats (each where it first came), ``DEFAULT_BATCH`` at a time: an id named
    twice is replayed or purged, and counted, once. An id that is no UTF-8 text is held as its bytes
    (:func:`shown_id`; argv decodes a byte a terminal passed through undecoded the same way); one
    that is not even that (a lone surrogate) names no dead letter: it goes to ``unusable``."""
    usable: list[str] = []
    for dead_id in dict.fromkeys(ids):
        (usable if _encodable(dead_id) else unusable).append(dead_id)
    for start in range(0, len(usable), DEFAULT_BATCH):
        yield usable[start : start + DEFAULT_BATCH]


def _encodable(text: str) -> bool:
    try:
        _bytes_of(text)
    except UnicodeEncodeError:
        return False
    return True
