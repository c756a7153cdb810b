"""The tasks mjhook submitted itself: recorded at submission, found again by the polling fallback
(those still ``submitted`` after the grace period) and by ``mjhook recover`` (all in a window).

Two sorted sets, both scored by submit time: ``keys.SUBMITTED`` holds every task mjhook
submitted, whatever became of it; the state index of ``submitted`` (kept by
:class:`~shared.taskstate.TaskStore`) holds those still waiting for their result."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import cast

import redis

from shared import keys
from shared.clock import utc_iso
from shared.redis_client import as_text
from shared.taskstate import TaskState, TaskStore

#: Overdue tasks considered in one poll pass at most (the oldest first).
DEFAULT_SCAN_LIMIT = 10_000


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

    def overdue(self, grace_s: float, *, limit: int = DEFAULT_SCAN_LIMIT) -> list[tuple[str, float]]:
        """Tasks still ``submitted`` ``grace_s`` seconds or more after their submission, as
        (taskId, submit time in Unix seconds), the oldest first."""
        cutoff_ms = int((self._clock() - grace_s) * 1000)
        index = keys.state_index(TaskState.SUBMITTED)
        return _pairs(
            self._client.zrangebyscore(index, "-inf", cutoff_ms, start=0, num=limit, withscores=True)
        )

    def since(self, since_s: float) -> list[tuple[str, float]]:
        """Every task mjhook submitted in the last ``since_s`` seconds, whatever its state now, as
        (taskId, submit time in Unix seconds), the oldest first."""
        cutoff_ms = int((self._clock() - since_s) * 1000)
        return _pairs(self._client.zrangebyscore(keys.SUBMITTED, cutoff_ms, "+inf", withscores=True))

    def last_polled(self, task_ids: list[str]) -> dict[str, float]:
        """When each of ``task_ids`` was last polled (Unix seconds); those never polled (or not
        within ``poll_give_up_s``) are left out."""
        if not task_ids:
            return {}
        scores = self._client.zmscore(keys.POLLED, task_ids)
        return {task_id: score / 1000 for task_id, score in zip(task_ids, scores, strict=True) if score}

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


def _pairs(raw: object) -> list[tuple[str, float]]:
    pairs = cast(list[tuple[bytes, float]], raw)
    return [(as_text(member), score / 1000) for member, score in pairs]
