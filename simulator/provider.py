"""The simulated provider's behaviour, without HTTP: accept tasks, finish them after the
generation delay, issue result links, send callbacks, answer task details."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import orjson

from simulator.admission import Admission
from simulator.api_requests import PROMPT_FIELDS, parse_derive, parse_download_url, parse_generate
from simulator.callbacks import (
    SNAKE_TASK_ID_FIELD,
    TASK_ID_FIELD,
    CallbackDelivery,
    callback_body,
    malformed_prompt_json,
)
from simulator.config import SimulatorConfig
from simulator.errors import (
    CODE_FEATURE_DISABLED,
    CODE_GENERATION_FAILED,
    CODE_MAINTENANCE,
    CODE_NOT_FOUND,
    CODE_SERVER_ERROR,
    CODE_UNAUTHORIZED,
    CODE_VALIDATION,
    ProviderError,
)
from simulator.faults import FaultPlan, FileFault
from simulator.files import KINDS, FileCache
from simulator.links import FileRef, LinkCheck, LinkSigner
from simulator.scheduler import Scheduler
from simulator.tasks import IMAGE_TASK_TYPES, UPSCALE_TASK_TYPE, VARY_TASK_TYPE, SuccessFlag, Task

log = logging.getLogger(__name__)

#: An expired-URL fault issues links that expired this long ago, seconds.
EXPIRED_LINK_AGE_S = 60.0
FAILURE_MSG = "Midjourney generation failed"
#: The ``msg`` of each body code the API-error fault answers a submit call with.
INJECTED_ERROR_MSGS = {
    CODE_SERVER_ERROR: "Server error",
    CODE_GENERATION_FAILED: FAILURE_MSG,
    CODE_FEATURE_DISABLED: "The requested feature is currently disabled",
}


@dataclass(frozen=True, slots=True)
class FileAnswer:
    """What a request for a result file gets: ``check`` decides; ``data`` when it is valid."""

    check: LinkCheck
    fault: FileFault = FileFault.NONE
    data: bytes = b""
    content_type: str = ""
    #: False once the provider no longer keeps the task's media (404 for any link signed as
    #: issued, expired or not).
    kept: bool = True
    #: When the request came (Unix seconds, the provider's clock): what :meth:`Provider.sent_whole`
    #: records once the client's side acknowledged the last byte of ``data``.
    requested_at: float = 0.0


class Provider:
    """The provider's state and rules. Tasks complete on ``generation``, a scheduler of their
    own: callbacks waiting on a slow receiver must not hold back other tasks' results.
    ``clock`` gives Unix seconds (link expiry, task times)."""

    def __init__(
        self,
        config: SimulatorConfig,
        *,
        links: LinkSigner,
        files: FileCache,
        faults: FaultPlan,
        delivery: CallbackDelivery,
        generation: Scheduler,
        admission: Admission,
        task_id_prefix: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.links = links
        self.delivery = delivery
        self._files = files
        self._faults = faults
        self._generation = generation
        self.admission = admission
        self._task_id_prefix = task_id_prefix
        self._clock = clock
        self._tasks: dict[str, Task] = {}
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        #: When each result file sent whole was requested (``clock``), by (taskId, index), oldest
        #: first.
        self._served: dict[tuple[str, int], list[float]] = {}
        self._served_changed = threading.Condition(self._lock)

    @property
    def task_id_prefix(self) -> str:
        """The start shared by every taskId of this run."""
        return self._task_id_prefix

    # --- the API ----------------------------------------------------------------------

    def authorize(self, authorization: str | None) -> None:
        """Raise the provider's 455 in maintenance, 401 unless ``Bearer <api key>``, 429 beyond
        the rate limit (every API call counts)."""
        if self.config.maintenance:
            raise ProviderError(CODE_MAINTENANCE, "The system is under maintenance, please try again later")
        self.check_key(authorization)
        self.admission.limit_rate()

    def check_key(self, authorization: str | None) -> None:
        """Raise the provider's 401 unless ``Bearer <api key>`` (maintenance or not: the
        simulator's own control routes are no provider API)."""
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or key.strip() != self.config.api_key:
            raise ProviderError(CODE_UNAUTHORIZED, "You do not have access permissions")

    def generate(self, body: Any) -> Task:
        """``POST /api/v1/mj/generate``."""
        self._inject_api_error()
        request = parse_generate(body)
        self.admission.admit()
        prompt = {"prompt": request.prompt, "model": "midjourney"}
        prompt.update({name: request.params[name] for name in PROMPT_FIELDS if name in request.params})
        return self.submit(
            task_type=request.task_type,
            params=request.params,
            prompt=prompt,
            callback_url=request.callback_url,
        )

    def derive(self, body: Any, *, task_type: str) -> Task:
        """``generateUpscale`` (``task_type`` mj_upscale) or ``generateVary`` (mj_vary)."""
        if task_type not in (UPSCALE_TASK_TYPE, VARY_TASK_TYPE):
            raise ValueError(f"not a derived task type: {task_type}")
        self._inject_api_error()
        request = parse_derive(body)
        source = self.task(request.task_id)
        if source.task_type not in IMAGE_TASK_TYPES:
            raise ProviderError(CODE_VALIDATION, f"a {source.task_type} task has no image grid")
        if source.success_flag is SuccessFlag.GENERATING:
            raise ProviderError(CODE_VALIDATION, "the task has not finished generating")
        if source.success_flag is not SuccessFlag.SUCCESS:
            raise ProviderError(CODE_GENERATION_FAILED, "the task's generation failed")
        self.admission.admit()
        source_prompt = orjson.loads(source.prompt_json).get("prompt")
        prompt = {
            "prompt": source_prompt,
            "model": "midjourney",
            "taskId": source.task_id,
            "imageIndex": request.image_index,
        }
        return self.submit(
            task_type=task_type, params=request.params, prompt=prompt, callback_url=request.callback_url
        )

    def _inject_api_error(self) -> None:
        """Raise the body code the API-error fault gives this submit call (500, 501 or 505), if
        any, before the request is read: no task is made and no credit spent."""
        code = self._faults.on_submit_call()
        if code is not None:
            raise ProviderError(code, INJECTED_ERROR_MSGS[code])

    def task(self, task_id: str) -> Task:
        with self._lock:
            task = self._tasks.get(task_id)
        if task is None:
            raise ProviderError(CODE_NOT_FOUND, "The task does not exist")
        return task

    def details(self, task_id: str) -> dict[str, Any]:
        """``GET /api/v1/mj/record-info``."""
        task = self.task(task_id)
        with self._lock:
            return task.details()

    def download_url(self, body: Any) -> str:
        """``POST /api/v1/common/download-url``: a fresh link, valid 20 minutes, for a result URL
        of ours, expired or not (422 for any other URL; 404 once the media is no longer kept,
        ``config.kept_s`` after the task completed)."""
        ref = self.links.parse(parse_download_url(body))
        if ref is None:
            raise ProviderError(CODE_VALIDATION, "Only URLs of files generated here are supported")
        task = self.task(ref.task_id)
        if ref.index >= len(task.result_urls) or ref.ext != task.kind.ext:
            raise ProviderError(CODE_NOT_FOUND, "The file does not exist")
        if not self._kept(task):
            raise ProviderError(CODE_NOT_FOUND, "The file has expired and no longer exists")
        return self.links.link(ref, ttl_s=self.config.refreshed_url_ttl_s)

    # --- tasks ------------------------------------------------------------------------

    def submit(
        self,
        *,
        task_type: str,
        params: dict[str, Any],
        prompt: dict[str, Any],
        callback_url: str,
        delay_s: float | None = None,
    ) -> Task:
        """Create a task that completes in ``delay_s`` seconds (default: the configured
        generation delay plus this task's share of the jitter). No rate limit or credits here:
        the API checks those; the load generator submits directly."""
        with self._lock:
            number = next(self._numbers)
        faults = self._faults.for_task(number)
        task = Task(
            task_id=f"{self._task_id_prefix}{number:06d}",
            number=number,
            task_type=task_type,
            param_json=orjson.dumps(params).decode(),
            prompt_json=orjson.dumps(prompt).decode(),
            callback_url=callback_url,
            created_at=self._clock(),
            faults=faults,
        )
        with self._lock:
            self._tasks[task.task_id] = task
        log.debug("task %s (%s) submitted", task.task_id, task_type)
        if delay_s is None:
            delay_s = self.config.generation_delay_s + faults.jitter * self.config.generation_jitter_s
        self._generation.call_later(delay_s, lambda: self._complete(task))
        return task

    def _complete(self, task: Task) -> None:
        try:
            self._complete_and_call_back(task)
        finally:
            task.callbacks_queued = True

    def _complete_and_call_back(self, task: Task) -> None:
        now = self._clock()
        with self._lock:
            task.completed_at = now
            if task.faults.fails:
                task.success_flag = (
                    SuccessFlag.CREATE_FAILED if task.faults.failed_after_creation else SuccessFlag.FAILED
                )
                task.error_code = CODE_GENERATION_FAILED
                task.error_message = FAILURE_MSG
            else:
                task.success_flag = SuccessFlag.SUCCESS
                task.result_urls = [self._result_link(task, index) for index in range(task.result_count)]
        if not task.callback_url or task.faults.drop:
            return
        # The callback may spell the id task_id and carry a malformed promptJson (the faults);
        # the task keeps the well-formed promptJson (its upscales and variations start from it).
        body = callback_body(
            task.task_id,
            malformed_prompt_json(task.prompt_json) if task.faults.malformed_prompt else task.prompt_json,
            task.result_urls,
            failed=task.faults.fails,
            id_field=SNAKE_TASK_ID_FIELD if task.faults.task_id_spelling else TASK_ID_FIELD,
        )
        self.delivery.deliver(task.callback_url, body)
        if task.faults.duplicate:
            self.delivery.deliver(
                task.callback_url, body, delay_s=self.config.faults.duplicate_delay_s, delivery=1
            )

    def settled(self, task_id: str) -> bool:
        """Whether the task completed and no callback of it is waiting to be sent or answered
        (each acknowledged, or given up on after its retries). Once settled, it stays so."""
        return self.task(task_id).callbacks_queued and self.delivery.outstanding(task_id) == 0

    def _kept(self, task: Task) -> bool:
        """Whether the provider still keeps the task's media: until ``config.kept_s`` seconds
        after it completed (the real one keeps it 14-15 days, so a fresh link stops helping then),
        whatever its result links' own expiry."""
        with self._lock:
            completed_at = task.completed_at
        return completed_at is None or self._clock() - completed_at <= self.config.kept_s

    def _result_link(self, task: Task, index: int) -> str:
        expired = self._faults.for_file(task.number, index) is FileFault.EXPIRED
        ttl_s = -EXPIRED_LINK_AGE_S if expired else self.config.url_ttl_s
        return self.links.link(FileRef(task.task_id, index, task.kind.ext), ttl_s=ttl_s)

    # --- result files -----------------------------------------------------------------

    def open_file(self, ref: FileRef, *, expires: str, signature: str) -> FileAnswer:
        """A request for a result file: its link check, whether the media is still kept, the
        fault to inject, and the bytes. It counts as a download only once the HTTP layer sent
        them all (:meth:`sent_whole`)."""
        check = self.links.check(ref, expires=expires, signature=signature)
        if check is LinkCheck.BAD_SIGNATURE:
            return FileAnswer(check)
        with self._lock:
            task = self._tasks.get(ref.task_id)
        if task is not None and not self._kept(task):
            # Gone whatever the link's expiry, as download-url says: a link refreshed near the end
            # of the media's life outlives it, and a result link's expiry (rounded up to a whole
            # second) may come a moment after it.
            return FileAnswer(check, kept=False)
        if check is not LinkCheck.VALID:
            return FileAnswer(check)
        # A valid link of a task this process never saw (a restart) still serves its bytes.
        fault = FileFault.NONE if task is None else self._faults.on_request(task.number, ref.index)
        data = self._files.get(ref.task_id, ref.index, ref.ext)
        return FileAnswer(check, fault, data, KINDS[ref.ext].content_type, requested_at=self._clock())

    def sent_whole(self, ref: FileRef, *, requested_at: float) -> None:
        """Record a download of result file ``ref``: its last byte was sent (the client's side
        acknowledged it), for the request that came at ``requested_at`` (Unix seconds, ``clock``).
        A download broken off midway, or cut short by the truncation fault, never gets here."""
        with self._served_changed:
            self._served.setdefault((ref.task_id, ref.index), []).append(requested_at)
            self._served_changed.notify_all()

    def result_files(self, task_ids: Collection[str]) -> set[tuple[str, int]]:
        """(taskId, index) of every result file of those of ``task_ids`` that succeeded."""
        with self._lock:
            tasks = [self._tasks[task_id] for task_id in task_ids if task_id in self._tasks]
            return {(task.task_id, index) for task in tasks for index in range(len(task.result_urls))}

    def wait_served(self, files: set[tuple[str, int]], timeout_s: float) -> set[tuple[str, int]]:
        """Those of ``files`` sent whole (to the last byte) at least once, waiting up to
        ``timeout_s`` seconds for all of them to be."""
        with self._served_changed:
            self._served_changed.wait_for(lambda: files <= self._served.keys(), max(0.0, timeout_s))
            return files & self._served.keys()

    def whole_serves(self) -> dict[tuple[str, int], list[float]]:
        """When each result file was sent whole (to the last byte), by (taskId, index): the
        request times (Unix seconds, ``clock``), oldest first, one per download."""
        with self._lock:
            return {file: list(times) for file, times in self._served.items()}

    def expected_file(self, task_id: str, index: int) -> bytes:
        """The bytes of result ``index`` of ``task_id``, as served."""
        with self._lock:
            task = self._tasks.get(task_id)
        ext = "png" if task is None else task.kind.ext
        return self._files.get(task_id, index, ext)

    def tasks(self) -> list[Task]:
        with self._lock:
            return list(self._tasks.values())
