"""How the queue, the workers and the tasks are doing, read from Redis alone, so it answers with
every worker down. ``mjhook status`` and the ingress's dashboard show it, with what in Redis can lose
acknowledged callbacks (:class:`StatusReading`); /metrics can reuse it.

The queue's numbers come from dramatiq's Redis broker keys (see :mod:`shared.keys`):

- ready: ids in the queue's list;
- delayed: messages waiting for their ``eta`` (retries in backoff): in the delay queue's list, or
  already taken by a worker, which holds them in memory until they are due;
- in flight: fetched by a worker and not acked yet (being processed, or prefetched into its
  memory), including those of workers that died; the part held by brokers whose heartbeat lapsed
  is also given alone (``held_by_dead``): those return to their queue at the next maintenance;
- dead: dead-lettered.

Brokers are enumerated from dramatiq's heartbeat set, not by scanning the keyspace: dramatiq adds a
broker there on every command and removes it only once it holds no ack set (dispatch.lua), so
every broker holding messages is in it, and the cost grows with the number of brokers, not of keys.

With the queue in RabbitMQ, none of those keys exist: the snapshot then has the task numbers only,
its queues and workers unknown (``None``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
import redis
from dramatiq.common import dq_name

from shared import keys
from shared.redis_client import redis_or_host_millis
from shared.redis_durability import problems_of
from shared.rejected import count_rejected
from shared.taskstate import TaskState, TaskStore
from shared.worker_registry import registered_workers, shown_broker_id

#: Throughput is shown per minute over this many minutes.
DEFAULT_RATE_MINUTES = 10
#: The states whose per-minute counts are shown: the ends of a task.
RATE_STATES = (TaskState.STORED, TaskState.PARTIAL, TaskState.FAILED)


@dataclass(frozen=True, slots=True)
class BrokerSeen:
    """One dramatiq broker (a worker process, or an ingress process that only enqueues)."""

    broker_id: str
    #: Its last command to Redis, Unix ms, on Redis's clock (:class:`shared.redis_broker.RedisClockBroker`);
    #: None when its score is no time (an infinity, written by another program): never alive.
    last_beat_ms: int | None
    #: Whether it beat within the heartbeat timeout: dramatiq does not treat it as dead yet.
    alive: bool
    #: Whether it registered as a worker (:mod:`shared.worker_registry`).
    registered: bool
    #: Messages it fetched and has not acked, per queue name (delay queues included).
    held: Mapping[str, int]

    @property
    def is_worker(self) -> bool:
        """A registered worker, or a broker holding messages (only consumers ever fetch)."""
        return self.registered or any(self.held.values())


@dataclass(frozen=True, slots=True)
class QueueStats:
    name: str
    ready: int
    delayed: int
    in_flight: int
    #: Messages (in flight or delayed) held by brokers whose heartbeat lapsed.
    held_by_dead: int
    dead: int
    #: Seconds the message next in line has waited since it was enqueued (or since its last
    #: failure, backoff included, for a retry), or None when nothing is ready.
    oldest_ready_age_s: float | None


@dataclass(frozen=True, slots=True)
class StatusSnapshot:
    #: When it was read, Unix ms.
    taken_at_ms: int
    #: The queues' depths; None when the queue is not in Redis (RabbitMQ), which alone knows them.
    queues: tuple[QueueStats, ...] | None
    #: Live worker processes (see :func:`count_workers`); None when the queue is not in Redis:
    #: only workers of the Redis broker register (``workers.heartbeat``).
    workers: int | None
    #: Tasks per state.
    tasks: Mapping[str, int]
    #: Per state in :data:`RATE_STATES`, tasks that reached it in each recent minute, oldest first.
    per_minute: Mapping[str, tuple[int, ...]]
    #: Tasks mjhook submitted that still wait for their result, and those past the poll grace.
    submitted: Mapping[str, int]
    #: Refused callbacks kept for inspection (``mjhook rejected list``); None when unknown: a
    #: list's key holds another type (written by another program), which Redis refuses to count.
    rejected: int | None

    def to_json(self) -> dict[str, Any]:
        """The ``mjhook status --json`` object: the contract's keys plus a few more. Unknown
        queues are an empty object; unknown workers, null."""
        return {
            "queues": {
                queue.name: {
                    "ready": queue.ready,
                    "delayed": queue.delayed,
                    "in_flight": queue.in_flight,
                    "dead": queue.dead,
                    "held_by_dead": queue.held_by_dead,
                    "oldest_ready_age_s": queue.oldest_ready_age_s,
                }
                for queue in self.queues or ()
            },
            "workers": self.workers,
            "tasks": dict(self.tasks),
            "per_minute": {state: list(counts) for state, counts in self.per_minute.items()},
            "submitted": dict(self.submitted),
            "rejected": self.rejected,
            "taken_at_ms": self.taken_at_ms,
        }


@dataclass(frozen=True, slots=True)
class StatusReading:
    """One reading of ``mjhook status`` and of the dashboard: the snapshot and what in Redis can
    lose acknowledged callbacks."""

    snapshot: StatusSnapshot
    #: :func:`shared.redis_durability.problems_of` the Redis servers read (empty: durable).
    durability: tuple[str, ...]

    @classmethod
    def of(cls, snapshot: StatusSnapshot, durability_clients: Mapping[str, redis.Redis]) -> StatusReading:
        """``snapshot`` with the durability of ``durability_clients``
        (:func:`shared.redis_durability.clients_to_check`), read now: one round trip per Redis. A
        Redis refusing CONFIG, or gone since the snapshot, is a "cannot be checked" sentence,
        never an exception."""
        return cls(snapshot=snapshot, durability=tuple(problems_of(durability_clients)))

    def to_json(self) -> dict[str, Any]:
        """The snapshot's object (:meth:`StatusSnapshot.to_json`) plus ``redis_durability``."""
        return {**self.snapshot.to_json(), "redis_durability": list(self.durability)}


def read_brokers(
    client: redis.Redis, *, namespace: str, queues: Iterable[str], now_ms: int, timeout_ms: int
) -> list[BrokerSeen]:
    """Every broker in dramatiq's heartbeat set, with what it holds of ``queues`` (and of their
    delay queues). A broker is alive when it beat less than ``timeout_ms`` before ``now_ms``.
    What another program may have written there reads as odd, never as an error: an id that is
    no UTF-8 text shows its bytes as ``\\xNN`` escapes (its ack sets still found by its bytes), a
    score that is no time (an infinity) is a broker that is not alive."""
    beats = cast(
        list[tuple[bytes, float]], client.zrange(keys.broker_heartbeats(namespace), 0, -1, withscores=True)
    )
    registered = registered_workers(client)
    names = [name for queue in queues for name in (queue, dq_name(queue))]
    pipe = client.pipeline(transaction=False)
    for member, _ in beats:
        for name in names:
            pipe.scard(_acks_key(namespace, member, name))
    held = pipe.execute()
    brokers = []
    for i, (member, score) in enumerate(beats):
        broker_id = shown_broker_id(member)
        beat = math.isfinite(score)
        brokers.append(
            BrokerSeen(
                broker_id=broker_id,
                last_beat_ms=int(score) if beat else None,
                alive=beat and now_ms - score < timeout_ms,
                registered=broker_id in registered,
                held=dict(zip(names, held[i * len(names) : (i + 1) * len(names)], strict=True)),
            )
        )
    return brokers


def _acks_key(namespace: str, member: bytes | str, queue: str) -> bytes:
    """The ack set of the broker ``member`` (as read from the heartbeat set), as the bytes its
    broker named it with: those of an id that is no UTF-8 text kept as they are."""
    broker_id = member.decode("utf-8", "surrogateescape") if isinstance(member, bytes) else member
    return keys.broker_acks(namespace, broker_id, queue).encode("utf-8", "surrogateescape")


def count_workers(brokers: Iterable[BrokerSeen]) -> int:
    """Live worker processes: brokers that beat within the timeout AND are workers (registered,
    or holding messages). The ingress's enqueue-only brokers beat too but are never counted; a
    worker stopped cleanly leaves the registry and holds nothing, so it stops counting at once."""
    return sum(1 for broker in brokers if broker.alive and broker.is_worker)


def read_queue(
    client: redis.Redis, *, namespace: str, queue: str, brokers: Sequence[BrokerSeen], now_ms: int
) -> QueueStats:
    """The depths of ``queue`` (see the module doc); ``brokers`` from :func:`read_brokers`."""
    delay_queue = dq_name(queue)
    pipe = client.pipeline(transaction=False)
    pipe.llen(keys.broker_queue(namespace, queue))
    pipe.llen(keys.broker_queue(namespace, delay_queue))
    pipe.zcard(keys.broker_dead(namespace, queue))
    pipe.lindex(keys.broker_queue(namespace, queue), 0)
    ready, delayed_waiting, dead, head_id = pipe.execute()
    return QueueStats(
        name=queue,
        ready=ready,
        delayed=delayed_waiting + sum(broker.held.get(delay_queue, 0) for broker in brokers),
        in_flight=sum(broker.held.get(queue, 0) for broker in brokers),
        held_by_dead=sum(
            broker.held.get(queue, 0) + broker.held.get(delay_queue, 0)
            for broker in brokers
            if not broker.alive
        ),
        dead=dead,
        oldest_ready_age_s=_ready_age_s(client, namespace, queue, head_id, now_ms),
    )


def _ready_age_s(
    client: redis.Redis, namespace: str, queue: str, message_id: bytes | None, now_ms: int
) -> float | None:
    """Age of one ready message. The ready list is served from its head in the order messages
    were pushed, so its head is the one that waited longest (redelivered messages are pushed at
    the tail and are not seen here)."""
    if message_id is None:
        return None
    data = client.hget(keys.broker_messages(namespace, queue), message_id)
    if data is None:
        return None  # acked between our two reads
    try:
        message = orjson.loads(data)
        # A retried message keeps its first enqueue time; its last failure is when it re-entered.
        since_ms = message.get("options", {}).get("requeue_timestamp") or message["message_timestamp"]
        return max(0.0, (now_ms - int(since_ms)) / 1000)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


def read_status(
    queue_client: redis.Redis | None,
    tasks: TaskStore,
    *,
    namespace: str,
    queues: Sequence[str],
    heartbeat_timeout_ms: int,
    now_ms: int,
    poll_grace_s: float,
    rate_minutes: int = DEFAULT_RATE_MINUTES,
) -> StatusSnapshot:
    """Everything ``mjhook status`` and the dashboard show. ``queue_client`` is the broker's
    Redis, or None when the queue is not in Redis (then queues and workers are None); ``tasks``
    reads task state (possibly another Redis); ``heartbeat_timeout_ms`` is the redelivery
    timeout; ``poll_grace_s`` (seconds) tells the overdue submitted tasks; ``now_ms`` is the
    reading host's time, which task state and queued messages (stamped by the hosts that queued
    them) are read against. Workers' heartbeats are judged against the queue Redis's own clock,
    the one they carry (:class:`shared.redis_broker.RedisClockBroker`): a reading host whose clock
    is off counts the live workers all the same; a Redis refusing ``TIME`` (an ACL, a proxy) is
    read against this host's clock instead, as the workers then stamp their heartbeats
    (:func:`shared.redis_client.redis_or_host_millis`)."""
    queue_stats: tuple[QueueStats, ...] | None = None
    workers: int | None = None
    if queue_client is not None:
        heartbeats_now_ms = redis_or_host_millis(queue_client)
        brokers = read_brokers(
            queue_client,
            namespace=namespace,
            queues=queues,
            now_ms=heartbeats_now_ms,
            timeout_ms=heartbeat_timeout_ms,
        )
        queue_stats = tuple(
            read_queue(queue_client, namespace=namespace, queue=queue, brokers=brokers, now_ms=now_ms)
            for queue in queues
        )
        workers = count_workers(brokers)
    return StatusSnapshot(
        taken_at_ms=now_ms,
        queues=queue_stats,
        workers=workers,
        tasks=tasks.counts(),
        per_minute=tasks.per_minute(RATE_STATES, minutes=rate_minutes),
        submitted=tasks.submitted_counts(now_ms / 1000, poll_grace_s),
        rejected=_count_rejected(tasks.client),
    )


def _count_rejected(client: redis.Redis) -> int | None:
    """:func:`shared.rejected.count_rejected`, or None when a list's key holds another type: one
    odd key is no reason to show nothing else (other errors raise)."""
    try:
        return count_rejected(client)
    except redis.ResponseError as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        return None
