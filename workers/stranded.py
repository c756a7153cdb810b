"""Rescue delayed messages a live worker fetched and then forgot.

dramatiq's Redis consumer holds the delayed messages it fetched (retries waiting out their
backoff) in an in-memory queue, while Redis keeps their ids in the worker's ack set. When the
consumer hits a connection error (a Redis restart) it throws that in-memory queue away; the ids
stay in the ack set of a worker that is still alive and beating, so maintenance never hands them
back: the retry is stranded for as long as the process lives. This check finds ids that sit in
this worker's delay-queue ack sets but in none of its consumers' in-memory queues, twice in a
row (a fetched message reaches the in-memory queue within moments), and requeues them."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from dramatiq.brokers.redis import RedisBroker

from shared import keys
from shared.redis_client import as_text

log = logging.getLogger(__name__)


class DelayConsumer(Protocol):
    """What is read of dramatiq's consumer thread: its in-memory delay queue."""

    delay_queue: Any


class StrandedDelayRescuer:
    def __init__(self, broker: RedisBroker, consumers: Mapping[str, DelayConsumer]) -> None:
        self._broker = broker
        self._consumers = consumers
        self._suspects: dict[str, set[str]] = {}

    def check(self) -> int:
        """One pass; returns how many messages were requeued."""
        rescued = 0
        for queue_name, consumer in list(self._consumers.items()):
            if not queue_name.endswith(".DQ"):
                continue
            ack_key = keys.broker_acks(self._broker.namespace, self._broker.broker_id, queue_name)
            acked = {as_text(member) for member in self._broker.client.smembers(ack_key)}
            held = {
                item.message.options.get("redis_message_id")
                for item in list(consumer.delay_queue.queue)  # a snapshot of the heap's list
            }
            missing = acked - held
            stranded = missing & self._suspects.get(queue_name, set())
            self._suspects[queue_name] = missing - stranded
            if stranded:
                log.warning("requeueing %d delayed message(s) stranded on %s", len(stranded), queue_name)
                self._broker.do_requeue(queue_name, *sorted(stranded))
                rescued += len(stranded)
        return rescued
