"""Consumer threads brought back when they die.

dramatiq's ``ConsumerThread`` restarts its consumer after an error, but first hands back the
retries it holds in memory, and ends for good when that fails on anything but the broker's own
connection error: Redis refusing writes (READONLY in a failover, MISCONF, OOM) or a connection
refused while a retry fell due during a restart. The worker then runs on, counted alive by
``mjhook status``, consuming nothing more from that queue: its retries (the delay queue) never ran.

This middleware looks at the worker's consumer threads every ``interval_s`` seconds and starts a
new one for each queue whose thread died, after letting the dead one hand back what it still
holds (dramatiq's own ``close``, once more). What it held and could not hand back stays in its ack
set, where :mod:`workers.stranded`'s rescue requeues it (Redis; RabbitMQ redelivers the unacked
messages of the channel the close ends)."""

from __future__ import annotations

import logging

import dramatiq
from dramatiq.common import dq_name, q_name
from dramatiq.middleware import Middleware
from dramatiq.worker import ConsumerThread

from shared.periodic import PeriodicThread

log = logging.getLogger(__name__)


class ConsumerSupervisor(Middleware):
    """Replaces, every ``interval_s`` seconds, the consumer threads of the worker that died."""

    def __init__(self, *, interval_s: float) -> None:
        self._interval_s = interval_s
        self._thread: PeriodicThread | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._thread = PeriodicThread(
            lambda: revive_consumers(worker),
            interval_s=self._interval_s,
            name="consumer-supervisor",
            what="checking the consumer threads",
        )
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # Before the worker stops its consumers: a thread it stopped must not be brought back.
        if self._thread is not None:
            self._thread.stop()


def revive_consumers(worker: dramatiq.Worker) -> int:
    """Start a new consumer thread for each queue of ``worker`` whose thread died of an error;
    returns how many."""
    revived = 0
    for queue_name, thread in list(worker.consumers.items()):
        if died(thread):
            _replace(worker, queue_name, thread)
            revived += 1
    return revived


def died(thread: ConsumerThread) -> bool:
    """Whether ``thread`` ended without being stopped: started (``running`` set), not stopped
    (``stop`` clears it), no longer alive."""
    return thread.running and thread.ident is not None and not thread.is_alive()


def _replace(worker: dramatiq.Worker, queue_name: str, dead: ConsumerThread) -> None:
    log.error("the consumer of %s died (see the error before); starting a new one", queue_name)
    try:
        dead.close()  # what it could not hand back when it died: the broker may take it now
    except Exception as exc:
        log.warning("the dead consumer of %s could not hand back what it held: %r", queue_name, exc)
    delay = queue_name == dq_name(q_name(queue_name))
    # As dramatiq's Worker._add_consumer makes one; the entry is replaced, never removed, so that
    # the worker's own loops over its consumers never see the mapping change size.
    thread = ConsumerThread(
        broker=worker.broker,
        queue_name=queue_name,
        prefetch=worker.delay_prefetch if delay else worker.queue_prefetch,
        work_queue=worker.work_queue,
        worker_timeout=worker.worker_timeout,
    )
    worker.consumers[queue_name] = thread
    thread.start()
