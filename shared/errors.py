"""The one exception tree, split by what the caller must do about it:
retry later (:class:`TransientError`) or give up with a reason (:class:`PermanentError`)."""

from __future__ import annotations


class MjhookError(Exception):
    """Base of every error mjhook raises on purpose."""


class ConfigError(MjhookError):
    """The configuration cannot work; fix it and restart."""


class TransientError(MjhookError):
    """Worth trying again later: the same input may succeed. ``retry_after``: not before these
    many seconds, when whoever refused said so (a provider's ``Retry-After``); None: it did not."""

    retry_after: float | None = None


class QueueUnavailable(TransientError):
    """Redis (or the broker) did not take the callback; the ingress answers 503."""


class SpoolUnavailable(TransientError):
    """The ingress's local spool cannot take a callback either (full, disk error); answer 503."""


class StorageUnavailable(TransientError):
    """Object storage did not answer or answered with a server error."""


class BucketMissing(StorageUnavailable):
    """The bucket does not exist (yet): the workers make it when they start."""


class ObjectChanged(TransientError):
    """A conditional write to object storage was refused: the object is no longer what the writer
    read (another writer got there first)."""


class TaskRecordUnusable(TransientError):
    """A task's record in Redis is not one mjhook can read: its key holds another type, or a state
    this version does not know (written by hand, by another application, or by another version).
    Nothing can be recorded of the task until someone looks at it; not a Redis outage."""

    def __init__(self, task_id: str, why: str) -> None:
        super().__init__(f"the record of task {task_id} in Redis is unusable: {why}")
        self.task_id = task_id


class DownloadFailed(TransientError):
    """A result file could not be fetched this time (timeout, reset, 5xx)."""


class FreshLinkPending(DownloadFailed):
    """A result link expired and the provider could not give a fresh one for now (unreachable,
    rate limited, in maintenance): only the provider can mend it, not another download."""


class TaskBusy(TransientError):
    """Another worker holds the lease on this task right now."""


class LeaseHeld(TaskBusy):
    """A task state move refused because of the task's lease: it is not (or no longer) the
    caller's, or some worker holds it. ``state`` is the state the task keeps (None: no record)."""

    def __init__(self, task_id: str, state: str | None, *, by_other: bool) -> None:
        who = "is no longer ours: another worker may hold the task" if by_other else "is held by a worker"
        super().__init__(f"the lease of task {task_id} {who}")
        self.task_id = task_id
        self.state = state


class PermanentError(MjhookError):
    """Retrying cannot help: the reason is recorded and the task moves on."""


class AttemptNeverEnds(PermanentError):
    """This attempt at a message was started again and again, and never ended: the worker process
    died during it each time (killed: out of memory, a crash in a library). Started once more it
    would take its worker down again, and with it every message that worker held."""


class InvalidCallback(PermanentError):
    """A callback body or request we refuse; ``status`` is the HTTP answer (400, 401, 413, 415)."""

    def __init__(self, reason: str, *, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class DownloadRefused(PermanentError):
    """A result file we will never store: not media, too large, gone (4xx), refused address."""


class ResultLinkGone(DownloadRefused):
    """A result URL answered 403, 404 or 410: expired or revoked. The provider may still hand out
    a fresh link for the same file (``download-url``)."""


class ProviderError(MjhookError):
    """The provider's API answered with an error (its body ``code``, else the HTTP status), or
    could not be reached (``code`` None). ``provider_msg`` is the provider's own ``msg``."""

    def __init__(self, message: str, *, code: int | None = None, provider_msg: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.provider_msg = provider_msg


class ProviderUnavailable(ProviderError, TransientError):
    """Rate limited (429), in maintenance (455), a server error (5xx) or unreachable, still after
    the client's own retries: try again later, not before ``retry_after`` seconds if it is set."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        provider_msg: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, provider_msg=provider_msg)
        self.retry_after = retry_after


class ProviderRefused(ProviderError, PermanentError):
    """The provider refused the request for good: bad API key (401), no credits (402), unknown
    task (404), invalid request (400, 422), generation failed (501)."""
