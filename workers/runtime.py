"""Wiring of one worker process: builds the processor from settings, makes the bucket at boot,
and records a task as failed when the queue gives up on its message."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware

from shared.callback import Callback, callback_limits
from shared.dead_letters import record_dead_reason
from shared.errors import MjhookError, StorageUnavailable, TaskRecordUnusable
from shared.metrics import WorkerMetrics, create_worker_metrics
from shared.provider import create_provider_client
from shared.redis_client import connect_redis
from shared.redis_durability import clients_to_check, log_durability_problems
from shared.settings import Settings
from shared.storage import ObjectStore, create_object_store, pool_size_for
from shared.submitted import SubmittedTasks
from shared.taskstate import UNSETTLED_STATES, TaskState, TaskStore
from workers.attempt_starts import AttemptStarts
from workers.fetch import FetchLimits, ResultFetcher, create_http_client
from workers.guard import guarded_transport_from_settings
from workers.lease import LeaseManager
from workers.pipeline import CallbackProcessor
from workers.polling import PollChain, Polling, build_polling
from workers.retries import patiently, retry_enqueue_error
from workers.second_look import PendingGiveUps, SecondLook, SecondLookSweeper
from workers.verify import ResultVerifier

log = logging.getLogger(__name__)

#: How long a worker waits at boot for object storage to let it make the bucket, in seconds.
DEFAULT_BUCKET_WAIT_S = 120.0
#: How often a worker takes the due second looks: half the lease TTL, within these bounds (s).
SECOND_LOOK_MIN_INTERVAL_S = 0.5
SECOND_LOOK_MAX_INTERVAL_S = 5.0


@dataclass(frozen=True, slots=True)
class WorkerParts:
    processor: CallbackProcessor
    tasks: TaskStore
    store: ObjectStore
    #: Give-ups waiting for a second look (any worker's).
    pending: PendingGiveUps
    #: How often each attempt at a message was started (a message killing its worker is given up).
    starts: AttemptStarts
    #: What the processor, the give-ups and the polling fallback count in.
    metrics: WorkerMetrics
    #: The polling fallback; None without a provider API key or a broker to enqueue on.
    polling: Polling | None = None


#: Of the task time limit, the share an attempt's downloads must end within (queued behind other
#: tasks' downloads or not): the rest is for the uploads behind them and the manifest, so that the
#: attempt ends (and is retried) near the limit. dramatiq's own limit cannot interrupt a worker
#: thread waiting on its downloads, so without this an attempt ran about twice the limit and more.
DOWNLOADS_SHARE_OF_TIME_LIMIT = 0.8


def build_parts(
    settings: Settings, *, broker: dramatiq.Broker | None = None, metrics: WorkerMetrics | None = None
) -> WorkerParts:
    """The processor and what it is made of, for one worker process. With a provider API key,
    expired result links are refreshed, and with ``broker`` too, silent tasks are polled. The
    processor, the polling fallback and the give-ups count in ``metrics`` (default: new ones)."""
    metrics = create_worker_metrics() if metrics is None else metrics
    client = connect_redis(settings.redis_url)
    provider = create_provider_client(settings) if settings.provider_api_key else None
    tasks = TaskStore(client, ttl_s=settings.task_ttl_s)
    store = create_object_store(settings, pool_size=pool_size_for(settings.download_concurrency))
    http = create_http_client(
        connect_timeout_s=settings.connect_timeout_s,
        read_timeout_s=settings.read_timeout_s,
        max_redirects=settings.max_redirects,
        max_connections=settings.download_concurrency * 2,
        transport=guarded_transport_from_settings(settings),
    )
    fetcher = ResultFetcher(
        http, fetch_limits(settings), refresh_url=provider.download_url if provider is not None else None
    )
    pool = ThreadPoolExecutor(max_workers=settings.download_concurrency, thread_name_prefix="fetch")
    processor = CallbackProcessor(
        tasks=tasks,
        leases=LeaseManager(client, ttl_s=settings.lease_ttl_s),
        store=store,
        fetcher=fetcher,
        pool=pool,
        metrics=metrics,
        verifier=(
            ResultVerifier(provider.record_info, limits=callback_limits(settings))
            if provider and settings.verify_results
            else None
        ),
        # Polling runs where there is a broker to queue what it finds.
        poll_later=SubmittedTasks(client, tasks, ttl_s=settings.task_ttl_s) if provider and broker else None,
        max_task_bytes=settings.max_task_bytes,
        max_json_depth=settings.max_json_depth,
        downloads_within_s=settings.task_time_limit_s * DOWNLOADS_SHARE_OF_TIME_LIMIT,
    )
    # Due once any lease a task may be held by has lapsed.
    pending = PendingGiveUps(client, after_s=settings.lease_ttl_s + 1)
    polling = None
    if provider is not None and broker is not None:
        # One attempt per poll: a pass comes again every interval anyway, and a poll waiting out
        # retries (4 x a 60 s Retry-After) would outlive the pass's lock: two passes at once.
        polled = create_provider_client(settings, attempts=1)
        polling = build_polling(
            settings,
            client=client,
            tasks=tasks,
            provider=polled,
            broker=broker,
            record_failure=processor.record_failure,
            metrics=metrics,
            pending=pending,
        )
    return WorkerParts(
        processor=processor,
        tasks=tasks,
        store=store,
        pending=pending,
        starts=AttemptStarts(client, max_starts=settings.max_attempt_starts, ttl_s=settings.task_ttl_s),
        metrics=metrics,
        polling=polling,
    )


def fetch_limits(settings: Settings) -> FetchLimits:
    """What one download may take, from settings: a download runs no longer than the task's
    time limit, which dramatiq cannot enforce on a download under way."""
    return FetchLimits(
        max_image_bytes=settings.max_image_bytes,
        max_video_bytes=settings.max_video_bytes,
        spool_memory_bytes=settings.spool_memory_bytes,
        max_image_pixels=settings.max_image_pixels,
        max_image_side=settings.max_image_side,
        min_rate=settings.min_download_rate,
        min_rate_after_s=settings.min_download_rate_after_s,
        max_seconds=settings.task_time_limit_s,
    )


def wait_for_bucket(
    store: ObjectStore,
    *,
    timeout_s: float = DEFAULT_BUCKET_WAIT_S,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Make the bucket, retrying while object storage is still starting."""
    deadline = clock() + timeout_s
    delay = 0.25
    while True:
        try:
            store.ensure_bucket()
            return
        except StorageUnavailable as exc:
            if clock() >= deadline:
                raise
            log.warning("object storage not ready (%s); retrying in %.1fs", exc, delay)
            sleep(delay)
            delay = min(delay * 2, 5.0)


class WorkerRuntime(Middleware):
    """Holds the process's processor, built at worker boot (after the fork, not at import), when
    the bucket is made too, before any message is taken."""

    def __init__(
        self,
        settings: Settings,
        *,
        broker: dramatiq.Broker | None = None,
        metrics: WorkerMetrics | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``broker``: where the polling fallback enqueues (no polling without it); ``metrics``:
        where the processor, the give-ups and the polling fallback count; ``sleep`` waits between
        two tries of a give-up."""
        self._settings = settings
        self._broker = broker
        self._metrics = metrics
        self._sleep = sleep
        self._lock = threading.Lock()
        self._parts: WorkerParts | None = None
        self._sweeper: SecondLookSweeper | None = None

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.warn_of_redis_durability(broker)
        wait_for_bucket(self.parts().store)

    def warn_of_redis_durability(self, broker: dramatiq.Broker) -> list[str]:
        """Log at WARNING, once in this process, what in its Redis (the task state's, and the
        queue's when it is another) can lose acknowledged callbacks; return it."""
        queue_client = broker.client if isinstance(broker, RedisBroker) else None
        clients = clients_to_check(self._settings, self.parts().tasks.client, queue_client)
        return log_durability_problems(clients, log)

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.start_second_looks()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self._sweeper is not None:
            self._sweeper.stop()

    def start_second_looks(self) -> SecondLookSweeper:
        """Take the due second looks at given-up tasks (any worker's) from now on, in a thread."""
        lease_ttl_s = self._settings.lease_ttl_s
        self._sweeper = SecondLookSweeper(
            self.parts().pending,
            self._look_again,
            interval_s=max(SECOND_LOOK_MIN_INTERVAL_S, min(SECOND_LOOK_MAX_INTERVAL_S, lease_ttl_s / 2)),
            hold_s=lease_ttl_s + 1,
        )
        self._sweeper.start()
        return self._sweeper

    def parts(self) -> WorkerParts:
        with self._lock:
            if self._parts is None:
                self._parts = build_parts(self._settings, broker=self._broker, metrics=self._metrics)
            return self._parts

    def poll_chain(self) -> PollChain | None:
        """The process's poll chain, or None when polling is off."""
        polling = self.parts().polling
        return polling.chain if polling is not None else None

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """When dramatiq gives up (retries exhausted or a permanent error), say so in the task
        state, with the reason, instead of leaving it ``processing`` forever; a task that has an
        outcome keeps it, and a task some worker holds (its lease: that worker is processing
        another message of it) keeps its state, which the holder settles (:meth:`TaskStore.give_up`,
        which checks the lease in the same script call as the move). Both the reason kept beside
        the dead letter and the give-up wait for Redis, before the message is dead-lettered."""
        if exception is None or not message.failed:
            return
        failure = f"{type(exception).__name__}: {exception}"
        enqueue_error = retry_enqueue_error(message)
        if enqueue_error is not None:
            # Dead-lettered because its retry could not be queued: a replay meets that error first.
            failure = f"the retry could not be queued: {enqueue_error} (after {failure})"
        reason = f"gave up: {failure}"[:500]
        try:
            callback = Callback.from_message(message.args[0]) if self._parts is not None else None
        except (MjhookError, IndexError, TypeError, AttributeError):
            callback = None
        # Before the message is dead-lettered (after this hook), however long Redis is away: a
        # worker stopping meanwhile leaves the message unacknowledged, to be redelivered, where a
        # give-up kept in this process's memory was lost with it (the task processing for good).
        self._patiently(
            "keep why the message was dead-lettered",
            lambda: self._record_dead_reason(broker, message, reason),
        )
        if callback is not None:
            self._patiently(
                f"record the failure of {callback.task_id}", lambda: self._give_up(callback, reason)
            )

    def _patiently(self, what: str, action: Callable[[], object]) -> None:
        """Run ``action`` until Redis takes it (:func:`workers.retries.patiently`); an error Redis
        will never get over (a key of the wrong type) is logged after a few attempts instead."""
        try:
            patiently(action, what=what, sleep=self._sleep)
        except redis.RedisError as exc:  # an error answer, a reply that cannot be read
            log.error("could not %s: %s", what, exc)

    def _give_up(self, callback: Callback, reason: str, *, looks: int = 1) -> bool:
        """Record the give-up; Redis errors raise. ``looks``: how many more times to look at a task
        some worker's lease holds. A task left to the worker holding its lease is looked at once
        more when any such lease must have lapsed (one whose holder could not release it, Redis
        away for a moment, is nobody's, and nobody would settle the task): that second look waits
        in Redis (workers/second_look.py), for any worker to take. A task left failed gets the
        bucket to agree (:meth:`CallbackProcessor.record_failure`: a failed manifest), and one
        this give-up moved there is counted ``failed`` in ``mjhook_tasks_total`` (once: a task
        that was failed already was counted when it failed; one left in another state ends later,
        and is counted then). A bucket object storage could not put right (down, as it often is
        when the queue gives up) is put right by a later look, however many it takes: False then
        (the look stays pending). The look is recorded with the move, in one transaction, and
        removed when nothing is left for it to do: a worker dying after the move leaves it, for
        any worker to finish this give-up."""
        assert self._parts is not None
        pending = self._parts.pending
        task_id = callback.task_id
        # The look goes in with the move, in one transaction: a worker dying before it leaves no
        # look (the message, never acknowledged, is redelivered and decides), one dying after
        # leaves the look, which finishes this give-up.
        look = pending.entry(callback, reason) if looks > 0 else None
        try:
            state, failed_now = self._parts.tasks.give_up(task_id, reason, look=look)
        except (redis.RedisError, OSError):
            raise
        except Exception:
            log.exception("could not record the failure of %s", task_id)  # an unusable record
            if looks > 0:
                pending.remove(callback, reason)
            return True
        if failed_now:
            self._parts.metrics.tasks.labels(TaskState.FAILED.value).inc()
        if state is not TaskState.FAILED:
            log.info("task %s stays %s; its message was %s", task_id, state.value, reason)
        bucket_agrees = self._bucket_agrees(callback, state, reason)
        # A task submitted again is the polling fallback's: no worker's lease to wait out.
        left_to_a_holder = state in UNSETTLED_STATES and state is not TaskState.SUBMITTED
        if looks > 0 and bucket_agrees and not left_to_a_holder:
            pending.remove(callback, reason)
        elif looks > 0:
            # Again, due a lease's time from now: a give-up that took longer than that (object
            # storage hanging) may have met its own look, which found the lease held and ended.
            pending.add(callback, reason)
        return bucket_agrees

    def _bucket_agrees(self, callback: Callback, state: TaskState, reason: str) -> bool:
        """Make the bucket agree with the ``state`` a give-up left the task in; False when object
        storage could not be reached for it."""
        assert self._parts is not None
        processor = self._parts.processor
        try:
            if state is TaskState.FAILED:
                return processor.record_failure(callback, reason)
            if state in (TaskState.STORED, TaskState.PARTIAL):
                # Back to an earlier outcome, or that message was a duplicate: either way the
                # bucket must hold only what the outcome's manifest describes.
                return processor.agree_with_outcome(callback)
        except Exception:
            log.exception("task %s: its bucket could not be made to agree with it", callback.task_id)
        return True

    def _look_again(self, look: SecondLook) -> bool:
        try:
            if look.polled:
                return self._give_up_polled(look.callback, look.reason)
            return self._give_up(look.callback, look.reason, looks=0)
        except (redis.RedisError, OSError) as exc:
            log.warning("could not look again at %s (%s); it stays pending", look.callback.task_id, exc)
            return False

    def _give_up_polled(self, callback: Callback, reason: str) -> bool:
        """A second look at a give-up of the polling fallback (:class:`SilentTaskPoller`), recorded
        with its move to ``failed`` (:meth:`TaskStore.fail_submitted`): the failed manifest, in case
        the worker that moved it died before writing it (False when object storage could not take
        it: looked at again). A task that moved on meanwhile (a result came, or another callback
        handed it back to the polling fallback, whose own give-up ends it) is left as it is.
        Redis errors raise."""
        assert self._parts is not None
        task_id = callback.task_id
        try:
            record = self._parts.tasks.get(task_id)
        except TaskRecordUnusable as exc:  # not this version's to finish
            log.warning("task %s not given up: %s", task_id, exc)
            return True
        if record is None or record.state is not TaskState.FAILED:
            return True
        return self._bucket_agrees(callback, TaskState.FAILED, reason)

    def _record_dead_reason(
        self, broker: dramatiq.Broker, message: dramatiq.MessageProxy, reason: str
    ) -> None:
        """Keep the reason next to the dead letter the broker is about to make (``mjhook dlq list``):
        dramatiq stores the message without the error that killed it. Redis errors raise."""
        redis_message_id = message.options.get("redis_message_id")
        if not isinstance(broker, RedisBroker) or not redis_message_id:
            return
        record_dead_reason(broker.client, redis_message_id, reason, ttl_s=self._settings.dead_message_ttl_s)
