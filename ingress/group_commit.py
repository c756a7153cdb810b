"""Group commit: the concurrent acknowledgements of one ingress process write to Redis together.

Each acknowledgement needs one Redis round trip (the task's state and its queue message). Under
load, many requests of the process's event loop want that round trip at the same moment, and a
round trip's fixed costs (the client's packing and bookkeeping, two system calls on each side, a
wake-up of Redis, a script call's own overhead) cost more CPU than the writes themselves. So the
items wait in one list, and a single *flusher* task sends all that are waiting at once (the
intake makes them one script call: shared/lua/received.lua), hands each request its own outcome,
and goes on with the items that arrived meanwhile. Nobody waits for a timer: alone, an item is
sent on the loop's next turn, so a quiet ingress answers as fast as without grouping, and a busy
one sends fewer, fuller round trips.

Every request still returns only after Redis answered for its own item, so an acknowledgement
still means the callback is in Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


#: Most items in one round trip; the rest wait for the next one.
DEFAULT_MAX_BATCH = 64


class GroupCommit(Generic[T, R]):
    """Runs ``flush`` for the items of concurrent :meth:`submit` calls, several at once.

    ``flush`` gets a list of items and returns one outcome per item, in order: a result, or the
    exception to raise in that item's :meth:`submit`. If ``flush`` itself raises, every item of the
    round gets that exception, and so does every item waiting behind it: a round that failed as a
    whole says the store cannot be reached now (a hung Redis), and the items queued behind it
    would otherwise learn the same one timeout at a time, long after the provider gave up. The
    next item submitted gets a round of its own. ``flush`` must return (or raise) in bounded time,
    e.g. through a socket timeout: the requests waiting on it have no timeout of their own.

    One instance serves one event loop (the gunicorn worker process's)."""

    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[Sequence[R | Exception]]],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._flush = flush
        self._max_batch = max_batch
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """``item``'s outcome from ``flush``: returned, or raised when it is an exception."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._run_rounds())
        # A request cancelled meanwhile (its client went away) cancels only its own future: the
        # round runs in the flusher task, and the other requests of the round get their outcomes.
        return await future

    async def _run_rounds(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                failure = await self._round(batch)
                if failure is not None:
                    behind, self._waiting = self._waiting, []
                    _settle(behind, [failure] * len(behind))
        finally:
            self._flusher = None
            # Items that came in while the task was ending (it was cancelled, say) get a flusher.
            if self._waiting:
                self._flusher = asyncio.create_task(self._run_rounds())

    async def _round(self, batch: list[tuple[T, asyncio.Future[R]]]) -> Exception | None:
        """Flush ``batch`` and settle its futures; return the exception when the round failed as
        a whole."""
        try:
            outcomes = await self._flush([item for item, _ in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"flush returned {len(outcomes)} outcomes for {len(batch)} items")
        except Exception as exc:  # every waiter must learn its item's fate, whatever happened
            _settle(batch, [exc] * len(batch))
            return exc
        except BaseException as exc:  # even then (cancelled): the waiters would wait forever
            interrupted = RuntimeError(f"the round was interrupted: {type(exc).__name__}")
            _settle(batch, [interrupted] * len(batch))
            raise
        _settle(batch, outcomes)
        return None


def _settle(waiters: Sequence[tuple[object, asyncio.Future[R]]], outcomes: Sequence[R | Exception]) -> None:
    """Give each waiter its outcome (a waiter already done, cancelled say, is left alone)."""
    for (_, future), outcome in zip(waiters, outcomes, strict=True):
        if future.done():
            continue
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
