"""The polling fallback in the workers: a self-scheduling dramatiq message runs one pass over the
submitted tasks whose callback is overdue, every ``poll_interval_s``.

One pass at a time across all workers (a Redis lock with a TTL), and one chain of messages: each
run names its successor in ``keys.POLL_NEXT`` before enqueueing it, so a message with any other id
(a redelivered or retried old one, a second kick) does nothing. Every worker process checks now
and then that a poll is scheduled, and kicks one when none is (at boot, and should the chain ever
break).

A poll that kills its worker process (an answer that makes it run out of memory) never ends: the
pass's message is redelivered, or a new chain kicked, and the same task polled again, the workers
dying every few minutes for good. So each task's unended poll starts are counted
(:class:`PollStarts`), and a task with too many is given up instead of polled."""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis
from dramatiq.middleware import Middleware

from shared import keys
from shared.callback import Callback, callback_limits
from shared.clock import utc_iso
from shared.errors import (
    ProviderError,
    ProviderRefused,
    ProviderUnavailable,
    QueueUnavailable,
    TaskRecordUnusable,
)
from shared.metrics import WorkerMetrics
from shared.periodic import PeriodicThread
from shared.polling import CODE_FAILURE, PollOutcome, PollResult, ResultPoller
from shared.provider import MAX_RETRY_AFTER_BELIEVED_S, OWN_REFUSAL_CODES, ProviderClient
from shared.queue import POLL_QUEUE
from shared.redis_client import as_text
from shared.settings import Settings
from shared.submitted import SubmittedTasks
from shared.taskstate import TaskState, TaskStore
from workers.attempt_starts import count_start
from workers.second_look import PendingGiveUps

log = logging.getLogger(__name__)

#: The actor (declared in workers/tasks.py) that runs one poll pass.
POLL_SILENT_TASKS = "poll_silent_tasks"

#: Tasks polled in one pass at most; the rest wait for the next pass.
DEFAULT_BATCH = 100
#: A pass starts no new poll after this many seconds.
DEFAULT_PASS_BUDGET_S = 120.0
#: The pass's lock lives this much longer than its budget (one slow poll may overrun it).
LOCK_MARGIN_S = 60.0
#: ``POLL_NEXT`` outlives the moment its message is due by this much: time for a busy worker to
#: take the message, or for a dead worker's message to be redelivered.
DEFAULT_NEXT_SLACK_S = 120.0
#: Longest hold of every poll a ``Retry-After`` may ask for, seconds (the provider client reads
#: none longer): a broken or hostile value must not stop the polling for good.
MAX_POLL_HOLD_S = MAX_RETRY_AFTER_BELIEVED_S


def poll_message() -> dramatiq.Message[Any]:
    return dramatiq.Message(
        queue_name=POLL_QUEUE, actor_name=POLL_SILENT_TASKS, args=(), kwargs={}, options={}
    )


class PollChain:
    """Keeps one poll message scheduled and one pass running at a time. ``enqueue(message,
    delay_ms)`` puts a message on the broker."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        enqueue: Callable[[dramatiq.Message[Any], int], None],
        period_s: float,
        lock_ttl_s: float = DEFAULT_PASS_BUDGET_S + LOCK_MARGIN_S,
        next_slack_s: float = DEFAULT_NEXT_SLACK_S,
    ) -> None:
        self._client = client
        self._enqueue = enqueue
        self._period_s = period_s
        self._lock_ttl_s = lock_ttl_s
        self._next_slack_s = next_slack_s

    def ensure_scheduled(self) -> bool:
        """Schedule a poll now unless one is scheduled or running; True when it did."""
        message = poll_message()
        ttl_ms = int((self._next_slack_s + self._lock_ttl_s) * 1000)
        if not self._client.set(keys.POLL_NEXT, message.message_id, nx=True, px=ttl_ms):
            return False
        self._enqueue(message, 0)
        log.info("poll of silent tasks scheduled")
        return True

    def run(self, message_id: str, work: Callable[[], object]) -> bool:
        """Run ``work`` for message ``message_id`` unless it is a duplicate or another pass is
        running, then schedule the next message. True when ``work`` ran."""
        lock = self._client.lock(keys.POLL_LOCK, timeout=self._lock_ttl_s, blocking=False)
        if not lock.acquire(token=uuid.uuid4().hex):
            log.debug("poll message %s: another pass is running", message_id)
            return False
        try:
            # Checked under the lock, so two copies of one message cannot both pass in turn.
            expected = self._client.get(keys.POLL_NEXT)
            if expected is not None and as_text(expected) != message_id:
                log.debug("poll message %s is a duplicate; %s is the current one", message_id, expected)
                return False
            # Ours while we work, so no worker kicks a second chain meanwhile.
            self._client.set(
                keys.POLL_NEXT, message_id, px=int((self._lock_ttl_s + self._next_slack_s) * 1000)
            )
            try:
                work()
            except Exception:
                log.exception("poll pass failed; the next one runs as scheduled")
            self._schedule_next()
        finally:
            try:
                lock.release()
            except redis.exceptions.LockError:
                log.warning("the poll lock expired before the pass ended")
        return True

    def _schedule_next(self) -> None:
        message = poll_message()
        ttl_ms = int((self._period_s + self._next_slack_s) * 1000)
        # Named before it is enqueued: once due, it must find itself expected.
        self._client.set(keys.POLL_NEXT, message.message_id, px=ttl_ms)
        self._enqueue(message, int(self._period_s * 1000))


class PollStarts:
    """Counts in Redis the polls of each task started and not ended (:func:`keys.poll_starts`): a
    poll whose worker process dies during it ends nothing. A task whose polls were started more
    than ``max_starts`` times without ending is not polled again. A count expires ``ttl_s`` after
    its last start."""

    def __init__(self, client: redis.Redis, *, max_starts: int, ttl_s: int) -> None:
        self._client = client
        self._max_starts = max_starts
        self._ttl_s = ttl_s

    @contextmanager
    def counted(self, task_id: str) -> Iterator[str]:
        """Count a start of a poll of ``task_id`` (one pipelined round trip), ended with the block
        however it ends. Yields why the task must not be polled (too many starts before this one
        never ended; this one is not ended then), or "" to poll it. Redis errors raise."""
        key = keys.poll_starts(task_id)
        starts = count_start(self._client, key, ttl_s=self._ttl_s)
        if starts > self._max_starts:
            # Kept till it expires: should the task ever wait again, its polls still never ended.
            yield (
                f"polling this task was started {starts - 1} times and never ended (its worker "
                f"process died during it each time: killed, out of memory?); not polled again "
                f"(MJHOOK_MAX_ATTEMPT_STARTS={self._max_starts})"
            )
            return
        try:
            yield ""
        finally:
            self._client.delete(key)


@dataclass(frozen=True, slots=True)
class PassSummary:
    polled: int = 0
    queued: int = 0
    given_up: int = 0
    #: Why the pass stopped early (the provider unavailable or refusing the account), or "".
    stopped: str = ""
    #: Tasks whose poll failed with an unexpected error (logged): the pass went on without them.
    errors: int = 0


@dataclass(slots=True)
class _Tally:
    """What a pass did so far."""

    polled: int = 0
    queued: int = 0
    given_up: int = 0
    errors: int = 0

    def summary(self, stopped: str = "") -> PassSummary:
        return PassSummary(self.polled, self.queued, self.given_up, stopped, self.errors)


class SilentTaskPoller:
    """One pass: every task still ``submitted`` ``grace_s`` after submission, not polled in the
    last ``interval_s``, is polled (the longest waiting first); a finished one is queued like a
    callback; one still without a result ``give_up_s`` after submission is ``failed``, whatever
    its poll answered (but a refusal of the account), and gets the manifest of its failure from
    ``record_failure`` (the processor's: where the task has none), and is counted in
    ``metrics`` (``mjhook_tasks_total{outcome="failed"}``). A provider error stops the pass;
    another error of one task is logged and the pass goes on. A task whose polls ``starts`` says
    never ended (their worker process died) is given up the same way, not polled. With
    ``pending``, each give-up is recorded there as a second look with the task's move (one
    transaction), and removed once its manifest is recorded: a worker dying in between leaves
    the look, which any worker takes to finish the give-up
    (:meth:`workers.runtime.WorkerRuntime._look_again`); one whose manifest object storage could
    not take (``record_failure`` returned False) is due again a lease's time later.
    ``clock`` returns Unix seconds; ``monotonic`` times the pass budget."""

    def __init__(
        self,
        *,
        submitted: SubmittedTasks,
        tasks: TaskStore,
        poller: ResultPoller,
        starts: PollStarts,
        grace_s: float,
        interval_s: float,
        give_up_s: float,
        record_failure: Callable[[Callback, str], bool | None] | None = None,
        metrics: WorkerMetrics | None = None,
        pending: PendingGiveUps | None = None,
        batch: int = DEFAULT_BATCH,
        budget_s: float = DEFAULT_PASS_BUDGET_S,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._submitted = submitted
        self._tasks = tasks
        self._poller = poller
        self._starts = starts
        self._grace_s = grace_s
        self._interval_s = interval_s
        self._give_up_s = give_up_s
        self._record_failure = record_failure
        self._metrics = metrics
        self._pending = pending
        self._batch = batch
        self._budget_s = budget_s
        self._clock = clock
        self._monotonic = monotonic

    def run_once(self) -> PassSummary:
        held_s = self._submitted.polls_held_s()
        if held_s:
            return PassSummary(stopped=f"the provider asked to wait: {held_s:.0f} s left")
        deadline = self._monotonic() + self._budget_s
        tally = _Tally()
        for task_id, submitted_at in self._due():
            if self._monotonic() > deadline:
                break
            self._submitted.mark_polled(task_id, keep_s=self._give_up_s)
            with self._starts.counted(task_id) as never_ended:
                if never_ended:
                    tally.given_up += self._give_up(task_id, never_ended)
                    continue
                stopped = self._poll(tally, task_id, submitted_at)
            if stopped is not None:
                return stopped
        if tally.polled or tally.errors:
            log.info(
                "poll pass: %d polled, %d queued, %d given up, %d errors",
                tally.polled,
                tally.queued,
                tally.given_up,
                tally.errors,
            )
        return tally.summary()

    def _poll(self, tally: _Tally, task_id: str, submitted_at: float) -> PassSummary | None:
        """Poll ``task_id`` and act on the answer; the pass's summary when the pass must stop."""
        try:
            result = self._poller.poll(task_id)
        except (redis.exceptions.RedisError, QueueUnavailable):
            raise  # nothing can be recorded now: the pass ends (the chain logs why)
        except ProviderError as exc:
            return self._stop(tally, task_id, submitted_at, exc)
        except TaskRecordUnusable as exc:
            # Another version's record (a rolling deploy) or a hand edit: not this version's to
            # queue or give up; polled again at its interval, until its own version moves it.
            log.warning("task %s: not polled: %s", task_id, exc)
            tally.errors += 1
            return None
        except Exception as exc:
            log.exception("task %s: poll failed; the pass goes on", task_id)
            tally.errors += 1
            tally.given_up += self._give_up_if_due(task_id, submitted_at, f"poll failed: {exc!r}")
            return None
        self._count(tally, task_id, submitted_at, result)
        return None

    def _count(self, tally: _Tally, task_id: str, submitted_at: float, result: PollResult) -> None:
        """Act on a poll's ``result``: a queued task's wait is over; an unusable or overdue one is
        given up."""
        tally.polled += 1
        if result.outcome is PollOutcome.QUEUED:
            tally.queued += 1
            self._submitted.forget_polled(task_id)
        elif result.outcome is PollOutcome.UNUSABLE:
            tally.given_up += self._give_up(task_id, f"the provider's answer: {result.detail}")
        else:
            tally.given_up += self._give_up_if_due(task_id, submitted_at, result.detail)

    def _stop(self, tally: _Tally, task_id: str, submitted_at: float, exc: ProviderError) -> PassSummary:
        """End the pass on a provider error: the task is given up if overdue (a refusal of our
        account aside: that says nothing of it), and polls are held for a ``Retry-After``."""
        if not (isinstance(exc, ProviderRefused) and exc.code in OWN_REFUSAL_CODES):
            # Else a task the provider always answers 5xx (or unreadably) was polled for good.
            tally.given_up += self._give_up_if_due(task_id, submitted_at, f"its last poll: {exc}")
        hold_s = _hold_s(exc)
        if hold_s:
            # Asked again every pass, the provider would go on limiting us.
            self._submitted.hold_polls(hold_s)
        log.warning("poll pass stopped after %d tasks: %s", tally.polled, exc)
        return tally.summary(stopped=str(exc))

    def _due(self) -> list[tuple[str, float]]:
        """Up to ``batch`` overdue tasks not polled within ``interval_s``: those never polled
        first, then the longest unpolled, each group the oldest submission first."""
        return self._submitted.due(self._grace_s, self._interval_s, limit=self._batch)

    def _give_up_if_due(self, task_id: str, submitted_at: float, detail: str) -> int:
        """Give ``task_id`` up (1) when ``give_up_s`` have passed since ``submitted_at``, saying
        ``detail`` (what its poll found) in the reason; else 0."""
        if self._clock() - submitted_at < self._give_up_s:
            return 0
        reason = f"no result from the provider within {int(self._give_up_s)} s of submission"
        return self._give_up(task_id, f"{reason} ({detail})")

    def _give_up(self, task_id: str, reason: str) -> int:
        reason = reason[:500]
        # No callback came: the manifest says what mjhook gave up on, as a failure (code 500).
        report = Callback(task_id, CODE_FAILURE, reason, None, (), utc_iso(self._clock()))
        # With the move, in its transaction: a worker dying after it (the task no longer
        # submitted, no later pass sees it) leaves this look, which finishes the give-up; one
        # dying before it leaves the task submitted, for a later pass.
        look = self._pending.entry(report, reason, polled=True) if self._pending is not None else None
        try:
            before = self._tasks.fail_submitted(task_id, reason, look=look)
        except TaskRecordUnusable as exc:  # not this version's to move: the pass goes on
            log.warning("task %s not given up: %s", task_id, exc)
            return 0
        self._submitted.forget_polled(task_id)
        if before not in (None, TaskState.SUBMITTED):
            return 0  # its result arrived meanwhile: no move, no look
        log.warning("task %s given up: %s", task_id, reason)
        recorded = True
        if self._record_failure is not None:
            try:
                recorded = self._record_failure(report, reason) is not False
            except Exception:
                log.exception("task %s failed without a manifest", task_id)
                recorded = False
        if self._metrics is not None:
            # Ended here, not by a message: the message's end counts none.
            count_given_up(self._metrics, self._tasks, task_id)
        if self._pending is None:
            return 1
        if recorded:
            self._forget_look(report, reason)
        else:
            # Again, due a lease's time from now: a give-up that took longer than that (object
            # storage hanging) may have met its own look, which found the lease held and ended.
            self._pending.add_if_possible(report, reason, polled=True)
        return 1

    def _forget_look(self, report: Callback, reason: str) -> None:
        """Remove the second look :meth:`_give_up` recorded with its move: nothing is left for it
        to do. One Redis keeps (it refused its removal) does that nothing later."""
        assert self._pending is not None
        try:
            self._pending.remove(report, reason, polled=True)
        except redis.exceptions.RedisError as exc:
            log.warning("task %s: its second look stays pending (%s)", report.task_id, exc)


def count_given_up(metrics: WorkerMetrics, tasks: TaskStore, task_id: str) -> None:
    """Count a task the polling fallback gave up ``failed`` in ``mjhook_tasks_total``, unless
    its bucket brought back an outcome the task kept (its manifest's ``partial``, when a
    duplicate's last attempt had handed it back): the queue's give-up counts none then either."""
    try:
        record = tasks.get(task_id)
    except TaskRecordUnusable:
        record = None
    if record is None or record.state is TaskState.FAILED:
        metrics.tasks.labels(TaskState.FAILED.value).inc()


def _hold_s(exc: ProviderError) -> float:
    """How long to hold every poll after ``exc``, seconds: its ``Retry-After``, at most
    :data:`MAX_POLL_HOLD_S`; 0 (no hold) without one, or for a value not finite or not positive."""
    retry_after = exc.retry_after if isinstance(exc, ProviderUnavailable) else None
    if retry_after is None or not math.isfinite(retry_after) or retry_after <= 0:
        return 0.0
    return min(retry_after, MAX_POLL_HOLD_S)


class PollKeeper(Middleware):
    """In each worker process, checks every ``interval_s`` (first at boot) that a poll is
    scheduled, and kicks one when none is. ``chain`` gives the process's chain, or None when
    polling is off (no provider API key)."""

    def __init__(self, chain: Callable[[], PollChain | None], *, interval_s: float) -> None:
        self._chain = chain
        self._thread = PeriodicThread(
            self._check,
            interval_s=interval_s,
            name="poll-keeper",
            what="checking the poll schedule",
            first_at_once=True,
        )

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._thread.stop()

    def _check(self) -> bool:
        """Kick a poll when none is scheduled; False (no more checks) when polling is off."""
        chain = self._chain()
        if chain is None:
            log.info("polling of silent tasks is off: MJHOOK_PROVIDER_API_KEY is not set")
            return False
        chain.ensure_scheduled()
        return True


@dataclass(frozen=True, slots=True)
class Polling:
    """The polling fallback of one worker process: the chain and the pass it runs."""

    chain: PollChain
    poller: SilentTaskPoller

    def run(self, message_id: str) -> bool:
        """Handle poll message ``message_id``: one pass unless it is a duplicate."""
        return self.chain.run(message_id, self.poller.run_once)


def build_polling(
    settings: Settings,
    *,
    client: redis.Redis,
    tasks: TaskStore,
    provider: ProviderClient,
    broker: dramatiq.Broker,
    record_failure: Callable[[Callback, str], bool | None] | None = None,
    metrics: WorkerMetrics | None = None,
    pending: PendingGiveUps | None = None,
) -> Polling:
    """The polling fallback from settings: a pass every ``poll_interval_s``; a task it gives up
    on gets its manifest from ``record_failure`` and is counted failed in ``metrics``; one whose
    polls were started more than ``max_attempt_starts`` times without ending is given up. Each
    give-up waits in ``pending`` as a second look until it is finished (:class:`SilentTaskPoller`)."""

    def enqueue(message: dramatiq.Message[Any], delay_ms: int) -> None:
        broker.enqueue(message, delay=delay_ms or None)

    submitted = SubmittedTasks(client, tasks, ttl_s=settings.task_ttl_s)
    poller = SilentTaskPoller(
        submitted=submitted,
        tasks=tasks,
        poller=ResultPoller(provider=provider, tasks=tasks, broker=broker, limits=callback_limits(settings)),
        starts=PollStarts(client, max_starts=settings.max_attempt_starts, ttl_s=settings.task_ttl_s),
        grace_s=settings.poll_grace_s,
        interval_s=settings.poll_interval_s,
        give_up_s=settings.poll_give_up_s,
        record_failure=record_failure,
        metrics=metrics,
        pending=pending,
    )
    chain = PollChain(
        client,
        enqueue=enqueue,
        period_s=settings.poll_interval_s,
        next_slack_s=max(DEFAULT_NEXT_SLACK_S, 3.0 * settings.redelivery_s),
    )
    return Polling(chain=chain, poller=poller)
