"""A steady broker heartbeat and timely redelivery for the Redis broker.

dramatiq's Redis broker beats only when a consumer talks to Redis: a worker process whose threads
are all busy with long downloads stops beating and, after ``heartbeat_timeout``, looks dead, so
its in-flight messages are handed to others (dramatiq issue #692). And a dead worker's messages
are requeued only by "maintenance", which runs on a random 0.1% of broker commands. This
middleware beats from a thread of its own every ``interval_s`` and forces maintenance with each
beat, so a live worker never looks dead and a killed one's messages return within
``heartbeat_timeout + interval_s``. Each beat also rescues messages this worker fetched
and then lost track of (see :mod:`workers.stranded`)."""

from __future__ import annotations

import logging

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware

from shared.periodic import PeriodicThread
from shared.redis_broker import RedisClockBroker, broker_millis
from shared.worker_registry import forget_worker, record_worker_beat
from workers.stranded import MessagesInHand, StrandedMessageRescuer

log = logging.getLogger(__name__)

#: The broker command each beat carries: it only counts a queue, changing nothing.
BEAT_COMMAND = "qsize"


class BrokerHeartbeat(Middleware):
    """Beats every ``interval_s`` seconds; ``in_hand`` (the broker's first middleware) tells the
    rescue of stranded messages which messages worker threads hold."""

    def __init__(self, *, interval_s: float, in_hand: MessagesInHand) -> None:
        self._interval_s = interval_s
        self._in_hand = in_hand
        self._thread: PeriodicThread | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if not isinstance(broker, RedisBroker):
            return  # RabbitMQ redelivers a dead consumer's messages by itself.
        try:
            # Counted as a live worker (`mjhook status`) from boot, not only from the first beat.
            record_worker_beat(broker.client, broker.broker_id, now_ms=broker_millis(broker))
        except (redis.RedisError, OSError) as exc:
            log.warning("could not register this worker: %s", type(exc).__name__)
        rescuer = StrandedMessageRescuer(broker, worker.consumers, self._in_hand)
        beats = Beats(broker)

        def beat_and_rescue() -> None:
            try:
                beats()
            finally:  # a beat Redis refused stops no rescue
                rescuer.check()

        # Whatever a beat meets, the next one comes: a heartbeat thread ended by an error nobody
        # foresaw would make this live worker look dead, its messages handed to others.
        self._thread = PeriodicThread(
            beat_and_rescue, interval_s=self._interval_s, name="heartbeat", what="broker heartbeat"
        )
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self._thread is not None:
            self._thread.stop()
        if isinstance(broker, RedisBroker):
            try:
                # A worker stopped cleanly stops counting at once, not after the heartbeat timeout.
                forget_worker(broker.client, broker.broker_id)
            except (redis.RedisError, OSError) as exc:
                log.warning("could not unregister this worker: %s", type(exc).__name__)


class Beats:
    """This worker's beats, each with maintenance but the first after one that failed or that
    could not read Redis's clock steadily (:meth:`RedisClockBroker.sync_clock`), and that one
    too: after an outage or a stall (Redis away, refusing writes, not answering for a while) every
    live worker's heartbeat is stale until its own next beat, and after a clock stepped the other
    workers stamp on their old offsets until then; maintenance then takes them for dead and
    requeues the messages they hold (processed twice, their retries and dead letters doubled).
    One interval later every live worker beat."""

    def __init__(self, broker: RedisBroker) -> None:
        self._broker = broker
        self._after_failure = False

    def __call__(self) -> None:
        try:
            steady = beat(self._broker, maintenance=not self._after_failure)
        except BaseException:
            self._after_failure = True
            raise
        self._after_failure = not steady


def beat(broker: RedisBroker, *, maintenance: bool = True) -> bool:
    """One heartbeat, for every queue this broker consumes (delay queues too), with maintenance
    (dead workers' messages requeued) unless told otherwise, or unless Redis's clock could not be
    read steadily (then False: see :meth:`RedisClockBroker.sync_clock`)."""
    dispatch = broker.scripts["dispatch"]
    steady = True
    if isinstance(broker, RedisClockBroker):
        # Each beat measures Redis's clock again: either clock may have been set meanwhile.
        steady = broker.sync_clock().steady
    now_ms = broker_millis(broker)
    for queue_name in sorted(broker.get_declared_queues() | broker.delay_queues):
        dispatch(
            keys=[broker.namespace],
            args=[
                BEAT_COMMAND,
                now_ms,
                queue_name,
                broker.broker_id,
                broker.heartbeat_timeout,
                broker.dead_message_ttl,
                int(maintenance and steady),  # now, not by chance (dramatiq's 0.1 % of commands)
                broker._max_unpack_size(),  # type: ignore[no-untyped-call]
            ],
        )
    record_worker_beat(broker.client, broker.broker_id, now_ms=now_ms)
    return steady
