"""Each task's state record in Redis: received -> processing -> stored | partial | failed."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources

import redis

from shared import keys

#: Recently changed tasks kept in the recent index.
DEFAULT_RECENT_KEEP = 10_000


class TaskState(StrEnum):
    RECEIVED = "received"
    PROCESSING = "processing"
    STORED = "stored"
    PARTIAL = "partial"
    FAILED = "failed"


#: States a task ends in; a manifest exists for each.
FINAL_STATES = frozenset({TaskState.STORED, TaskState.PARTIAL, TaskState.FAILED})


@dataclass(frozen=True, slots=True)
class TaskRecord:
    task_id: str
    state: TaskState
    fields: Mapping[str, str]


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
        script = resources.files("shared").joinpath("lua/transition.lua").read_text()
        self._transition = client.register_script(script)

    def mark_received(self, task_id: str, received_at: str) -> TaskState | None:
        """Record a new task as received; a task already known keeps its state.
        Returns the state it had, or None when it is new."""
        return self._move(task_id, TaskState.RECEIVED, {"receivedAt": received_at}, only_if_new=True)

    def move(self, task_id: str, state: TaskState, **fields: str) -> TaskState | None:
        """Set the state (and extra fields) of a task; returns the previous state."""
        return self._move(task_id, state, fields, only_if_new=False)

    def get(self, task_id: str) -> TaskRecord | None:
        raw = self._client.hgetall(keys.task(task_id))
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        return TaskRecord(task_id=task_id, state=TaskState(fields["state"]), fields=fields)

    def counts(self) -> dict[str, int]:
        """How many tasks are in each state (within the record TTL)."""
        pipe = self._client.pipeline(transaction=False)
        for state in TaskState:
            pipe.zcard(keys.state_index(state))
        return dict(zip((s.value for s in TaskState), pipe.execute(), strict=True))

    def _move(
        self, task_id: str, state: TaskState, fields: Mapping[str, str], *, only_if_new: bool
    ) -> TaskState | None:
        now_ms = int(self._clock() * 1000)
        pairs = [item for pair in fields.items() for item in pair]
        old = self._transition(
            keys=[keys.task(task_id), keys.RECENT],
            args=[
                task_id,
                state.value,
                now_ms,
                self._ttl_s,
                "1" if only_if_new else "0",
                self._recent_keep,
                keys.STATE_INDEX_PREFIX,
                *pairs,
            ],
        )
        return TaskState(_text(old)) if old else None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
