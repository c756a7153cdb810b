"""Re-verification of a success callback against the provider (``MJHOOK_VERIFY_RESULTS``).

The provider's signature covers the taskId and a timestamp, not the body: a replayed or forged
body could name any result URLs. With an API key, the worker asks the provider's ``record-info``
for the task before downloading and uses the URLs the provider lists, recording any mismatch."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from shared.callback import Callback, CallbackLimits, check_result_urls
from shared.errors import InvalidCallback, ProviderRefused, TransientError
from shared.provider import GENERATION_FAILED, TASK_UNKNOWN_CODES, TaskRecordInfo, TaskStatus

log = logging.getLogger(__name__)


class VerificationPending(TransientError):
    """The provider still reports the task as generating although a success was called back:
    try again later."""


@dataclasses.dataclass(frozen=True, slots=True)
class Verification:
    """What the check found, for the manifest's ``verification`` field."""

    mismatch: bool
    reason: str
    callback_urls: tuple[str, ...]
    provider_urls: tuple[str, ...]

    def to_manifest(self) -> dict[str, Any]:
        return {
            "checked": True,
            "mismatch": self.mismatch,
            "reason": self.reason,
            "callbackUrls": list(self.callback_urls) if self.mismatch else [],
        }


class ResultVerifier:
    """Checks a success callback with ``record_info`` (the provider client's method). The result
    URLs the provider lists must stay within ``limits``, as a callback's (default: the defaults)."""

    def __init__(
        self, record_info: Callable[[str], TaskRecordInfo], *, limits: CallbackLimits | None = None
    ) -> None:
        self._record_info = record_info
        self._limits = CallbackLimits() if limits is None else limits

    def verify(self, callback: Callback) -> tuple[Callback, Verification]:
        """The callback to process (with the provider's result URLs, or turned into a failure
        when the provider disowns the success) and what was found. Raises a transient error when
        the provider cannot say now (unreachable, still generating, refusing our key)."""
        try:
            info = self._record_info(callback.task_id)
        except ProviderRefused as exc:
            # As the polling fallback reads record-info's refusals (shared/polling.py).
            if exc.code in TASK_UNKNOWN_CODES:
                return self._disowned(callback, "the provider does not know this task")
            if exc.code == GENERATION_FAILED:
                detail = exc.provider_msg or "generation failed"
                return self._disowned(callback, f"the provider reports the generation failed ({detail})")
            # Our key or account is refused: nothing says the callback is false. Retry, and
            # the message ends in the dead-letter queue with this reason if it persists.
            raise VerificationPending(f"cannot verify the result with the provider: {exc}") from exc
        if info.status is TaskStatus.GENERATING:
            raise VerificationPending(f"the provider still reports task {callback.task_id} as generating")
        if info.status is TaskStatus.SUCCESS and not info.result_urls and callback.result_urls:
            # A record not filled in yet: adopting its empty list would fail a task that has files.
            raise VerificationPending(
                f"the provider reports task {callback.task_id} done but lists no results yet"
            )
        if info.status is TaskStatus.FAILED:
            detail = info.error_message or f"errorCode {info.error_code}"
            return self._disowned(callback, f"the provider reports the generation failed ({detail})")
        try:
            check_result_urls(info.result_urls, self._limits)
        except InvalidCallback as exc:
            # As the ingress refuses such a callback: thousands of downloads, a manifest of MBs.
            return self._disowned(
                callback, f"the provider's result URLs are past this mjhook's limits ({exc})"
            )
        mismatch = info.result_urls != callback.result_urls
        reason = "the callback's result URLs differ from the provider's" if mismatch else "confirmed"
        if mismatch:
            log.warning("task %s: %s; using the provider's", callback.task_id, reason)
        verified = dataclasses.replace(callback, result_urls=info.result_urls)
        return verified, Verification(mismatch, reason, callback.result_urls, info.result_urls)

    @staticmethod
    def _disowned(callback: Callback, reason: str) -> tuple[Callback, Verification]:
        log.warning("task %s: success callback not confirmed: %s", callback.task_id, reason)
        msg = f"success not confirmed: {reason}"
        failed = dataclasses.replace(callback, code=500, msg=msg, result_urls=())
        return failed, Verification(True, reason, callback.result_urls, ())
