"""Whether a Redis keeps what mjhook acknowledged: a callback answered 200 is never lost only if
the Redis it is queued in writes each command to its append-only file, fsync'd before it answers
(``appendonly yes``, ``appendfsync always``), and never evicts keys (``maxmemory-policy
noeviction``). A Redis started by hand, or a distribution's package (Debian's runs with the AOF
off), may not: this says so, in sentences for the log and ``mjhook status``.

A Redis that will not say (CONFIG renamed or disabled, as managed services do, or unreachable)
gives one note starting with :data:`CANNOT_BE_CHECKED` instead of problems; nothing here raises.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import redis

from shared.redis_client import as_text
from shared.settings import Settings

#: The settings read, with the values that keep every acknowledged callback.
REQUIRED = {"appendonly": "yes", "appendfsync": "always", "maxmemory-policy": "noeviction"}
#: Also read: with no limit (0) Redis never evicts, whatever its policy.
MAXMEMORY = "maxmemory"
#: How the note on a Redis that cannot be asked begins.
CANNOT_BE_CHECKED = "cannot be checked"


def durability_problems(client: redis.Redis) -> list[str]:
    """What in ``client``'s Redis can lose acknowledged callbacks, one sentence each (empty: all
    of :data:`REQUIRED` holds). Read in one pipelined round trip; a Redis refusing CONFIG or not
    answering gives a single :data:`CANNOT_BE_CHECKED` note, never an exception."""
    pipe = client.pipeline(transaction=False)
    for name in (*REQUIRED, MAXMEMORY):
        pipe.config_get(name)
    try:
        replies = pipe.execute()
    except (redis.RedisError, OSError) as exc:
        # A managed Redis answers ResponseError (unknown command) to a renamed CONFIG.
        return [f"{CANNOT_BE_CHECKED} ({type(exc).__name__}: {exc}): {_required_text()}"]
    values = _settings_of(replies)
    missing = [name for name in REQUIRED if name not in values]
    if missing:
        # Some services answer CONFIG GET with nothing for settings they hide.
        return [f"{CANNOT_BE_CHECKED} (CONFIG GET gave no {', '.join(missing)}): {_required_text()}"]
    problems = []
    appendonly = values["appendonly"]
    if appendonly != "yes":
        problems.append(
            f"appendonly is {appendonly}: a Redis restart or crash loses every acknowledged callback "
            "still queued (set appendonly yes, appendfsync always)"
        )
    else:
        # Without the AOF, appendfsync changes nothing: only the appendonly problem is said then.
        problems += _appendfsync_problems(values["appendfsync"])
    if values.get(MAXMEMORY) != "0":  # no limit: nothing is evicted, whatever the policy
        problems += _eviction_problems(values["maxmemory-policy"])
    return problems


def _settings_of(replies: list[object]) -> dict[str, str]:
    """The settings CONFIG GET answered, by name; a reply that is no mapping of texts (a server
    that only looks like Redis) gives none of them, so it counts as missing, never an error."""
    values: dict[str, str] = {}
    for reply in replies:
        if not isinstance(reply, dict):
            continue
        for key, value in reply.items():
            if isinstance(key, str | bytes) and isinstance(value, str | bytes):
                values[as_text(key)] = as_text(value)
    return values


def _appendfsync_problems(appendfsync: str) -> list[str]:
    if appendfsync == "always":
        return []
    if appendfsync == "everysec":
        return [
            "appendfsync is everysec: a host crash or power loss can lose the last second of "
            "acknowledged callbacks (use always)"
        ]
    return [
        f"appendfsync is {appendfsync}: the AOF reaches the disk when the OS flushes it (about "
        "every 30 s on Linux): a host crash or power loss can lose the acknowledged callbacks of "
        "that span (use always)"
    ]


def _eviction_problems(policy: str) -> list[str]:
    if policy == "noeviction":
        return []
    if policy.startswith("volatile-"):
        # dramatiq's queue lists and message hashes have no TTL; the task records, leases and
        # attempt counters (shared/keys.py) do.
        return [
            f"maxmemory-policy is {policy}: at maxmemory Redis evicts keys that have a TTL: not the "
            "queued callbacks (dramatiq's queues have none), but task records (a task's state and "
            "the dedup memory: a duplicate callback is processed again), worker leases, the counts "
            "of attempts that killed their worker and the polling fallback's locks (use noeviction)"
        ]
    return [
        f"maxmemory-policy is {policy}: at maxmemory Redis evicts keys, queued callbacks among "
        "them (use noeviction)"
    ]


def _required_text() -> str:
    settings = ", ".join(f"{name} {value}" for name, value in REQUIRED.items())
    return f"make sure it runs with {settings}"


def clients_to_check(
    settings: Settings, task_client: redis.Redis, queue_client: redis.Redis | None = None
) -> dict[str, redis.Redis]:
    """The Redis servers whose durability matters, by the name to give them: the task state's
    (``MJHOOK_REDIS_URL``) and, when the queue is in a Redis of its own (``MJHOOK_BROKER_URL``),
    that one too; ``queue_client`` is its client (None: not checked)."""
    if queue_client is None or settings.queue_url == settings.redis_url:
        return {"": task_client}
    return {"MJHOOK_REDIS_URL": task_client, "MJHOOK_BROKER_URL": queue_client}


def problems_of(clients: Mapping[str, redis.Redis]) -> list[str]:
    """:func:`durability_problems` of each client (from :func:`clients_to_check`), each sentence
    after its Redis's name when it has one."""
    return [
        f"{name}: {problem}" if name else problem
        for name, client in clients.items()
        for problem in durability_problems(client)
    ]


def log_durability_problems(clients: Mapping[str, redis.Redis], logger: logging.Logger) -> list[str]:
    """Log each of :func:`problems_of` at WARNING, one line each; return them."""
    problems = problems_of(clients)
    for problem in problems:
        logger.warning("Redis durability: %s", problem)
    return problems
