"""Every Redis key mjhook writes, built here and nowhere else. The queue's own keys belong to
dramatiq (namespace ``dramatiq``); ours live under ``mjhook:``."""

from __future__ import annotations

PREFIX = "mjhook"

#: Hash of one task's state record: state, receivedAt, updatedAt, code, reason.
#: Expires ``task_ttl_s`` after its last change; while it lives, it is the dedup memory.
TASK = PREFIX + ":task:{task_id}"

#: String holding the token of the worker working on a task. Expires after ``lease_ttl_s``
#: unless renewed, so a crashed worker's claim lapses on its own.
LEASE = PREFIX + ":lease:{task_id}"

#: Sorted set per state of the taskIds in that state, scored by the time of the change (ms).
#: Entries older than ``task_ttl_s`` are trimmed on every write to the set.
STATE_INDEX_PREFIX = PREFIX + ":state:"

#: Sorted set of recently changed taskIds scored by the time of the change (ms); capped in size.
RECENT = PREFIX + ":recent"

#: Sorted set of the dramatiq broker ids of worker processes (consumers, not the ingress's
#: enqueue-only brokers), scored by their last beat (ms). A worker removes itself when it stops;
#: entries older than a day are trimmed on every write.
WORKERS = PREFIX + ":workers"

#: String: why the workers gave up on a dead-lettered message (by its Redis message id). Written
#: in the broker's Redis next to the dead letter; expires with it (``dead_message_ttl_s``).
DEAD_REASON = PREFIX + ":dead:{redis_message_id}"

#: List of rejected callbacks (reason, status, capped raw body), newest first; capped in length.
REJECTED = PREFIX + ":rejected"


def task(task_id: str) -> str:
    return TASK.format(task_id=task_id)


def lease(task_id: str) -> str:
    return LEASE.format(task_id=task_id)


def state_index(state: str) -> str:
    return STATE_INDEX_PREFIX + state


def dead_reason(redis_message_id: str) -> str:
    return DEAD_REASON.format(redis_message_id=redis_message_id)
