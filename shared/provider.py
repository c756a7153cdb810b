"""A client of the provider's API (kie.ai's Midjourney API): submit tasks, read a task's details,
get a fresh download link for a result file.

Every answer is ``{"code", "msg", "data"}``; a body ``code`` other than 200 becomes a
:class:`~shared.errors.ProviderRefused` (fix the request) or, for 429, 455 and 5xx, a
:class:`~shared.errors.ProviderUnavailable` once the client's own retries (exponential backoff,
honouring ``Retry-After``) are used up. An answer that cannot be read (too large, not in that
shape, a success without its details) is a :class:`~shared.errors.ProviderUnavailable` too."""

from __future__ import annotations

import email.utils
import enum
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx
import orjson

from shared.errors import ConfigError, ProviderError, ProviderRefused, ProviderUnavailable
from shared.json_limits import DEFAULT_MAX_JSON_DEPTH, document_depth, max_nesting
from shared.printable import shortened
from shared.settings import Settings

GENERATE_PATH = "/api/v1/mj/generate"
UPSCALE_PATH = "/api/v1/mj/generateUpscale"
VARY_PATH = "/api/v1/mj/generateVary"
RECORD_INFO_PATH = "/api/v1/mj/record-info"
DOWNLOAD_URL_PATH = "/api/v1/common/download-url"

CODE_OK = 200
#: Body codes worth another try: rate limited, maintenance, server errors.
TRANSIENT_CODES = frozenset({429, 455, 500, 502, 503, 504})
#: 5xx body codes that are final answers: generation failed, feature not available. Only in the
#: provider's own answer: the same HTTP status from a gateway's page says nothing of the task.
PERMANENT_SERVER_CODES = frozenset({501, 505})
#: The provider's body code for "generation failed", which any endpoint may answer: for
#: ``record-info`` the task's final outcome, not a refusal of our account.
GENERATION_FAILED = 501
#: Answers about one task (not the account) saying the provider does not know it.
TASK_UNKNOWN_CODES = frozenset({400, 404, 422})
#: Refusals of mjhook's own account or configuration: bad key (401), no credits (402), no such
#: endpoint (no code). Nothing about a task, and mended by the operator: no task is given up, and
#: no file failed, over them.
OWN_REFUSAL_CODES = frozenset({401, 402, None})
#: What a body code means, for error messages.
CODE_MEANINGS = {
    400: "bad request",
    401: "unauthorized: check MJHOOK_PROVIDER_API_KEY",
    402: "no credits left on the provider account",
    404: "not found",
    422: "request refused as invalid",
    429: "rate limited",
    455: "the provider is under maintenance",
    500: "provider server error",
    501: "generation failed",
    505: "feature not available",
}

#: What an answer's ``msg`` shows in place of our API key, should it quote it.
REDACTED_KEY = "[MJHOOK_PROVIDER_API_KEY]"
#: Shortest key looked for in an answer: a shorter one (a test's "k") matches ordinary words.
MIN_REDACTED_KEY_CHARS = 8

#: Attempts of one request (the first and its retries) while the answer is transient.
DEFAULT_ATTEMPTS = 5
#: Wait before the first retry, seconds; doubled before each further one, up to the cap.
DEFAULT_BACKOFF_S = 1.0
DEFAULT_MAX_BACKOFF_S = 30.0
#: Longest ``Retry-After`` waited for, seconds; asked for longer, the call gives up at once
#: (transient: the caller comes back later) rather than retry before the provider wants it.
MAX_RETRY_AFTER_S = 60.0
#: Longest ``Retry-After`` believed, seconds: one asking for longer (a far-future date, a broken
#: proxy's number) is taken as this, so one answer cannot hold a retry or the polling for years.
MAX_RETRY_AFTER_BELIEVED_S = 3600.0
#: Largest answer read, bytes (decoded): the provider's answers are small JSON. A larger one is
#: not read further and counts as unreadable, so a broken or hostile server cannot fill memory.
MAX_ANSWER_BYTES = 4 * 1024 * 1024
#: Longest ``msg`` or ``errorMessage`` kept of an answer, characters (the rest is cut): they go
#: into exception messages, logs and a manifest's ``msg``.
MAX_MSG_CHARS = 1000
#: Most digits of an integer field (``code``, ``successFlag``, ``errorCode``) written as a string:
#: a longer one is no number (Python refuses int() of over 4300 digits, and is slow before that).
MAX_INTEGER_DIGITS = 18
#: The code a 2xx answer not in the provider's format is given (a proxy's page, a cut-off body).
UNREADABLE = 502


class TaskStatus(enum.StrEnum):
    """Where a task is, from ``successFlag``: 0 generating, 1 success, 2 and 3 failed."""

    GENERATING = "generating"
    SUCCESS = "success"
    FAILED = "failed"


_STATUS_BY_FLAG: dict[int | None, TaskStatus] = {
    0: TaskStatus.GENERATING,
    1: TaskStatus.SUCCESS,
    2: TaskStatus.FAILED,
    3: TaskStatus.FAILED,
}


@dataclass(frozen=True, slots=True)
class TaskRecordInfo:
    """``record-info`` of one task, normalised: the result URLs as strings (the provider nests
    them as ``resultInfoJson.resultUrls[].resultUrl``) and ``paramJson`` as a string."""

    task_id: str
    task_type: str | None
    status: TaskStatus
    #: The provider's raw ``successFlag`` (None when absent or not a number).
    success_flag: int | None
    result_urls: tuple[str, ...]
    error_code: int | None
    error_message: str | None
    #: The request as the provider recorded it, JSON in a string, or None.
    param_json: str | None
    create_time: str | None
    complete_time: str | None

    @property
    def finished(self) -> bool:
        return self.status is not TaskStatus.GENERATING

    @property
    def succeeded(self) -> bool:
        return self.status is TaskStatus.SUCCESS


class ProviderClient:
    """The provider's API at ``base_url`` with ``api_key``, over ``http`` (closed by
    :meth:`close`). ``sleep`` waits between retries, in seconds."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        http: httpx.Client,
        sleep: Callable[[float], None] = time.sleep,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff_s: float = DEFAULT_BACKOFF_S,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._http = http
        self._sleep = sleep
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s

    # --- submitting -------------------------------------------------------------------

    def generate(
        self,
        prompt: str,
        task_type: str = "mj_txt2img",
        aspect_ratio: str | None = None,
        version: str | None = None,
        speed: str | None = None,
        callback_url: str | None = None,
        *,
        file_urls: Sequence[str] = (),
    ) -> str:
        """Submit a generation (``/api/v1/mj/generate``); return its taskId. ``file_urls`` are the
        input images of the reference and video task types."""
        body: dict[str, Any] = {"taskType": task_type, "prompt": prompt}
        optional = {
            "aspectRatio": aspect_ratio,
            "version": version,
            "speed": speed,
            "fileUrls": list(file_urls) or None,
            "callBackUrl": callback_url,
        }
        body.update({name: value for name, value in optional.items() if value is not None})
        return _task_id(self._call("POST", GENERATE_PATH, body=body))

    def upscale(self, task_id: str, index: int, callback_url: str | None = None) -> str:
        """Upscale image ``index`` (0-3) of task ``task_id``; return the new taskId."""
        return self._derive(UPSCALE_PATH, task_id, index, callback_url)

    def vary(self, task_id: str, index: int, callback_url: str | None = None) -> str:
        """A variation of image ``index`` (0-3) of task ``task_id``; return the new taskId."""
        return self._derive(VARY_PATH, task_id, index, callback_url)

    def _derive(self, path: str, task_id: str, index: int, callback_url: str | None) -> str:
        body: dict[str, Any] = {"taskId": task_id, "imageIndex": index}
        if callback_url is not None:
            body["callBackUrl"] = callback_url
        return _task_id(self._call("POST", path, body=body))

    # --- reading ----------------------------------------------------------------------

    def record_info(self, task_id: str) -> TaskRecordInfo:
        """The task's details (``record-info``). An unknown task is a :class:`ProviderRefused`
        with ``code`` 404 (the provider's own answer); a success without the details is a
        :class:`ProviderUnavailable` (unreadable)."""
        data = self._call("GET", RECORD_INFO_PATH, params={"taskId": task_id}, idempotent=True)
        if not isinstance(data, Mapping):
            # No word on the task (the provider says "unknown" with code 404): a cut-off or
            # broken answer, to be asked again. Taken for "unknown", a verified success failed.
            raise ProviderUnavailable(
                f"provider answered record-info of task {task_id} without its details", code=UNREADABLE
            )
        error_message = data.get("errorMessage")
        if isinstance(error_message, str):
            data = {**data, "errorMessage": self._without_key(error_message)}
        return parse_record_info(data, task_id=task_id)

    def download_url(self, url: str) -> str:
        """A fresh download link (valid about 20 minutes) for one of the provider's result URLs."""
        data = self._call("POST", DOWNLOAD_URL_PATH, body={"url": url}, idempotent=True)
        if isinstance(data, Mapping):
            data = data.get("downloadUrl") or data.get("url")
        if not isinstance(data, str) or not data.startswith(("http://", "https://")):
            # A broken answer, as record-info's without details: asked again later (the file
            # recorded as failed for it, a link that comes next time was lost).
            raise ProviderUnavailable("provider answered download-url without a link", code=UNREADABLE)
        return data

    # --- the transport ----------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        idempotent: bool = False,
    ) -> Any:
        """The ``data`` of a successful answer. Transient failures are retried; a request that
        may have reached the provider (a timeout after sending) only when ``idempotent``."""
        url = self._base_url + path
        for attempt in range(1, self._attempts + 1):
            retry_after: float | None = None
            try:
                response, content = self._send(method, url, body, params)
            except httpx.HTTPError as exc:
                error: ProviderError = ProviderUnavailable(
                    f"cannot reach the provider ({method} {path}): {type(exc).__name__}"
                )
                if not _may_retry(exc, idempotent=idempotent):
                    raise error from exc
            else:
                code, msg, data, own = _decode(response, content, without_key=self._without_key)
                if code == CODE_OK:
                    return data
                if not own and response.status_code == 404:
                    # Not the provider saying it does not know a task: no such endpoint there.
                    raise ProviderRefused(
                        f"{method} {path} answered HTTP 404 without the provider's answer:"
                        " no such endpoint (check MJHOOK_PROVIDER_URL)"
                    )
                error = _error(code, msg, path, own=own)
                if not isinstance(error, ProviderUnavailable):
                    raise error
                reached = response.is_success and code == UNREADABLE  # a 2xx: the provider had it
                # A 5xx without the provider's body is a gateway's or a CDN's (502, 504, a CDN's
                # 520 or 524: the origin did not answer in time, or sent nothing usable): the
                # request may have reached the provider all the same.
                gateway = not own and response.status_code >= 500
                if (reached or gateway) and not idempotent:
                    # It may have created the task: not again (a second task, a second credit).
                    raise ProviderUnavailable(
                        f"{error} (the request reached the provider: it may have been taken)",
                        code=code,
                        provider_msg=msg,
                    )
                retry_after = _retry_after(response)
                error.retry_after = retry_after
                if retry_after is not None and retry_after > MAX_RETRY_AFTER_S:
                    raise error  # retrying sooner than the provider asks would only use up the attempts
            if attempt == self._attempts:
                raise error
            self._sleep(self._delay(attempt, retry_after))
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(
        self, method: str, url: str, body: Any, params: Mapping[str, str] | None
    ) -> tuple[httpx.Response, bytes | None]:
        """The answer and its body, streamed: None for a body over :data:`MAX_ANSWER_BYTES`."""
        with self._http.stream(method, url, json=body, params=params, headers=self._headers) as response:
            return response, _read_capped(response)

    def _without_key(self, text: str) -> str:
        """``text`` (an answer's ``msg``, ``errorMessage`` or reason phrase, as decoded, before it
        is cut short) with our API key replaced: a provider (or a proxy) quoting our request back
        puts it there, and those go into errors, logs, a task's reason and a manifest. Only the
        messages: a taskId or a URL of the answer is left as it came."""
        if len(self._api_key) < MIN_REDACTED_KEY_CHARS:
            return text
        return text.replace(self._api_key, REDACTED_KEY)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before retry ``attempt + 1``: the backoff, or the ``Retry-After`` when longer
        (at most MAX_RETRY_AFTER_S: a longer one ends the call); a ``Retry-After`` of 0 or a past
        date does not remove the backoff."""
        backoff = float(min(self._backoff_s * 2 ** (attempt - 1), self._max_backoff_s))
        return backoff if retry_after is None else max(backoff, retry_after)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ProviderClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def create_provider_client(settings: Settings, **options: Any) -> ProviderClient:
    """A client for ``settings.provider_url`` with ``settings.provider_api_key`` (which must be
    set) and ``settings.provider_retries``, with its own connection pool; ``options`` go to
    :class:`ProviderClient`. ``trust_env`` is off: no proxy from the environment decides."""
    if not settings.provider_api_key:
        raise ConfigError("MJHOOK_PROVIDER_API_KEY is not set: the provider's API needs it")
    http = httpx.Client(
        timeout=httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s),
        headers={"User-Agent": "mjhook/0.1 (+provider client)"},
        follow_redirects=False,
        trust_env=False,
    )
    options.setdefault("attempts", settings.provider_retries + 1)
    return ProviderClient(settings.provider_url, settings.provider_api_key, http=http, **options)


def parse_record_info(data: Mapping[str, Any], *, task_id: str) -> TaskRecordInfo:
    """Normalise the ``data`` of ``record-info`` (lenient about what the provider's samples vary
    on: ``resultInfoJson`` as an object or a JSON string, URLs as objects or strings)."""
    success_flag = _int_or_none(data.get("successFlag"))
    return TaskRecordInfo(
        # The id asked about, not the answer's echo of it: that is the one we know the task by.
        task_id=task_id,
        task_type=_str_or_none(data.get("taskType")),
        status=_STATUS_BY_FLAG.get(success_flag, TaskStatus.GENERATING),
        success_flag=success_flag,
        result_urls=_result_urls(data.get("resultInfoJson")),
        error_code=_int_or_none(data.get("errorCode")),
        error_message=_message(data.get("errorMessage")) or None,
        param_json=_param_json(data.get("paramJson")),
        create_time=_str_or_none(data.get("createTime")),
        complete_time=_str_or_none(data.get("completeTime")),
    )


def _param_json(value: Any) -> str | None:
    """``paramJson`` as a JSON string (the provider sends a string or an object); None when absent,
    of another type, or nested deeper than :data:`~shared.json_limits.DEFAULT_MAX_JSON_DEPTH`
    (what a callback's ``promptJson`` needs; orjson cannot write more than 254 levels back)."""
    if isinstance(value, str):
        return value if max_nesting(value) <= DEFAULT_MAX_JSON_DEPTH else None
    if isinstance(value, dict | list) and document_depth(value) <= DEFAULT_MAX_JSON_DEPTH:
        return orjson.dumps(value).decode()
    return None


def _result_urls(result_info: Any) -> tuple[str, ...]:
    if isinstance(result_info, str):
        try:
            result_info = orjson.loads(result_info)
        except orjson.JSONDecodeError:
            return ()
    entries = result_info.get("resultUrls") if isinstance(result_info, Mapping) else None
    if not isinstance(entries, list):
        return ()
    urls = []
    for entry in entries:
        url = entry.get("resultUrl") if isinstance(entry, Mapping) else entry
        if isinstance(url, str) and url:
            urls.append(url)
    return tuple(urls)


def _read_capped(response: httpx.Response) -> bytes | None:
    """The body of ``response``, or None once it grows past :data:`MAX_ANSWER_BYTES` (the rest is
    not read)."""
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            return None
    return bytes(body)


def _decode(
    response: httpx.Response, body: bytes | None, *, without_key: Callable[[str], str]
) -> tuple[int, str, Any, bool]:
    """(code, msg, data, own): the body's, or the HTTP status's when the body is not the
    provider's (or was too large: None); ``own`` says which. The msg is given to ``without_key``
    before it is cut short."""
    try:
        document = orjson.loads(body) if body is not None else None
    except orjson.JSONDecodeError:
        document = None
    code = _int_or_none(document.get("code")) if isinstance(document, dict) else None
    if isinstance(document, dict) and code is not None:
        if code == CODE_OK and not response.is_success:
            code = response.status_code
        msg = document.get("msg")
        msg = _message(without_key(msg) if isinstance(msg, str) else msg) or ""
        return code, msg, document.get("data"), True
    if response.is_success:
        # Not the provider's answer shape (a proxy's page?): worth another try, if idempotent.
        why = "" if body is not None else f": larger than {MAX_ANSWER_BYTES} bytes"
        return UNREADABLE, "unreadable answer" + why, None, False
    return response.status_code, shortened(without_key(response.reason_phrase), MAX_MSG_CHARS), None, False


def _error(code: int, msg: str, path: str, *, own: bool = True) -> ProviderError:
    """The error of an answer with ``code``; ``own``: in the provider's answer shape (else an
    HTTP status, a gateway's or a proxy's page: a 501 there is no failed generation)."""
    meaning = CODE_MEANINGS.get(code, "error")
    text = f"provider answered {code} ({meaning}) to {path}" + (f": {msg}" if msg else "")
    final = code in PERMANENT_SERVER_CODES and own
    if code in TRANSIENT_CODES or (code >= 500 and not final):
        return ProviderUnavailable(text, code=code, provider_msg=msg)
    return ProviderRefused(text, code=code, provider_msg=msg)


def _may_retry(exc: httpx.HTTPError, *, idempotent: bool) -> bool:
    """A request that failed in transport may be sent again when it is idempotent, or when it
    never reached the provider (no connection), so it cannot have created a task."""
    if not isinstance(exc, httpx.TransportError):
        return False
    return idempotent or isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (delay-seconds, or an HTTP date: a past one is 0), at most
    :data:`MAX_RETRY_AFTER_BELIEVED_S`; None when absent or unreadable (negative, ``inf``,
    ``1e9``, no date)."""
    value = response.headers.get("retry-after", "").strip()
    seconds = float(value) if _DELAY_SECONDS.fullmatch(value) else _seconds_until(value)
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(seconds, MAX_RETRY_AFTER_BELIEVED_S)


def _seconds_until(date: str) -> float | None:
    """Seconds from now to HTTP date ``date`` (0 when past), or None when it is no date."""
    try:
        return max(0.0, email.utils.parsedate_to_datetime(date).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _task_id(data: Any) -> str:
    task_id = data.get("taskId") if isinstance(data, Mapping) else None
    if not isinstance(task_id, str) or not task_id:
        raise ProviderError("provider accepted the task but answered without a taskId")
    return task_id


#: An integer as a provider may spell one in a string: ASCII digits, maybe a minus sign.
_INTEGER = re.compile(rf"-?[0-9]{{1,{MAX_INTEGER_DIGITS}}}")
#: ``Retry-After`` as delay-seconds: digits (RFC 9110), a fraction tolerated; no sign, no exponent.
_DELAY_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    digits = value.strip() if isinstance(value, str) else ""
    # int() of the stripped text: str.strip() takes off more than int() would (U+001C-U+001F)
    return int(digits) if _INTEGER.fullmatch(digits) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _message(value: Any) -> str | None:
    """A ``msg`` or ``errorMessage`` cut to :data:`MAX_MSG_CHARS`, or None when not a string."""
    return shortened(value, MAX_MSG_CHARS) if isinstance(value, str) else None
