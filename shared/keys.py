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
#: The same for callbacks of senders that did not pass the source, token and signature checks
#: configured, capped on its own: whoever lacks the token can fill only this one, never push the
#: refusals of callbacks that passed those checks out of :data:`REJECTED`.
REJECTED_UNAUTHENTICATED = REJECTED + ":unauthenticated"

#: Integer: how often one attempt at a queued message was started (dramatiq message id, the
#: message's enqueue time in ms, its retry count). Expires ``task_ttl_s`` after its last start.
ATTEMPT_STARTS = PREFIX + ":starts:{message_id}:{enqueued_ms}:{retries}"

#: Sorted set of the taskIds mjhook itself submitted to the provider, scored by submit time (ms),
#: whatever their state now (``mjhook recover`` reads it). Entries older than ``task_ttl_s`` are
#: trimmed on every write. The tasks still waiting for a result are ``state_index("submitted")``.
SUBMITTED = PREFIX + ":submitted"

#: Sorted set of submitted taskIds polled at the provider, scored by the last poll's time (ms).
#: An entry is removed when its task's wait is over; older than ``poll_give_up_s``, trimmed.
POLLED = PREFIX + ":polled"

#: Sorted set of give-ups waiting for a second look (their task was left to a lease holder that
#: may be gone), each a JSON member ``{"callback", "reason"}`` scored by when it is due (ms);
#: removed once looked at, so no worker stopping meanwhile loses one.
GIVE_UPS_PENDING = PREFIX + ":giveups"

#: String: set while the provider asked the polling fallback to wait (a ``Retry-After`` on a
#: poll); expires when that wait is over. No pass polls while it exists.
POLL_HOLD = PREFIX + ":poll:hold"

#: Sorted set, scratch of one ``SubmittedTasks.due`` call: the waiting tasks never polled, made
#: and deleted inside one MULTI/EXEC, so it never outlives the call.
DUE_SCRATCH = PREFIX + ":due:{token}"

#: String: the token of the one poll pass running now (a lock). Expires after the pass's lock TTL,
#: so a crashed worker's lock lapses.
POLL_LOCK = PREFIX + ":poll:lock"

#: String: the dramatiq message id of the one poll message due next; a poll message with another
#: id is a duplicate and does nothing. Expires a little after that message is due.
POLL_NEXT = PREFIX + ":poll:next"

#: Integer: how many polls of one task were started and never ended (their worker process died
#: during them); deleted as a poll ends. Expires ``task_ttl_s`` after its last start.
POLL_STARTS = PREFIX + ":poll:starts:{task_id}"


def task(task_id: str) -> str:
    return TASK.format(task_id=task_id)


def lease(task_id: str) -> str:
    return LEASE.format(task_id=task_id)


def attempt_starts(message_id: str, enqueued_ms: int, retries: int) -> str:
    return ATTEMPT_STARTS.format(message_id=message_id, enqueued_ms=enqueued_ms, retries=retries)


def poll_starts(task_id: str) -> str:
    return POLL_STARTS.format(task_id=task_id)


def state_index(state: str) -> str:
    return STATE_INDEX_PREFIX + state


def dead_reason(redis_message_id: str) -> str:
    return DEAD_REASON.format(redis_message_id=redis_message_id)


# --- dramatiq's Redis broker keys (brokers/redis/dispatch.lua): read by the operator tools, ----
# --- written by dramatiq. ``queue`` is a queue name; its delay queue is ``queue + ".DQ"``. ----


def broker_queue(namespace: str, queue: str) -> str:
    """List of the ids of the queue's ready messages, oldest first."""
    return f"{namespace}:{queue}"


def broker_messages(namespace: str, queue: str) -> str:
    """Hash of message id -> encoded message, for every message of the queue not yet acked."""
    return f"{namespace}:{queue}.msgs"


def broker_dead(namespace: str, queue: str) -> str:
    """Sorted set of the queue's dead-lettered message ids, scored by time of death (ms)."""
    return f"{namespace}:{queue}.XQ"


def broker_dead_messages(namespace: str, queue: str) -> str:
    """Hash of dead-lettered message id -> encoded message; expired by dramatiq's maintenance."""
    return f"{namespace}:{queue}.XQ.msgs"


def broker_acks(namespace: str, broker_id: str, queue: str) -> str:
    """Set of the message ids a broker (one worker process) fetched and has not acked yet."""
    return f"{namespace}:__acks__.{broker_id}.{queue}"


def broker_heartbeats(namespace: str) -> str:
    """Sorted set of broker ids by last command (ms): workers AND enqueue-only brokers."""
    return f"{namespace}:__heartbeats__"
