"""Rescue messages a live worker fetched and then lost track of.

dramatiq's Redis fetch (``dispatch.lua``) pops ids off a queue into the worker's ack set
(``__acks__.<worker>.<queue>``) and returns their bodies. Two things lose them on the way:

- the connection is cut after Redis ran the fetch but before the reply arrived (a network blip,
  ``CLIENT KILL``, a proxy closing idle connections): the ids are in the ack set and the bodies
  never reach the process;
- the consumer hits an error and is rebuilt: its message cache, and for a delay queue its
  in-memory queue of retries waiting out their backoff, are thrown away.

The worker is alive and beating (:mod:`workers.heartbeat`), so maintenance never hands those ids
back: they are stranded for as long as the process lives. Each check finds the ids in this
worker's ack sets that the process does not hold, and requeues those confirmed stranded.

Where a fetched message lives in the process, in the order it travels: the consumer's message
cache (raw bodies); the consumer's ``queued_message_ids`` (dramatiq message ids, from the moment
a body is decoded until its ack or nack); the consumer thread's delay queue or the shared work
queue; a worker thread, from ``work_queue.get`` until ``task_done`` after its ack. Each check reads
the ack set first, then those places in that order, so a message moving on during the check is
seen further down.

Why requeueing a confirmed id cannot run a message twice. An id missing from all of them is in
one of three states: (1) in a fetch reply still on the wire; (2) in a hand-off of a few bytecodes
(a body popped from the cache and not yet decoded); (3) in a worker thread, or lost. So an id is
requeued only when:

- it was missing at the check before (the *suspect* check) and at that check no fetch could
  still be carrying it: between the check that first missed it and the suspect check, the
  consumer completed a fetch (it assigns a new list to its message cache) or was rebuilt. A
  fetch is done in order, so the reply that carried the id had landed in the cache, or been
  lost, by then - which rules out (1) for good, however slow the wire;
- it is missing again now: a hand-off (2) happens once and takes microseconds, so it cannot
  cover two checks;
- for a main queue, no worker thread holds it, which rules out (3): :class:`MessagesInHand`
  (the first middleware) records each worker thread's message from its first hook until its ack
  or nack, and the work queue's count of messages taken by worker threads and not yet done,
  read under its lock with that record, says whether every message in a worker is known by id
  (a worker thread's message is no longer in ``queued_message_ids`` once its consumer was
  rebuilt, so only these see it). While some worker thread holds a message not recorded yet (the
  instant between taking it and the first hook), the rescue waits for the next check.

A confirmed id cannot enter the process later: it is in no queue list, so no fetch returns it.
The requeue (dramatiq's ``requeue`` command, one Lua call) moves an id only while it is still in
the ack set, so an ack that lands meanwhile wins. Unknown consumer internals (another dramatiq
version) switch the rescue off for that queue rather than guess."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from queue import PriorityQueue
from typing import Any, Protocol

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import q_name
from dramatiq.errors import DecodeError
from dramatiq.message import Message
from dramatiq.middleware import Middleware

from shared import keys
from shared.redis_client import as_text

log = logging.getLogger(__name__)


class ConsumerThread(Protocol):
    """What is read of dramatiq's consumer thread: its consumer (rebuilt after an error), its
    in-memory delay queue and the work queue it shares with the worker threads."""

    consumer: Any
    delay_queue: PriorityQueue[Any]
    work_queue: PriorityQueue[Any]

    def is_alive(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class _Held:
    """What the process held of one queue's messages at one check."""

    #: The consumer and its message cache list: either changes once a fetch has completed.
    fetch_mark: tuple[object, object]
    redis_ids: frozenset[str]
    message_ids: frozenset[str]
    #: Messages taken off the work queue by worker threads and not yet done (acks included).
    in_workers: int
    #: The redis ids of the messages worker threads hold, as far as :class:`MessagesInHand` knows.
    in_hand: frozenset[str]


class MessagesInHand(Middleware):
    """Which message each worker thread holds, by redis id: from its ``before_process_message``
    (placed first among the middleware, nothing runs before it) until its ack or nack, both done
    in that worker thread. A thread holds one message at a time, so an entry a failed ack left
    behind is replaced by the thread's next message."""

    def __init__(self) -> None:
        self._by_thread: dict[int, str] = {}

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self._by_thread[threading.get_ident()] = _redis_id(message)

    def after_ack(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self._by_thread.pop(threading.get_ident(), None)

    after_nack = after_ack

    def ids(self) -> frozenset[str]:
        return frozenset(self._by_thread.values())  # one copy, under the GIL


class StrandedMessageRescuer:
    """Checks ``consumers`` (a dramatiq worker's consumer threads by queue) of ``broker``;
    ``in_hand`` must be among the broker's middleware, first."""

    def __init__(
        self, broker: RedisBroker, consumers: Mapping[str, ConsumerThread], in_hand: MessagesInHand
    ) -> None:
        self._broker = broker
        self._consumers = consumers
        self._in_hand = in_hand
        self._marks: dict[str, tuple[object, object]] = {}
        #: Per queue: ids missing at the last check, maybe still in a fetch reply.
        self._missing: dict[str, set[str]] = {}
        #: Per queue: ids missing at the last check with no fetch left that could carry them.
        self._suspects: dict[str, set[str]] = {}

    def check(self) -> int:
        """One pass over every queue this worker consumes; returns how many ids were requeued."""
        rescued = 0
        for queue_name, thread in list(self._consumers.items()):
            rescued += self._check_queue(queue_name, thread)
        return rescued

    def _check_queue(self, queue_name: str, thread: ConsumerThread) -> int:
        ack_key = keys.broker_acks(self._broker.namespace, self._broker.broker_id, queue_name)
        acked = {as_text(member) for member in self._broker.client.smembers(ack_key)}
        alive = thread.is_alive()
        # After the ack set: see the module docstring.
        held = held_messages(thread, queue_name, in_hand=self._in_hand, alive=alive)
        if held is None:
            return 0
        missing = self._not_held(queue_name, acked - held.redis_ids, held.message_ids)
        # A dead consumer thread fetches nothing more: no reply of it can still be on the way.
        settled = not alive or not _same_mark(held.fetch_mark, self._marks.get(queue_name))
        self._marks[queue_name] = held.fetch_mark
        stranded = missing & self._suspects.get(queue_name, set())
        promoted = (missing & self._missing.get(queue_name, set())) - stranded if settled else set()
        if stranded and queue_name == q_name(queue_name):
            stranded -= held.in_hand
            if held.in_workers > len(held.in_hand):
                stranded = set()  # a worker thread's message not recorded yet may be among them
        self._suspects[queue_name] = (missing & self._suspects.get(queue_name, set())) - stranded | promoted
        self._missing[queue_name] = missing - stranded - self._suspects[queue_name]
        if not stranded:
            return 0
        log.warning("requeueing %d message(s) stranded on %s", len(stranded), queue_name)
        self._broker.do_requeue(queue_name, *sorted(stranded))
        return len(stranded)

    def _not_held(self, queue_name: str, candidates: set[str], held_message_ids: frozenset[str]) -> set[str]:
        """``candidates`` less those whose body's dramatiq message id the consumer holds."""
        if not candidates or not held_message_ids:
            return candidates
        ordered = sorted(candidates)
        bodies = self._broker.client.hmget(keys.broker_messages(self._broker.namespace, queue_name), ordered)
        return {
            redis_id
            for redis_id, body in zip(ordered, bodies, strict=True)
            if body is None or _message_id(body) not in held_message_ids
        }


def held_messages(
    thread: ConsumerThread, queue_name: str, *, in_hand: MessagesInHand, alive: bool = True
) -> _Held | None:
    """What the process holds of ``queue_name``'s messages, read in the order they travel
    (worker threads' messages last, by ``in_hand``);
    None when the consumer is not built yet or is not dramatiq's Redis consumer as known here.
    A consumer thread that died (an error while it handled an error, e.g. requeueing its delayed
    messages while Redis was down) holds nothing any more: its cache and delay queue are never
    handed on; only what it had put on the work queue still runs."""
    consumer = thread.consumer
    cache = getattr(consumer, "message_cache", None)
    queued = getattr(consumer, "queued_message_ids", None)
    if not isinstance(cache, list) or not isinstance(queued, set):
        return None
    bodies = list(cache) if alive else []  # list() and frozenset() copy in one step under the GIL
    message_ids = frozenset(queued) if alive else frozenset()
    delayed = [item.message for item in list(thread.delay_queue.queue)] if alive else []
    work_queue = thread.work_queue
    with work_queue.mutex:  # its items and the count of those taken by workers, at one instant
        waiting = [item.message for item in work_queue.queue if item.message.queue_name == queue_name]
        in_workers = work_queue.unfinished_tasks - len(work_queue.queue)
        in_workers_ids = in_hand.ids()  # no worker thread takes a message meanwhile
    cached = [_decode(body) for body in bodies]
    if None in cached:
        return None  # the consumer will fail on it too and be rebuilt; look again then
    return _Held(
        fetch_mark=(consumer, cache),
        redis_ids=frozenset(_redis_id(message) for message in [*cached, *delayed, *waiting]),
        message_ids=message_ids,
        in_workers=in_workers,
        in_hand=in_workers_ids,
    )


def _redis_id(message: Any) -> str:
    return str(message.options.get("redis_message_id", ""))


def _same_mark(mark: tuple[object, object], last: tuple[object, object] | None) -> bool:
    # By identity: every fetch assigns a new list, equal or not to the last one.
    return last is not None and all(now is then for now, then in zip(mark, last, strict=True))


def _decode(body: object) -> Message[Any] | None:
    if not isinstance(body, bytes):
        return None
    try:
        return Message.decode(body)
    except DecodeError:
        return None


def _message_id(body: object) -> str | None:
    message = _decode(body)
    return message.message_id if message is not None else None
