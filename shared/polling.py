"""Fetching a task's result from the provider when its callback did not come: read
``record-info`` and, once the task is finished, queue the result exactly like a callback, so the
same pipeline (dedup, download, manifest) handles it. A callback arriving later is a duplicate.

Used by the workers' periodic poll (workers/polling.py) and by ``mjhook recover``."""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import dramatiq
import orjson

from shared.callback import CODE_SUCCESS, Callback, CallbackLimits, parse_callback, without_callback_url
from shared.clock import utc_iso
from shared.errors import InvalidCallback, ProviderRefused
from shared.provider import GENERATION_FAILED, TASK_UNKNOWN_CODES, ProviderClient, TaskRecordInfo
from shared.queue import enqueue_callback
from shared.taskstate import TaskStore

log = logging.getLogger(__name__)

#: ``code`` of a callback built from a failed task's details (the provider's failure code).
CODE_FAILURE = 500
#: Appended to ``msg``, so a manifest tells a polled result from a called-back one.
POLLED_MSG_SUFFIX = " (polled from record-info)"


class PollOutcome(enum.StrEnum):
    #: Finished: its result is queued for the workers.
    QUEUED = "queued"
    #: Still generating at the provider.
    GENERATING = "generating"
    #: The provider does not know the task.
    UNKNOWN = "unknown"
    #: Finished, but its result is not one mjhook can take (a URL too long, say): never will be.
    UNUSABLE = "unusable"


@dataclass(frozen=True, slots=True)
class PollResult:
    task_id: str
    outcome: PollOutcome
    #: A word on it: the queued result's ``msg``, or why it is not queued.
    detail: str
    #: Whether the queued result is a success (only for ``QUEUED``).
    succeeded: bool = False


class ResultPoller:
    """Reads one task's details and queues its result once it is final. ``clock`` returns Unix
    seconds."""

    def __init__(
        self,
        *,
        provider: ProviderClient,
        tasks: TaskStore,
        broker: dramatiq.Broker,
        limits: CallbackLimits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``limits``: what a polled result must meet, as a callback at the ingress."""
        self._provider = provider
        self._tasks = tasks
        self._broker = broker
        self._limits = limits or CallbackLimits()
        self._clock = clock

    def poll(self, task_id: str) -> PollResult:
        """Poll ``task_id``. Provider errors about the account or its availability (401, 402, 429,
        5xx, unreachable) raise :class:`~shared.errors.ProviderError`; redis and queue errors
        raise too."""
        received_at = utc_iso(self._clock())
        try:
            info = self._provider.record_info(task_id)
        except ProviderRefused as exc:
            if exc.code in TASK_UNKNOWN_CODES:
                return PollResult(task_id, PollOutcome.UNKNOWN, str(exc))
            if exc.code == GENERATION_FAILED:
                msg = (exc.provider_msg or "generation failed") + POLLED_MSG_SUFFIX
                return self._queue(Callback(task_id, CODE_FAILURE, msg, None, (), received_at), "failed")
            raise
        if not info.finished:
            return PollResult(task_id, PollOutcome.GENERATING, f"successFlag {info.success_flag}")
        if info.succeeded and not info.result_urls:
            # A record says success before it lists its files: queued so, the task would fail for
            # good, while the next poll finds them (the verifier waits for them too).
            return PollResult(task_id, PollOutcome.GENERATING, "success without its results listed yet")
        try:
            callback = callback_from_record(info, received_at=received_at, limits=self._limits)
        except InvalidCallback as exc:
            return PollResult(task_id, PollOutcome.UNUSABLE, f"its result cannot be used: {exc.reason}")
        return self._queue(callback, info.status.value)

    def _queue(self, callback: Callback, status: str) -> PollResult:
        # A record this version cannot read (another version's state, a hand edit) could not be
        # marked below: its result would be queued again at every poll. TaskRecordUnusable.
        self._tasks.get(callback.task_id)
        # Queued first, then marked: a task marked ``received`` without its message would be
        # lost to the poller, while a message for a task still ``submitted`` is processed anyway.
        enqueue_callback(self._broker, callback)
        self._tasks.mark_received(callback.task_id, callback.received_at)
        log.info("task %s: result polled from the provider and queued (%s)", callback.task_id, status)
        return PollResult(callback.task_id, PollOutcome.QUEUED, callback.msg, succeeded=callback.succeeded)


def callback_from_record(info: TaskRecordInfo, *, received_at: str, limits: CallbackLimits) -> Callback:
    """The callback the provider would have sent for a finished task: code 200 with its result
    URLs, or 500 with its error message, checked like one at the ingress (an
    :class:`~shared.errors.InvalidCallback` beyond ``limits``). ``promptJson`` is the recorded
    ``paramJson`` without its ``callBackUrl`` (which may carry our token, and must not land in the
    manifest)."""
    if info.succeeded:
        code, msg = CODE_SUCCESS, "success"
    else:
        code = CODE_FAILURE
        msg = info.error_message or f"generation failed (successFlag {info.success_flag})"
    body = {
        "code": code,
        "msg": msg + POLLED_MSG_SUFFIX,
        "data": {
            "taskId": info.task_id,
            "promptJson": without_callback_url(info.param_json),
            "resultUrls": list(info.result_urls) if info.succeeded else [],
        },
    }
    return parse_callback(orjson.dumps(body), received_at=received_at, limits=limits)
