"""Each task's state record in Redis: [submitted ->] received -> processing -> stored | partial | failed.

``submitted`` only for tasks mjhook submitted itself, until their result arrives (by callback or
by polling the provider)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum, StrEnum
from importlib import resources
from typing import Any, NamedTuple, cast

import hiredis
import redis
from redis.asyncio.connection import AbstractConnection as AsyncConnection
from redis.exceptions import NoScriptError, ResponseError

from shared import keys
from shared.errors import LeaseHeld, TaskRecordUnusable
from shared.redis_client import as_text

log = logging.getLogger(__name__)

#: Most characters of the reason a task's record keeps (a failure's ``msg`` is anyone's text up to
#: the body limit; the whole of it is in the manifest).
MAX_REASON_CHARS = 1024
#: Recently changed tasks kept in the recent index.
DEFAULT_RECENT_KEEP = 10_000


class TaskState(StrEnum):
    #: Submitted by mjhook (``mjhook submit``); no result yet.
    SUBMITTED = "submitted"
    RECEIVED = "received"
    PROCESSING = "processing"
    STORED = "stored"
    PARTIAL = "partial"
    FAILED = "failed"


#: States a task ends in; a manifest exists for each.
FINAL_STATES = frozenset({TaskState.STORED, TaskState.PARTIAL, TaskState.FAILED})
#: States of a task without an outcome yet (or being processed again after one).
UNSETTLED_STATES = frozenset(TaskState) - FINAL_STATES
#: The states :meth:`TaskStore.give_up` fails a task in (a ``submitted`` one is the polling
#: fallback's to end).
_FAILABLE_STATES = UNSETTLED_STATES - {TaskState.SUBMITTED}
#: The outcomes a task processed again goes back to when the queue gives up on it (:meth:`TaskStore.give_up`).
_RESTORABLE_OUTCOMES = frozenset({TaskState.STORED.value, TaskState.PARTIAL.value})
#: The record's field naming the final state the task last reached: written with it, and kept
#: while a later callback of the task is processed, until that one replaces a stored file (then
#: empty: :meth:`TaskStore.forget_outcome`).
OUTCOME_FIELD = "outcome"

#: The states :meth:`TaskStore.counts` counts (those ``mjhook status --json`` has always shown);
#: submitted tasks are counted by :meth:`TaskStore.submitted_counts`.
COUNTED_STATES = tuple(state for state in TaskState if state is not TaskState.SUBMITTED)


class _LeaseRule(Enum):
    #: :meth:`TaskStore._move` only while no worker holds the task's lease.
    FREE = "free"


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A dramatiq message laid out for its Redis broker: its id goes on ``queue_key`` (a list),
    its body into ``messages_key`` (a hash)."""

    queue_key: str
    messages_key: str
    message_id: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Received:
    """One task for :meth:`TaskStore.mark_received_many`."""

    task_id: str
    received_at: str
    enqueue: QueuedMessage | None = None


@dataclass(frozen=True, slots=True)
class TaskRecord:
    task_id: str
    state: TaskState
    fields: Mapping[str, str]


class GiveUp(NamedTuple):
    """What :meth:`TaskStore.give_up` did: the state it left the task in, and whether it moved the
    task to ``failed`` (False for a task that was failed already, or kept another state)."""

    state: TaskState
    failed_now: bool = False


class TaskStore:
    """Reads and moves task state records. ``clock`` returns Unix seconds."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        ttl_s: int,
        recent_keep: int = DEFAULT_RECENT_KEEP,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._ttl_s = ttl_s
        self._recent_keep = recent_keep
        self._clock = clock
        lua = resources.files("shared").joinpath("lua")
        self._transition = client.register_script(_script(lua.joinpath("transition.lua").read_text()))
        self._received = client.register_script(_script(lua.joinpath("received.lua").read_text()))

    @property
    def client(self) -> redis.Redis:
        """The Redis client the records are in."""
        return self._client

    def mark_received(
        self, task_id: str, received_at: str, *, enqueue: QueuedMessage | None = None
    ) -> TaskState | None:
        """Record a new task as received; a task already known keeps its state, except that a
        ``submitted`` one moves on to ``received``. With ``enqueue`` (a message for a dramatiq
        Redis queue in this same Redis) the message is queued in the same round trip. Returns the
        state it had, or None when it is new."""
        return self._move(
            task_id,
            TaskState.RECEIVED,
            {"receivedAt": received_at},
            only_if_new=True,
            or_from=TaskState.SUBMITTED,
            enqueue=enqueue,
        )

    async def mark_received_many(
        self, received: Sequence[Received], *, connection: AsyncConnection
    ) -> list[TaskState | Exception | None]:
        """:meth:`mark_received` for several tasks in one script call and one round trip (the
        ingress's group commit), on an asyncio connection to this store's Redis. One result per
        task, in order: the state it had, or the error that kept it from being recorded. Raises
        only when the round trip itself failed (connection, timeout), and then none of them may
        have been recorded.

        ``connection``: a connection the caller holds for itself (see ingress.group_commit), used
        directly: a client's pipeline (its bookkeeping, and a SCRIPT EXISTS before each run) costs
        several times the round trip's CPU on this hot path. When Redis lost the script (a restart,
        SCRIPT FLUSH), it is loaded again on the same connection and the call sent once more."""
        if not received:
            return []
        call = self._received_many_call(received)
        reply = (await _on_connection(connection, [call]))[0]
        if isinstance(reply, NoScriptError):
            load: tuple[Any, ...] = ("SCRIPT", "LOAD", self._received.script)
            loaded, reply = await _on_connection(connection, [load, call])
            if isinstance(loaded, Exception):
                reply = loaded
        if isinstance(reply, Exception):
            return [reply] * len(received)
        return [_state_or_error(item.task_id, old) for item, old in zip(received, reply, strict=True)]

    def _received_many_call(self, received: Sequence[Received]) -> tuple[Any, ...]:
        """The EVALSHA command of received.lua for ``received``."""
        queues = {(item.enqueue.queue_key, item.enqueue.messages_key) for item in received if item.enqueue}
        if len(queues) > 1:
            raise ValueError("the messages of one call must go to one queue")
        queue_key, messages_key = queues.pop() if queues else ("", "")
        script_keys = [keys.RECENT, queue_key, messages_key]
        args: list[str | int | bytes] = [
            int(self._clock() * 1000),
            self._ttl_s,
            self._recent_keep,
            keys.STATE_INDEX_PREFIX,
        ]
        for item in received:
            script_keys.append(keys.task(item.task_id))
            message = item.enqueue
            args += (item.task_id, item.received_at)
            args += (message.message_id, message.body) if message else ("", "")
        return ("EVALSHA", self._received.sha, len(script_keys), *script_keys, *args)

    def mark_submitted(self, task_id: str, **fields: str) -> TaskState | None:
        """Record a task mjhook just submitted; a task already known (its callback came first)
        keeps its state. Returns the state it had, or None when it is new."""
        return self._move(task_id, TaskState.SUBMITTED, fields, only_if_new=True)

    def move_from(
        self, task_id: str, expected: TaskState | Collection[TaskState], state: TaskState, **fields: str
    ) -> TaskState | None:
        """Like :meth:`move`, but only while the task is in ``expected`` (a state, or any of
        several) or has no record: a task that moved on meanwhile keeps its state. Returns the
        state it had."""
        return self._move(task_id, state, fields, only_if_new=True, or_from=expected)

    def fail_submitted(
        self, task_id: str, reason: str, *, look: tuple[bytes, int] | None = None
    ) -> TaskState | None:
        """The polling fallback's give-up: :meth:`move_from` ``submitted`` (or no record) to
        ``failed`` for ``reason``; returns the state the task had. ``look``: a second look at it
        (its member and due time in Unix ms, see :meth:`give_up`) put in the pending give-ups in
        the same transaction, when the move happens: a task that moved on gets none, and a worker
        dying before the move leaves none (the task stays submitted, for a later pass). A move
        the script refuses (an error raised here) still leaves the look, which finds the task
        submitted and does nothing."""
        if look is None:
            return self.move_from(task_id, TaskState.SUBMITTED, TaskState.FAILED, reason=reason)
        # The state is read and moved from under WATCH: the look goes in with the move or not at all.
        while True:
            try:
                return self._fail_submitted_once(task_id, reason, look)
            except redis.WatchError:
                continue

    def _fail_submitted_once(self, task_id: str, reason: str, look: tuple[bytes, int]) -> TaskState | None:
        key = keys.task(task_id)
        with self._client.pipeline(transaction=True) as pipe:
            pipe.watch(key)  # type: ignore[no-untyped-call]
            with _record_errors(task_id, own_key=True):
                record = _record(task_id, pipe.hgetall(key))
            if record is not None and record.state is not TaskState.SUBMITTED:
                return record.state
            pipe.multi()
            script_keys, args = self._move_call(
                task_id, TaskState.FAILED, {"reason": reason}, only_if_new=True, or_from=TaskState.SUBMITTED
            )
            self._transition(keys=script_keys, args=args, client=pipe)
            replies = _execute_with_look(pipe, task_id, look)
        with _record_errors(task_id):
            if isinstance(replies[0], Exception):
                raise replies[0]
        return self._move_reply(task_id, replies[0], lease=None)

    def give_up(self, task_id: str, reason: str, *, look: tuple[bytes, int] | None = None) -> GiveUp:
        """Record that the queue gave up on a message of the task (retries exhausted, a permanent
        error) for ``reason``, and return the state the task is left in (:class:`GiveUp`). A task
        in a final state keeps it, and its reason: that message was a duplicate, or another worker
        finished the task meanwhile. A task a worker holds (its lease) keeps its state too: that
        worker is processing another message of it and settles it. A task being processed again
        after it ended ``stored`` or ``partial`` goes back to that state (its files and manifest
        are still those), unless a file of it was replaced meanwhile (:meth:`forget_outcome`):
        then it ends ``failed`` with ``reason``. So does any other task, one without a record too,
        and one whose record was written before outcomes were recorded (it has no ``outcome``
        field). A task ``submitted`` again keeps that state: another message of it handed it back
        to the polling fallback, whose own give-up ends it. Each move checks the lease in the same
        script call, so a worker taking the task meanwhile is never overruled. The answer also says
        whether this give-up moved the task to ``failed`` (from the move's own script call: of two
        give-ups of one task at the same instant, one moves it, and says so). ``look``: a second
        look at this give-up (its member and due time in Unix ms) put in the pending give-ups
        (:data:`keys.GIVE_UPS_PENDING`) in the same transaction as the move: there exactly when
        the give-up is, so a worker dying before it leaves none (the message, never acknowledged,
        is redelivered and decides), and one dying after it leaves the look to finish it."""
        # The outcome is read and moved to under WATCH: a whole attempt that replaced a file and
        # forgot the outcome in between (:meth:`forget_outcome`) makes the move abort, and the
        # record is judged again.
        while True:
            try:
                return self._give_up_once(task_id, reason, look)
            except redis.WatchError:
                continue

    def _give_up_once(self, task_id: str, reason: str, look: tuple[bytes, int] | None) -> GiveUp:
        key = keys.task(task_id)
        with self._client.pipeline(transaction=True) as pipe:
            pipe.watch(key)  # type: ignore[no-untyped-call]
            with _record_errors(task_id, own_key=True):
                record = _record(task_id, pipe.hgetall(key))
            outcome = record.fields.get(OUTCOME_FIELD, "") if record is not None else ""
            state, fields, or_from = TaskState.FAILED, {"reason": reason}, _FAILABLE_STATES
            if record is not None and record.state in _FAILABLE_STATES and outcome in _RESTORABLE_OUTCOMES:
                state, fields, or_from = TaskState(outcome), {}, frozenset({record.state})
            pipe.multi()
            script_keys, args = self._move_call(
                task_id, state, fields, only_if_new=True, or_from=or_from, lease=_LeaseRule.FREE
            )
            self._transition(keys=script_keys, args=args, client=pipe)
            replies = _execute_with_look(pipe, task_id, look)
            try:
                if isinstance(replies[0], Exception):
                    with _record_errors(task_id):
                        raise replies[0]
                before = self._move_reply(task_id, replies[0], lease=_LeaseRule.FREE)
            except LeaseHeld as held:
                return GiveUp(TaskState(held.state) if held.state else TaskState.PROCESSING)
        if state is not TaskState.FAILED:
            return GiveUp(state if before in (*or_from, None) else cast(TaskState, before))
        if before in FINAL_STATES or before is TaskState.SUBMITTED:
            return GiveUp(before)
        return GiveUp(TaskState.FAILED, failed_now=True)

    def forget_outcome(self, task_id: str, *, holder: str) -> TaskState | None:
        """Empty the outcome a task being processed (``processing``) keeps from an earlier end, when
        a file that outcome's manifest may describe is about to be replaced: given up after that,
        the task fails (:meth:`give_up`) instead of going back to an outcome its files no longer
        show. A task in another state is left as it is (one without a record is recorded
        ``processing``). Only while the lease holds ``holder`` (the caller's token), else
        :class:`LeaseHeld`. Returns the state it had."""
        return self._move(
            task_id,
            TaskState.PROCESSING,
            {OUTCOME_FIELD: ""},
            only_if_new=True,
            or_from=TaskState.PROCESSING,
            lease=holder,
        )

    def move(
        self, task_id: str, state: TaskState, *, holder: str | None = None, **fields: str
    ) -> TaskState | None:
        """Set the state (and extra fields) of a task; returns the previous state. With ``holder``
        (a lease token), only while the task's lease holds that token, checked in the same script
        call: a worker that lost its lease raises :class:`LeaseHeld` and changes nothing."""
        return self._move(task_id, state, fields, only_if_new=False, lease=holder)

    def get(self, task_id: str) -> TaskRecord | None:
        """The task's record, None when there is none; :class:`TaskRecordUnusable` when its key
        holds something else."""
        with _record_errors(task_id, own_key=True):
            raw = self._client.hgetall(keys.task(task_id))
        return _record(task_id, raw)

    def counts(self) -> dict[str, int]:
        """How many tasks are in each state: those whose record has not expired (a state index is
        trimmed only when a task enters that state; one nothing enters keeps older members)."""
        alive = self._alive_since_ms()
        pipe = self._client.pipeline(transaction=False)
        for state in COUNTED_STATES:
            pipe.zcount(keys.state_index(state), alive, "+inf")
        return dict(zip((s.value for s in COUNTED_STATES), pipe.execute(), strict=True))

    def submitted_counts(self, now: float, grace_s: float) -> dict[str, int]:
        """Tasks mjhook submitted that still wait for their result (``submitted``), and those of
        them waiting ``grace_s`` seconds or more, so the polling fallback is after them
        (``overdue``). ``now`` is Unix seconds."""
        index = keys.state_index(TaskState.SUBMITTED)
        alive = self._alive_since_ms(now)
        pipe = self._client.pipeline(transaction=False)
        pipe.zcount(index, alive, "+inf")
        pipe.zcount(index, alive, int((now - grace_s) * 1000))
        submitted, overdue = pipe.execute()
        return {"submitted": int(submitted), "overdue": int(overdue)}

    def _alive_since_ms(self, now: float | None = None) -> str:
        """The lowest state-index score (ms) of a task whose record has not expired at ``now``
        (Unix seconds, default the clock's): a record lives ``ttl_s`` after its last move, which
        is its score in its state's index."""
        now = self._clock() if now is None else now
        return f"({int(now * 1000) - self._ttl_s * 1000}"

    def recent(self, *, state: TaskState | None = None, limit: int = 20) -> list[TaskRecord]:
        """The ``limit`` most recently changed tasks, newest first; only those now in ``state``
        when it is given. Tasks whose record has expired are left out."""
        index = keys.RECENT if state is None else keys.state_index(state)
        members = cast(list[bytes], self._client.zrevrange(index, 0, limit - 1))
        task_ids = []
        for member in members:
            try:
                task_ids.append(as_text(member))
            except UnicodeDecodeError:  # no id the ingress takes: written by hand, or another program
                log.warning("left out of the list: the index %s names a task %r", index, member[:200])
        pipe = self._client.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.hgetall(keys.task(task_id))
        records = []
        for task_id, raw in zip(task_ids, pipe.execute(raise_on_error=False), strict=True):
            try:
                if isinstance(raw, Exception):
                    raise _unusable(task_id, raw, own_key=True) or raw
                records.append(_record(task_id, raw))
            except TaskRecordUnusable as exc:
                log.warning("left out of the list: %s", exc)
        # A state index can still name a task that has moved on since (its record expired and
        # a later callback made it anew, leaving the old index's entry): only those now in it.
        return [record for record in records if record is not None and state in (None, record.state)]

    def per_minute(self, states: Iterable[TaskState], *, minutes: int) -> dict[str, tuple[int, ...]]:
        """For each state, how many tasks entered it (and are still in it) in each of the
        ``minutes`` 60-second windows that end now, the oldest window first."""
        now_ms = int(self._clock() * 1000)
        pipe = self._client.pipeline(transaction=False)
        names = [TaskState(state).value for state in states]
        for name in names:
            for age in range(minutes, 0, -1):
                pipe.zcount(keys.state_index(name), f"({now_ms - age * 60_000}", now_ms - (age - 1) * 60_000)
        counts = pipe.execute()
        return {name: tuple(counts[i * minutes : (i + 1) * minutes]) for i, name in enumerate(names)}

    def _move(
        self,
        task_id: str,
        state: TaskState,
        fields: Mapping[str, str],
        *,
        only_if_new: bool,
        or_from: TaskState | Collection[TaskState] | None = None,
        enqueue: QueuedMessage | None = None,
        lease: str | _LeaseRule | None = None,
    ) -> TaskState | None:
        """``only_if_new``: move only a task without a record, or (``or_from``) one in that state
        or in one of those states. ``lease``: None, whoever holds the task's lease; ``_LeaseRule.FREE``, only
        while no worker holds it; a token, only while the lease holds it (else :class:`LeaseHeld`)."""
        script_keys, args = self._move_call(
            task_id, state, fields, only_if_new=only_if_new, or_from=or_from, enqueue=enqueue, lease=lease
        )
        with _record_errors(task_id):
            reply = self._transition(keys=script_keys, args=args)
        return self._move_reply(task_id, reply, lease=lease)

    def _move_call(
        self,
        task_id: str,
        state: TaskState,
        fields: Mapping[str, str],
        *,
        only_if_new: bool,
        or_from: TaskState | Collection[TaskState] | None = None,
        enqueue: QueuedMessage | None = None,
        lease: str | _LeaseRule | None = None,
    ) -> tuple[list[str], list[str | int | bytes]]:
        """transition.lua's keys and arguments for a move (see :meth:`_move`)."""
        now_ms = int(self._clock() * 1000)
        guard = "0" if not only_if_new else _guard(or_from)
        if state in FINAL_STATES:
            fields = {**fields, OUTCOME_FIELD: state.value}
        pairs: list[str | bytes] = [item for pair in fields.items() for item in pair]
        script_keys = [keys.task(task_id), keys.RECENT, keys.lease(task_id)]
        if enqueue is not None:
            script_keys += [enqueue.queue_key, enqueue.messages_key]
            pairs = [enqueue.message_id, enqueue.body, *pairs]
        args: list[str | int | bytes] = [
            task_id,
            state.value,
            now_ms,
            self._ttl_s,
            guard,
            self._recent_keep,
            keys.STATE_INDEX_PREFIX,
            *_lease_rule(lease),
            *pairs,
        ]
        return script_keys, args

    @staticmethod
    def _move_reply(task_id: str, reply: object, *, lease: str | _LeaseRule | None) -> TaskState | None:
        """The state a task had before a move, from transition.lua's reply; :class:`LeaseHeld` when
        the lease rule refused it."""
        if isinstance(reply, list):
            raise LeaseHeld(task_id, _state(reply[1]), by_other=lease is not _LeaseRule.FREE)
        return _state(reply, task_id)


async def _on_connection(connection: AsyncConnection, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Send ``commands`` on ``connection`` at once and read their replies (an error reply as its
    exception), retried like the client's own commands (its ``Retry``: a connection Redis closed,
    by a restart say, is opened again). A broken round trip closes the connection and raises.
    A round trip cut after Redis ran it runs again: at worst a callback is queued twice, and the
    workers deduplicate by taskId."""
    # hiredis packs in C; redis-py's asyncio connection packs in Python, at ~50 µs per EVALSHA.
    packed = b"".join(hiredis.pack_command(command) for command in commands)

    async def attempt() -> list[Any]:
        await connection.send_packed_command(packed, check_health=False)
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await connection.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies

    async def failed(_error: Exception) -> None:
        await connection.disconnect()

    try:
        result: list[Any] = await connection.retry.call_with_retry(attempt, failed)
    except BaseException:
        await connection.disconnect()
        raise
    return result


def _lease_rule(lease: str | _LeaseRule | None) -> tuple[str, str]:
    """transition.lua's lease rule and token for ``lease`` (see :meth:`TaskStore._move`)."""
    if lease is None:
        return ("any", "")
    if isinstance(lease, _LeaseRule):
        return (lease.value, "")
    return ("held", lease)


def _guard(or_from: TaskState | Collection[TaskState] | None) -> str:
    """transition.lua's guard for a move of a task without a record or in ``or_from``."""
    if or_from is None:
        return "1"
    if isinstance(or_from, TaskState):
        return or_from.value
    return " ".join(sorted(TaskState(state).value for state in or_from))


def _state(raw: object, task_id: str = "?") -> TaskState | None:
    """The state Redis holds (None: no record); :class:`TaskRecordUnusable` for one this version
    does not know."""
    if not raw:
        return None
    text = as_text(cast(bytes | str, raw))
    try:
        return TaskState(text)
    except ValueError:
        raise TaskRecordUnusable(task_id, f"a state this version does not know: {text[:40]!r}") from None


def _script(source: str) -> str:
    """A Lua script of shared/lua with the states this version knows and the key type check
    (wrong_key_type.lua) filled in."""
    check = resources.files("shared").joinpath("lua", "wrong_key_type.lua").read_text()
    return source.replace("{KNOWN_STATES}", " ".join(state.value for state in TaskState)).replace(
        "{WRONG_KEY_TYPE}", check
    )


def _state_or_error(task_id: str, raw: object) -> TaskState | Exception | None:
    """:func:`_state` of one task of a group-commit round, its error (a key that holds something
    else than a record, an unknown state) as its result: the others of the round stand."""
    if isinstance(raw, Exception):
        return _unusable(task_id, raw) or raw
    try:
        return _state(raw, task_id)
    except TaskRecordUnusable as exc:
        return exc


#: The error a script of shared/lua answers for a task's record it cannot use.
_TASK_RECORD_ERROR = "TASKRECORD "


def _execute_with_look(
    pipe: redis.client.Pipeline, task_id: str, look: tuple[bytes, int] | None
) -> list[Any]:
    """Run the transaction ``pipe`` holds (a move, first) with ``look`` put in the pending give-ups
    at its end, and return the replies, errors among them. A look Redis refused (its key holds
    another type) is logged: the move stands without it."""
    if look is not None:
        pipe.zadd(keys.GIVE_UPS_PENDING, {look[0]: look[1]})
    replies: list[Any] = pipe.execute(raise_on_error=False)
    if look is not None and isinstance(replies[-1], Exception):
        log.error("task %s: its give-up's second look was not recorded: %s", task_id, replies[-1])
    return replies


@contextmanager
def _record_errors(task_id: str, *, own_key: bool = False) -> Iterator[None]:
    """Raise :class:`TaskRecordUnusable` for a Redis error that says the task's record is unusable
    (see :func:`_unusable`); any other error as it is."""
    try:
        yield
    except redis.ResponseError as exc:
        unusable = _unusable(task_id, exc, own_key=own_key)
        if unusable is None:
            raise
        raise unusable from exc


def _unusable(task_id: str, exc: Exception, *, own_key: bool = False) -> TaskRecordUnusable | None:
    """The error of a task whose record is unusable: a script's TASKRECORD error, or (``own_key``:
    a command on the task's key alone) Redis's WRONGTYPE; None for another error (an error of a
    shared key is no task's own)."""
    message = str(exc)
    if message.startswith(_TASK_RECORD_ERROR):
        return TaskRecordUnusable(task_id, message[len(_TASK_RECORD_ERROR) :])
    if own_key and message.startswith("WRONGTYPE"):
        return TaskRecordUnusable(task_id, "its key holds something else than a task record")
    return None


def _record(task_id: str, raw: Mapping[bytes | str, bytes | str]) -> TaskRecord | None:
    if not raw:
        return None
    try:
        fields = {as_text(k): as_text(v) for k, v in raw.items()}
    except UnicodeDecodeError:
        raise TaskRecordUnusable(task_id, "a record that is not UTF-8 text") from None
    state = _state(fields.get("state", ""), task_id)
    if state is None:
        raise TaskRecordUnusable(task_id, "a record without a state")
    return TaskRecord(task_id=task_id, state=state, fields=fields)
