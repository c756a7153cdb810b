"""The tasks mjhook submitted itself: recorded at submission, found again by the polling fallback
(those still ``submitted`` after the grace period) and by ``mjhook recover`` (all in a window).

Two sorted sets, both scored by submit time: ``keys.SUBMITTED`` holds every task mjhook
submitted, whatever became of it; the state index of ``submitted`` (kept by
:class:`~shared.taskstate.TaskStore`) holds those still waiting for their result."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import cast

import redis

from shared import keys
from shared.clock import utc_iso
from shared.redis_client import as_text
from shared.taskstate import TaskRecord, TaskState, TaskStore

log = logging.getLogger(__name__)

#: Times a task's message hands it back to the polling fallback (a result the provider could not
#: verify, or expired links it could not renew, on the message's last attempt) before a last
#: attempt ends it instead: a provider that answers polls but keeps refusing the rest would
#: otherwise send the task round for good, never ending.
MAX_POLL_HANDOFFS = 3
#: The task record's field counting those hand-offs.
HANDOFFS_FIELD = "pollHandOffs"


#: How long the scratch copy of a pass's never-polled tasks lives at most, ms.
SCRATCH_TTL_MS = 60_000


class SubmittedTasks:
    """Records and finds submitted tasks. ``clock`` returns Unix seconds."""

    def __init__(
        self,
        client: redis.Redis,
        tasks: TaskStore,
        *,
        ttl_s: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._tasks = tasks
        self._ttl_s = ttl_s
        self._clock = clock

    def record(self, task_id: str, fields: Mapping[str, str]) -> None:
        """Record ``task_id`` as just submitted (state ``submitted`` unless its callback came
        first), with ``fields`` (its parameters) and ``submittedAt`` on its state record."""
        now = self._clock()
        self._tasks.mark_submitted(task_id, submittedAt=utc_iso(now), **fields)
        now_ms = int(now * 1000)
        pipe = self._client.pipeline(transaction=False)
        pipe.zadd(keys.SUBMITTED, {task_id: now_ms})
        pipe.zremrangebyscore(keys.SUBMITTED, "-inf", now_ms - self._ttl_s * 1000)
        pipe.execute()

    def may_wait_again(self, task_id: str) -> bool:
        """Whether the task was handed back to the polling fallback fewer than
        :data:`MAX_POLL_HANDOFFS` times (:meth:`wait_again`)."""
        return _handoffs(self._tasks.get(task_id)) < MAX_POLL_HANDOFFS

    def wait_again(self, task_id: str) -> bool:
        """Hand a task whose result was called back but could not be verified with the provider,
        or whose expired links it could not renew (down past every retry), back to the polling
        fallback: ``submitted`` again, as if submitted now, polled once the grace has passed.
        Only from ``received`` or ``processing``: a task that moved on keeps its state (False);
        and at most :data:`MAX_POLL_HANDOFFS` times (then False). A task another message of it
        (a duplicate) handed back already is the fallback's too (True): that message's give-up must
        not fail it."""
        record = self._tasks.get(task_id)
        if record is not None and record.state is TaskState.SUBMITTED:
            return self._handed_back(task_id)
        handoffs = _handoffs(record)
        if handoffs >= MAX_POLL_HANDOFFS:
            return False
        now = self._clock()
        before = self._tasks.move_from(
            task_id,
            (TaskState.RECEIVED, TaskState.PROCESSING),
            TaskState.SUBMITTED,
            submittedAt=utc_iso(now),
            **{HANDOFFS_FIELD: str(handoffs + 1)},
        )
        if before is TaskState.SUBMITTED:
            return self._handed_back(task_id)
        if before not in (None, TaskState.RECEIVED, TaskState.PROCESSING):
            return False
        self._client.zadd(keys.SUBMITTED, {task_id: int(now * 1000)})
        return True

    def _handed_back(self, task_id: str) -> bool:
        """True for a task another message handed back: it is in the polling index (added there
        if that message's hand-off was cut short before it, its time kept if not)."""
        self._client.zadd(keys.SUBMITTED, {task_id: int(self._clock() * 1000)}, nx=True)
        return True

    def due(self, grace_s: float, interval_s: float, *, limit: int) -> list[tuple[str, float]]:
        """Up to ``limit`` tasks still ``submitted`` ``grace_s`` seconds or more after their
        submission and not polled within ``interval_s`` seconds, as (taskId, submit time in Unix
        seconds): those never polled first, the oldest submission first; then the longest
        unpolled. Chosen among all such tasks, however many wait (a window of the oldest ones
        would poll those again and again, and never reach a newer one)."""
        now = self._clock()
        cutoff = now - grace_s
        waiting = keys.state_index(TaskState.SUBMITTED)
        never = self._never_polled(waiting, cutoff, limit)
        return never + self._longest_unpolled(waiting, cutoff, now - interval_s, limit - len(never))

    def _never_polled(self, waiting: str, cutoff: float, limit: int) -> list[tuple[str, float]]:
        """Up to ``limit`` tasks waiting since ``cutoff`` (Unix seconds) or before and never
        polled, the oldest first. Redis works out the difference in a scratch key and sends only
        those (however many tasks wait, a pass reads no more than its batch)."""
        if limit <= 0:
            return []
        scratch = keys.DUE_SCRATCH.format(token=uuid.uuid4().hex)
        pipe = self._client.pipeline(transaction=True)
        pipe.zdiffstore(scratch, [waiting, keys.POLLED])
        pipe.pexpire(scratch, SCRATCH_TTL_MS)  # gone even if this pass dies before its delete
        pipe.execute()
        try:
            return self._read_pages(scratch, cutoff, limit)
        finally:
            self._client.delete(scratch)

    def _read_pages(self, key: str, cutoff: float, limit: int) -> list[tuple[str, float]]:
        """Up to ``limit`` readable tasks of the sorted set ``key`` scored up to ``cutoff`` (Unix
        seconds), the lowest score first, read page by page past members that are no taskId."""
        found: list[tuple[str, float]] = []
        for pairs in self._pages(key, cutoff * 1000, page=limit):
            found += pairs
            if len(found) >= limit:
                break
        return found[:limit]

    def _longest_unpolled(
        self, waiting: str, cutoff: float, polled_before: float, limit: int
    ) -> list[tuple[str, float]]:
        """Up to ``limit`` tasks waiting since ``cutoff`` or before, polled last before
        ``polled_before`` (Unix seconds), the longest unpolled first: read from the poll marks in
        pages, skipping marks of tasks no longer waiting."""
        if limit <= 0:
            return []
        found: list[tuple[str, float]] = []
        for marks in self._pages(keys.POLLED, int(polled_before * 1000), page=max(limit, 100)):
            if marks:
                submitted_ms = self._client.zmscore(waiting, [task_id for task_id, _ in marks])
                found += [
                    (task_id, at / 1000)
                    for (task_id, _), at in zip(marks, submitted_ms, strict=True)
                    if at is not None and at / 1000 <= cutoff
                ]
            if len(found) >= limit:
                break
        return found[:limit]

    def _pages(self, key: str, max_score: float, *, page: int) -> Iterator[list[tuple[str, float]]]:
        """The readable members of the sorted set ``key`` scored up to ``max_score``, the lowest
        first, ``page`` members read at a time, as (taskId, Unix seconds): a page's members that
        are no taskId are left out of it, and count in the offset of the next."""
        start = 0
        while raw := self._client.zrangebyscore(
            key, "-inf", max_score, start=start, num=page, withscores=True
        ):
            start += len(raw)
            yield _pairs(raw)

    def since(self, since_s: float) -> list[tuple[str, float]]:
        """Every task mjhook submitted in the last ``since_s`` seconds, whatever its state now, as
        (taskId, submit time in Unix seconds), the oldest first. The window is capped at the task
        TTL (``ttl_s``): an older task's record is gone, and nothing says whether it ended (the
        index keeps it until the next submission trims it). A member of the index that is no
        UTF-8 text is left out (logged): see :meth:`since_all`."""
        found = []
        for member, at in self.since_all(since_s):
            if isinstance(member, bytes):
                log.warning("left out: the index %s names a task %r", keys.SUBMITTED, member[:200])
                continue
            found.append((member, at))
        return found

    def since_all(self, since_s: float) -> list[tuple[str | bytes, float]]:
        """:meth:`since`, with each member of the index that is no UTF-8 text (no taskId mjhook
        submits: written by hand, or another program) kept in its place as its bytes."""
        cutoff_ms = int((self._clock() - min(since_s, self._ttl_s)) * 1000)
        pairs = cast(
            list[tuple[bytes, float]],
            self._client.zrangebyscore(keys.SUBMITTED, cutoff_ms, "+inf", withscores=True),
        )
        return [(_text_or_bytes(member), score / 1000) for member, score in pairs]

    def hold_polls(self, seconds: float) -> None:
        """No task is polled for ``seconds`` (the provider asked so, with a ``Retry-After``)."""
        self._client.set(keys.POLL_HOLD, "1", px=max(1, int(seconds * 1000)))

    def polls_held_s(self) -> float:
        """Seconds left of a hold of the polls (0: none)."""
        left_ms = int(self._client.pttl(keys.POLL_HOLD))
        return max(0, left_ms) / 1000

    def mark_polled(self, task_id: str, *, keep_s: float) -> None:
        """Note that ``task_id`` was polled now; marks older than ``keep_s`` seconds are dropped."""
        now_ms = int(self._clock() * 1000)
        pipe = self._client.pipeline(transaction=False)
        pipe.zadd(keys.POLLED, {task_id: now_ms})
        pipe.zremrangebyscore(keys.POLLED, "-inf", now_ms - int(keep_s * 1000))
        pipe.execute()

    def forget_polled(self, task_id: str) -> None:
        """Drop the poll mark of a task whose wait is over."""
        self._client.zrem(keys.POLLED, task_id)


def _handoffs(record: TaskRecord | None) -> int:
    """How many times the task of ``record`` was handed back to the polling fallback."""
    count = record.fields.get(HANDOFFS_FIELD, "") if record is not None else ""
    return int(count) if count.isascii() and count.isdigit() else 0


def _text_or_bytes(member: bytes) -> str | bytes:
    """A member of an index as text, or as it is when it is no UTF-8 text."""
    try:
        return as_text(member)
    except UnicodeDecodeError:
        return member


def _pairs(raw: object) -> list[tuple[str, float]]:
    """(taskId, Unix seconds) of a sorted set's members and ms scores; a member that is no UTF-8
    text (no taskId mjhook writes: another program's) is left out, logged, not a pass's end."""
    found = []
    for member, score in cast(list[tuple[bytes, float]], raw):
        task_id = _text_or_bytes(member)
        if isinstance(task_id, bytes):
            log.warning("left out of the polling: a member %r that is no taskId", task_id[:200])
            continue
        found.append((task_id, score / 1000))
    return found
