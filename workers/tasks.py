"""The worker entry point: ``dramatiq workers.tasks``. Importing it reads the environment, sets
the broker and declares every actor."""

from __future__ import annotations

import logging
import os
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage, Retries, default_middleware

from shared.callback import Callback
from shared.errors import PermanentError
from shared.logs import configure_logging
from shared.queue import CALLBACK_QUEUE, POLL_QUEUE, PROCESS_CALLBACK, create_broker
from shared.settings import Settings
from workers.consumers import ConsumerSupervisor
from workers.heartbeat import BrokerHeartbeat
from workers.log_context import TaskLogContext
from workers.metrics import WorkerMetricsMiddleware, serve_worker_metrics, start_worker_metrics
from workers.polling import POLL_SILENT_TASKS, PollKeeper
from workers.retries import DurableRetries
from workers.runtime import WorkerRuntime
from workers.stranded import MessagesInHand
from workers.time_limit import end_time_limits_first

settings = Settings.from_env_or_exit(os.environ)
configure_logging(settings.log_level, settings.log_format)
# Before any metric is made: prometheus_client picks where values live when first used.
metrics, metrics_dir = start_worker_metrics(os.environ)

# dramatiq's defaults, but a retry that outlasts a Redis restart (workers/retries.py).
broker = create_broker(
    settings, middleware=[DurableRetries() if m is Retries else m() for m in default_middleware]
)
# First, so that every other hook of a message logs with its taskId.
broker.add_middleware(TaskLogContext(), before=type(broker.middleware[0]))
# Before it, so that a worker thread's message is known by id from its first hook on
# (the rescue of stranded messages must never requeue it: workers/stranded.py).
in_hand = MessagesInHand()
broker.add_middleware(in_hand, before=TaskLogContext)
runtime = WorkerRuntime(settings, broker=broker, metrics=metrics)
# After-hooks run in reverse order: placed before Retries, the runtime sees a message only after
# Retries has decided whether it failed for good.
broker.add_middleware(runtime, before=Retries)
serve_metrics = partial(serve_worker_metrics, settings, metrics_dir) if settings.worker_metrics_port else None
broker.add_middleware(
    WorkerMetricsMiddleware(metrics, directory=metrics_dir, serve=serve_metrics),
    before=Retries,
)
broker.add_middleware(CurrentMessage())
broker.add_middleware(BrokerHeartbeat(interval_s=settings.redelivery_s / 4, in_hand=in_hand))
# A consumer thread that died (Redis refusing writes as it handed back its retries) comes back.
broker.add_middleware(ConsumerSupervisor(interval_s=settings.redelivery_s / 4))
broker.add_middleware(PollKeeper(runtime.poll_chain, interval_s=settings.poll_interval_s))
# Last, so that its after-hook runs first: no waiting after-hook (a retry's enqueue, a give-up,
# through a broker outage) is interrupted by the message's time limit (workers/time_limit.py).
end_time_limits_first(broker)
dramatiq.set_broker(broker)


@dramatiq.actor(
    actor_name=PROCESS_CALLBACK,
    queue_name=CALLBACK_QUEUE,
    max_retries=settings.max_retries,
    min_backoff=settings.min_backoff_ms,
    max_backoff=settings.max_backoff_ms,
    time_limit=settings.task_time_limit_s * 1000,
    throws=(PermanentError,),
)
def process_callback(message: dict[str, Any]) -> None:
    """Process one queued callback (see :class:`workers.pipeline.CallbackProcessor`)."""
    current = CurrentMessage.get_current_message()
    retries = current.options.get("retries", 0) if current is not None else 0
    parts = runtime.parts()
    # Counted before anything that could take the process down (workers/attempt_starts.py).
    counted: AbstractContextManager[object] = (
        parts.starts.counted(current.message_id, enqueued_ms=current.message_timestamp, retries=retries)
        if current is not None
        else nullcontext()
    )
    with counted:
        parts.processor.process(Callback.from_message(message), final_attempt=retries >= settings.max_retries)


@dramatiq.actor(
    actor_name=POLL_SILENT_TASKS,
    queue_name=POLL_QUEUE,
    max_retries=settings.max_retries,
    min_backoff=settings.min_backoff_ms,
    max_backoff=settings.max_backoff_ms,
    time_limit=settings.task_time_limit_s * 1000,
)
def poll_silent_tasks() -> None:
    """One pass of the polling fallback (see :mod:`workers.polling`); it schedules the next one."""
    polling = runtime.parts().polling
    current = CurrentMessage.get_current_message()
    if polling is None or current is None:
        return
    polling.run(current.message_id)


# dramatiq's actors log each call's arguments at DEBUG ("Received args=..."): a callback whole, the
# token its promptJson echoes and the signatures of its result URLs. Their lines start at INFO.
for _actor in (process_callback, poll_silent_tasks):
    _actor.logger.setLevel(max(logging.INFO, logging.getLogger().getEffectiveLevel()))
