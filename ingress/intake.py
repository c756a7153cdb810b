"""What happens to a callback once it passed the checks: queued in Redis, or spooled."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import dramatiq
import redis
import redis.asyncio
from dramatiq.brokers.redis import RedisBroker
from redis.asyncio.connection import AbstractConnection as AsyncConnection

from ingress.group_commit import GroupCommit
from ingress.spool import Spool
from shared.callback import Callback
from shared.errors import MjhookError, QueueUnavailable
from shared.queue import queue_callback, redis_queued_message, writes_with_state
from shared.taskstate import Received, TaskState, TaskStore

log = logging.getLogger(__name__)


#: After Redis failed, new callbacks go straight to the spool for this long, seconds, so the
#: provider is not kept waiting on connection attempts during an outage.
DEFAULT_REDIS_PAUSE_S = 1.0
#: Threads of one process for the enqueues that cannot share the group commit (RabbitMQ, a queue
#: in another Redis); the spool's appends have threads of their own.
DEFAULT_INTAKE_THREADS = 8
#: Longest an acknowledgement waits for such an enqueue before it spools the callback instead,
#: seconds: a broker blocking its publishers (RabbitMQ's memory alarm) never fails, and the
#: provider hangs up after 15 s. The enqueue may still land later: the workers deduplicate.
DEFAULT_ENQUEUE_DEADLINE_S = 5.0


class CallbackIntake:
    """Queues a valid callback durably: in Redis, or while Redis cannot take it, in the spool.

    :meth:`accept` runs on the ingress's event loop; :meth:`enqueue` is its blocking twin, for the
    spool's drainer thread. The blocking work of an acknowledgement runs on threads of its own
    (``threads``), not the loop's default pool, where the read endpoints and the keeping of refused
    bodies wait on Redis too: while Redis hangs, they must not hold up a callback's spool append."""

    def __init__(
        self,
        *,
        broker: dramatiq.Broker,
        tasks: TaskStore,
        acks: redis.asyncio.Redis | None = None,
        spool: Spool | None = None,
        pause_s: float = DEFAULT_REDIS_PAUSE_S,
        monotonic: Callable[[], float] = time.monotonic,
        threads: int = DEFAULT_INTAKE_THREADS,
        enqueue_deadline_s: float = DEFAULT_ENQUEUE_DEADLINE_S,
    ) -> None:
        self._broker = broker
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="intake")
        # Appends serialize on the spool file's lock anyway; never behind a hung enqueue.
        self._spool_threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="spool")
        self._enqueue_deadline_s = enqueue_deadline_s
        self.tasks = tasks
        self._spool = spool
        # When the queue is a Redis broker on the task-state Redis, state and message go in one call.
        # With ``acks`` (an asyncio client of that Redis), the calls of concurrent requests go in
        # one round trip (see ingress.group_commit). Otherwise (RabbitMQ, a queue in another
        # Redis, no ``acks``) a blocking enqueue runs in a thread.
        self._acks = acks if writes_with_state(broker, tasks) else None
        self._group: GroupCommit[Received, TaskState | None] = GroupCommit(self._record_received)
        self._connection: AsyncConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pause_s = pause_s
        self._monotonic = monotonic
        self._redis_paused_until = 0.0

    async def accept(self, callback: Callback) -> None:
        """Queue ``callback`` or spool it; raise :class:`QueueUnavailable` or
        :class:`SpoolUnavailable` when neither is possible."""
        if self._spool is None:
            await self._enqueue_async(callback)
            return
        if self._monotonic() >= self._redis_paused_until:
            try:
                await self._enqueue_async(callback)
                return
            except QueueUnavailable as exc:
                log.warning("Redis unavailable (%s): spooling callbacks locally", exc)
                self._pause()
        # An fsync: off the event loop, which other requests share.
        await asyncio.get_running_loop().run_in_executor(self._spool_threads, self._spool.append, callback)

    def enqueue(self, callback: Callback) -> None:
        """Record ``callback`` as received and put it on the queue, blocking (the spool's drainer)."""
        try:
            queue_callback(self._broker, self.tasks, callback)
        except QueueUnavailable:
            self._failed()
            raise

    def drain_one(self, callback: Callback) -> None:
        """:meth:`enqueue` for the spool's drainer, given up after ``enqueue_deadline_s``
        (:class:`QueueUnavailable`: the drain pauses): the drainer holds the spool file's lock,
        and a broker blocking its publishers for good (RabbitMQ's memory alarm) must not keep the
        acknowledgements that spool meanwhile waiting on that lock. The enqueue may still land
        later: the workers deduplicate."""
        try:
            done = self._threads.submit(self._enqueue_unless_paused, callback)
        except RuntimeError as exc:
            # The pool is shut down (the process exits mid-drain): not the queue refusing this
            # callback for good, so it must stay spooled, not be set aside.
            raise QueueUnavailable("the ingress is shutting down") from exc
        try:
            done.result(timeout=self._enqueue_deadline_s)
        except TimeoutError:  # concurrent.futures' is this one since Python 3.11
            raise self._deadline_passed() from None

    def _failed(self) -> None:
        """Redis (or the broker) refused an enqueue; a hook for counting."""

    def _enqueue_unless_paused(self, callback: Callback) -> None:
        """:meth:`enqueue`, unless Redis failed since this callback was handed to a thread: those
        waiting behind a hung enqueue go to the spool at once instead of each waiting it out."""
        if self._spool is not None and self._monotonic() < self._redis_paused_until:
            raise QueueUnavailable("Redis failed a moment ago")
        try:
            self.enqueue(callback)
        except QueueUnavailable:
            # Paused here, before this thread takes the next one (the loop would learn it later).
            self._pause()
            raise

    def _pause(self) -> None:
        self._redis_paused_until = self._monotonic() + self._pause_s

    async def _enqueue_in_thread(self, callback: Callback) -> None:
        """The blocking enqueue on a thread; with a spool to fall back on, waited for at most
        ``enqueue_deadline_s`` (then :class:`QueueUnavailable`, and the callback is spooled)."""
        done = asyncio.get_running_loop().run_in_executor(
            self._threads, self._enqueue_unless_paused, callback
        )
        if self._spool is None:
            await done
            return
        try:
            await asyncio.wait_for(done, self._enqueue_deadline_s)
        except TimeoutError:
            raise self._deadline_passed() from None

    def _deadline_passed(self) -> QueueUnavailable:
        """An enqueue outlived ``enqueue_deadline_s``: counted as a failure, Redis paused, and the
        error to raise (the callback is spooled, or the drain paused)."""
        self._failed()
        self._pause()
        return QueueUnavailable(f"the queue did not answer within {self._enqueue_deadline_s:g} s")

    async def _enqueue_async(self, callback: Callback) -> None:
        if self._acks is None:
            await self._enqueue_in_thread(callback)
            return
        assert isinstance(self._broker, RedisBroker)
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A connection (and the rounds on it) serves the loop it was opened in: gunicorn's
            # worker has one loop for good, a test harness may start another.
            self._loop = loop
            self._group = GroupCommit(self._record_received)
            self._connection = None
        queued = redis_queued_message(self._broker, callback)
        try:
            await self._group.submit(Received(callback.task_id, callback.received_at, queued))
        except MjhookError:
            raise  # the task's own trouble (an unusable record): 503, not the spool
        except (redis.RedisError, OSError) as exc:
            self._failed()
            raise QueueUnavailable(f"cannot record the task: {type(exc).__name__}") from exc
        except Exception as exc:
            # Nothing unforeseen in a round may answer 500: the spool keeps the callback.
            log.exception("recording task %s failed unexpectedly", callback.task_id)
            raise QueueUnavailable(f"cannot record the task: {type(exc).__name__}") from exc

    async def _record_received(self, received: list[Received]) -> list[TaskState | Exception | None]:
        """One group-commit round (only ever one at a time), on a connection kept for it."""
        assert self._acks is not None
        if self._connection is None:
            self._connection = await self._acks.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        return await self.tasks.mark_received_many(received, connection=self._connection)
