"""Deliver callbacks the way the provider does: POST JSON, wait up to 15 s for the answer (its
status, and its body up to :data:`MAX_ANSWER_BYTES`), retry a non-2xx answer or a timeout after 1,
5 and 15 minutes (times ``time_scale``), then give up.

Every attempt is recorded, so tests and the load report can see what was sent and answered.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from simulator.config import DEFAULT_CALLBACK_TIMEOUT_S
from simulator.deadline import deadline
from simulator.scheduler import Scheduler

log = logging.getLogger(__name__)

TIMESTAMP_HEADER = "X-Webhook-Timestamp"
SIGNATURE_HEADER = "X-Webhook-Signature"
#: The most of a receiver's answer to a callback read, bytes: the provider wants its status; a
#: receiver answering gigabytes must not fill the simulator's memory.
MAX_ANSWER_BYTES = 4096


def webhook_signature(key: str, task_id: str, timestamp: int) -> str:
    """The provider's signature: base64(HMAC-SHA256(key, taskId + "." + timestamp))."""
    digest = hmac.new(key.encode(), f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


#: How the callback's ``data`` names the task: ``taskId``, or ``task_id`` in some of the provider's
#: samples (the ``task_id_spelling_share`` fault).
TASK_ID_FIELD = "taskId"
SNAKE_TASK_ID_FIELD = "task_id"


def callback_body(
    task_id: str,
    prompt_json: str,
    result_urls: list[str],
    *,
    failed: bool = False,
    id_field: str = TASK_ID_FIELD,
) -> dict[str, Any]:
    """A callback in the provider's exact format; a failure has code 500 and no URLs. ``id_field``
    is the key of the id in ``data`` (``taskId``, or ``task_id`` as some samples spell it)."""
    if id_field not in (TASK_ID_FIELD, SNAKE_TASK_ID_FIELD):
        raise ValueError(f"not a spelling of the task id: {id_field}")
    if failed:
        return {
            "code": 500,
            "msg": "Midjourney generation failed",
            "data": {id_field: task_id, "promptJson": prompt_json, "resultUrls": []},
        }
    return {
        "code": 200,
        "msg": "success",
        "data": {id_field: task_id, "promptJson": prompt_json, "resultUrls": result_urls},
    }


def malformed_prompt_json(prompt_json: str) -> str:
    """``prompt_json`` cut in half: no longer valid JSON (a JSON object cut short never is), as
    the provider's docs warn ``promptJson`` can be."""
    return prompt_json[: len(prompt_json) // 2]


def body_task_id(body: dict[str, Any]) -> str:
    """The task id of a callback ``body``, whichever way its ``data`` spells it."""
    data = body["data"]
    return str(data[TASK_ID_FIELD] if TASK_ID_FIELD in data else data[SNAKE_TASK_ID_FIELD])


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One POST of a callback."""

    task_id: str
    #: 0 for the callback, 1 for its injected duplicate.
    delivery: int
    #: 1 for the first try, 2-4 for the retries.
    attempt: int
    url: str
    #: The receiver's HTTP status, or None when there was no answer (timeout, refused).
    status: int | None
    error: str | None
    #: Monotonic seconds when the request started, and how long until its answer.
    started_at: float
    duration_s: float
    #: Monotonic seconds when the attempt was due (``started_at`` is later when every delivery
    #: thread was busy).
    due_at: float
    #: Unix seconds (the delivery's clock, the signature's) when the request started.
    sent_at: float

    @property
    def acknowledged(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class CallbackDelivery:
    """Sends callbacks on ``scheduler`` threads with one pooled ``client``.

    An attempt gets ``timeout_s`` seconds in all, from connecting to the last byte of the answer
    read, at most :data:`MAX_ANSWER_BYTES` of its body (the ``client`` should use a
    :class:`~simulator.deadline.DeadlineTransport`, which stops waiting then; an answer completed
    later counts as a timeout whatever the transport).
    ``retry_delays_s`` are real seconds, each counted from the previous attempt;
    ``clock`` gives the Unix seconds of the signature timestamp.
    """

    def __init__(
        self,
        *,
        scheduler: Scheduler,
        client: httpx.Client,
        retry_delays_s: tuple[float, ...],
        timeout_s: float = DEFAULT_CALLBACK_TIMEOUT_S,
        hmac_key: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._scheduler = scheduler
        self._client = client
        self._retry_delays_s = retry_delays_s
        self._timeout_s = timeout_s
        self._hmac_key = hmac_key
        self._clock = clock
        self._attempts: list[DeliveryAttempt] = []
        self._by_task: dict[str, list[DeliveryAttempt]] = {}
        #: Deliveries per task not yet acknowledged nor given up on.
        self._outstanding: Counter[str] = Counter()
        self._lock = threading.Lock()

    def deliver(self, url: str, body: dict[str, Any], *, delay_s: float = 0.0, delivery: int = 0) -> None:
        """Send ``body`` to ``url`` in ``delay_s`` seconds, retrying on the provider's schedule.
        The signature (with a webhook key) covers the task's id however ``body`` spells it."""
        task_id = body_task_id(body)
        content = orjson.dumps(body)
        due = time.monotonic() + delay_s
        with self._lock:
            self._outstanding[task_id] += 1
        self._scheduler.call_later(delay_s, lambda: self._attempt(url, task_id, content, delivery, 1, due))

    def outstanding(self, task_id: str) -> int:
        """Deliveries of ``task_id`` still to be acknowledged or given up on."""
        with self._lock:
            return self._outstanding[task_id]

    def attempts(self, task_id: str | None = None) -> list[DeliveryAttempt]:
        """Attempts so far, oldest first: all of them, or those of one task."""
        with self._lock:
            return list(self._attempts if task_id is None else self._by_task.get(task_id, ()))

    def _attempt(
        self, url: str, task_id: str, content: bytes, delivery: int, attempt: int, due: float
    ) -> None:
        # identity: the answer's bytes read are the bytes sent (no decompressing a small answer
        # into a large one).
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        sent_at = self._clock()
        if self._hmac_key:
            timestamp = int(sent_at)
            headers[TIMESTAMP_HEADER] = str(timestamp)
            headers[SIGNATURE_HEADER] = webhook_signature(self._hmac_key, task_id, timestamp)
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            with deadline(self._timeout_s):
                status = _answer_status(self._client, url, content, headers)
        except Exception as exc:  # not only httpx's: the idna codec's UnicodeError fails an attempt too
            error = f"{type(exc).__name__}: {exc}"
        if status is not None and time.monotonic() - started > self._timeout_s:
            status, error = None, f"Timeout: the answer ({status}) took longer than {self._timeout_s:g} s"
        record = DeliveryAttempt(
            task_id=task_id,
            delivery=delivery,
            attempt=attempt,
            url=url,
            status=status,
            error=error,
            started_at=started,
            duration_s=time.monotonic() - started,
            due_at=due,
            sent_at=sent_at,
        )
        with self._lock:
            self._attempts.append(record)
            self._by_task.setdefault(task_id, []).append(record)
        log.info("callback %s attempt %d -> %s", task_id, attempt, status or error)
        if record.acknowledged or attempt > len(self._retry_delays_s):
            if not record.acknowledged:
                log.info("callback %s: no acknowledgement after %d attempts; giving up", task_id, attempt)
            with self._lock:
                self._outstanding[task_id] -= 1
            return
        delay_s = self._retry_delays_s[attempt - 1]
        retry_due = time.monotonic() + delay_s
        self._scheduler.call_later(
            delay_s, lambda: self._attempt(url, task_id, content, delivery, attempt + 1, retry_due)
        )


def _answer_status(client: httpx.Client, url: str, content: bytes, headers: dict[str, str]) -> int:
    """POST ``content`` to ``url`` and return the answer's status, having read at most
    :data:`MAX_ANSWER_BYTES` of its body (the connection is closed, not reused, when it was
    longer)."""
    with client.stream("POST", url, content=content, headers=headers) as answer:
        read = 0
        for piece in answer.iter_raw(MAX_ANSWER_BYTES):
            read += len(piece)
            if read >= MAX_ANSWER_BYTES:
                break
        return answer.status_code
