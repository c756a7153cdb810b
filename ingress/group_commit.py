"""Group commit: the request threads of one ingress process write their callbacks to Redis together.

Each acknowledgement needs one Redis round trip (the task's state and its queue message, in one
script call). Under load, many request threads want that round trip at the same moment, and on
two cores the round trip's fixed costs (the redis-py call, two system calls on each side, a wake-up
of Redis) cost more CPU than the script itself. So the threads take turns at being the *leader*:
the first thread to arrive sends its own item and every item that is waiting, as one pipeline, and
hands the results out; the threads that arrived meanwhile wait, and the first of those left
waiting leads the next round. Nobody waits for a timer: alone, a thread leads at once, so a quiet
ingress answers as fast as without grouping, and a busy one sends fewer, fuller round trips.

Every thread still returns only after Redis answered for its own item, so an acknowledgement
still means the callback is in Redis.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Most items in one round trip; the rest wait for the next one.
DEFAULT_MAX_BATCH = 64


class GroupCommit(Generic[T, R]):
    """Runs ``flush`` for the items of concurrent :meth:`submit` calls, several at once.

    ``flush`` gets a list of items and returns one outcome per item, in order: a result, or the
    exception to raise in that item's :meth:`submit`. If ``flush`` itself raises, every item of the
    round gets that exception. ``flush`` must return (or raise) in bounded time, e.g. through a
    socket timeout: the threads waiting on it have no timeout of their own."""

    def __init__(
        self, flush: Callable[[list[T]], Sequence[R | Exception]], *, max_batch: int = DEFAULT_MAX_BATCH
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._flush = flush
        self._max_batch = max_batch
        self._mutex = threading.Lock()
        self._waiting: list[_Slot[T, R]] = []
        self._leading = False

    def submit(self, item: T) -> R:
        """``item``'s outcome from ``flush``: returned, or raised when it is an exception."""
        slot: _Slot[T, R] = _Slot(item)
        with self._mutex:
            self._waiting.append(slot)
            # Decided under the mutex, like a promotion (see _lead), so neither can miss the other.
            slot.lead = not self._leading
            self._leading = True
        if not slot.lead:
            slot.wait()
        if slot.lead:
            self._lead(slot)
        outcome = slot.outcome
        if isinstance(outcome, Exception):
            raise outcome
        return outcome  # type: ignore[return-value]

    def _lead(self, own: _Slot[T, R]) -> None:
        """Flush the oldest waiting items (``own`` first), then pass the lead to the next waiter."""
        with self._mutex:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
        outcomes: Sequence[R | Exception]
        interrupted: BaseException | None = None
        try:
            outcomes = self._flush([slot.item for slot in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"flush returned {len(outcomes)} outcomes for {len(batch)} items")
        except Exception as exc:  # every waiter must learn its item's fate, whatever happened
            outcomes = [exc] * len(batch)
        except BaseException as exc:  # even then: the waiters would wait forever
            outcomes = [RuntimeError(f"the round was interrupted: {type(exc).__name__}")] * len(batch)
            interrupted = exc
        with self._mutex:
            if self._waiting:
                successor = self._waiting[0]
                successor.lead = True
                successor.wake()
            else:
                self._leading = False
        for slot, outcome in zip(batch, outcomes, strict=True):
            slot.outcome = outcome
            if slot is not own:
                slot.wake()
        if interrupted is not None:
            raise interrupted


class _Slot(Generic[T, R]):
    """One submitted item: its outcome, and whether its thread is to lead the next round."""

    __slots__ = ("_ready", "item", "lead", "outcome")

    def __init__(self, item: T) -> None:
        self.item = item
        self.outcome: R | Exception | None = None
        # A thread that finds nobody leading leads; a waiter is made leader by the one before.
        self.lead = False
        self._ready = threading.Lock()
        self._ready.acquire()

    def wait(self) -> None:
        self._ready.acquire()

    def wake(self) -> None:
        self._ready.release()
