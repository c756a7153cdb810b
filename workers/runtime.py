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
from dramatiq.middleware import Middleware

from shared.callback import Callback
from shared.errors import MjhookError, StorageUnavailable
from shared.redis_client import connect_redis
from shared.settings import Settings
from shared.storage import ObjectStore, create_object_store
from shared.taskstate import TaskState, TaskStore
from workers.fetch import FetchLimits, ResultFetcher, create_http_client
from workers.guard import guarded_transport_from_settings
from workers.lease import LeaseManager
from workers.pipeline import CallbackProcessor

log = logging.getLogger(__name__)

#: How long a worker waits at boot for object storage to let it make the bucket, in seconds.
DEFAULT_BUCKET_WAIT_S = 120.0


@dataclass(frozen=True, slots=True)
class WorkerParts:
    processor: CallbackProcessor
    tasks: TaskStore
    store: ObjectStore


def build_parts(settings: Settings) -> WorkerParts:
    """The processor and what it is made of, for one worker process."""
    client = connect_redis(settings.redis_url)
    tasks = TaskStore(client, ttl_s=settings.task_ttl_s)
    store = create_object_store(settings, pool_size=settings.download_concurrency * 2)
    http = create_http_client(
        connect_timeout_s=settings.connect_timeout_s,
        read_timeout_s=settings.read_timeout_s,
        max_redirects=settings.max_redirects,
        max_connections=settings.download_concurrency * 2,
        transport=guarded_transport_from_settings(settings),
    )
    fetcher = ResultFetcher(
        http,
        FetchLimits(
            max_image_bytes=settings.max_image_bytes,
            max_video_bytes=settings.max_video_bytes,
            spool_memory_bytes=settings.spool_memory_bytes,
            max_image_pixels=settings.max_image_pixels,
            max_image_side=settings.max_image_side,
        ),
    )
    pool = ThreadPoolExecutor(max_workers=settings.download_concurrency, thread_name_prefix="fetch")
    processor = CallbackProcessor(
        tasks=tasks,
        leases=LeaseManager(client, ttl_s=settings.lease_ttl_s),
        store=store,
        fetcher=fetcher,
        pool=pool,
    )
    return WorkerParts(processor=processor, tasks=tasks, store=store)


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

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._parts: WorkerParts | None = None

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        wait_for_bucket(self.parts().store)

    def parts(self) -> WorkerParts:
        with self._lock:
            if self._parts is None:
                self._parts = build_parts(self._settings)
            return self._parts

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """When dramatiq gives up (retries exhausted or a permanent error), say so in the task
        state, with the reason, instead of leaving it ``processing`` forever."""
        if exception is None or not message.failed or self._parts is None:
            return
        try:
            callback = Callback.from_message(message.args[0])
        except (MjhookError, IndexError, TypeError, AttributeError):
            return
        reason = f"gave up: {type(exception).__name__}: {exception}"[:500]
        try:
            self._parts.tasks.move(callback.task_id, TaskState.FAILED, reason=reason)
        except Exception:
            log.exception("could not record the failure of %s", callback.task_id)
