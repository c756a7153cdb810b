"""The provider's callback: parsed and checked once at the ingress, carried through the
queue as a plain dict, and rebuilt in the worker by the same code."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from shared.errors import InvalidCallback
from shared.json_limits import DEFAULT_MAX_JSON_DEPTH, check_depth, document_depth
from shared.settings import QUEUED_MAX_RESULT_URLS, QUEUED_MAX_URL_LENGTH, Settings

#: A taskId becomes part of object keys (``tasks/{taskId}/...``) and Redis keys, so it is held
#: to letters, digits, ``_`` and ``-``: no ``/``, no ``.``, no control characters.
TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")

#: Where the ingress takes the provider's callbacks (the ``callBackUrl`` path; see the contract).
CALLBACK_PATH = "/callbacks/midjourney"

#: The provider's ``code`` for a finished generation; anything else is a failure.
CODE_SUCCESS = 200


@dataclass(frozen=True, slots=True)
class CallbackLimits:
    """What the ingress accepts in one callback."""

    max_result_urls: int = 16
    max_url_length: int = 4096
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
    max_prompt_json_bytes: int = 64 * 1024


def callback_limits(settings: Settings) -> CallbackLimits:
    """The ingress's limits on one callback, from settings."""
    return CallbackLimits(
        max_result_urls=settings.max_result_urls,
        max_url_length=settings.max_url_length,
        max_json_depth=settings.max_json_depth,
        max_prompt_json_bytes=settings.max_prompt_json_bytes,
    )


#: A queued callback passed the ingress's (configurable) limits already; the worker re-checks
#: its shape and taskId, not the sizes, so raising a limit never strands queued messages.
_QUEUE_LIMITS = CallbackLimits(
    max_result_urls=QUEUED_MAX_RESULT_URLS,
    max_url_length=QUEUED_MAX_URL_LENGTH,
    max_json_depth=1000,
    max_prompt_json_bytes=1 << 30,
)


@dataclass(frozen=True, slots=True)
class Callback:
    """One delivery of the provider's result for ``task_id``."""

    task_id: str
    code: int
    msg: str
    #: The raw ``promptJson`` string (it may hold malformed JSON), or None when absent.
    prompt_json: str | None
    result_urls: tuple[str, ...]
    #: When the ingress accepted it, ISO 8601 UTC.
    received_at: str

    @property
    def succeeded(self) -> bool:
        return self.code == CODE_SUCCESS

    def to_message(self) -> dict[str, Any]:
        """The JSON-safe form carried in the queue message."""
        return {
            "taskId": self.task_id,
            "code": self.code,
            "msg": self.msg,
            "promptJson": self.prompt_json,
            "resultUrls": list(self.result_urls),
            "receivedAt": self.received_at,
        }

    @classmethod
    def from_message(cls, data: dict[str, Any]) -> Callback:
        """Rebuild from :meth:`to_message` output, checking it again (queues can be written by others)."""
        return _from_fields(data, data.get("taskId"), _QUEUE_LIMITS)


def check_result_urls(urls: Sequence[str], limits: CallbackLimits) -> None:
    """:class:`InvalidCallback` when ``urls`` are more, or one of them longer, than ``limits``
    allow: a callback's, or those the provider lists for a task."""
    if len(urls) > limits.max_result_urls:
        raise InvalidCallback(f"'data.resultUrls' has more than {limits.max_result_urls} entries")
    if any(len(url) > limits.max_url_length for url in urls):
        raise InvalidCallback(f"a result URL is longer than {limits.max_url_length} characters")


#: The provider's ``callBackUrl`` key, matched loosely (any case, ``_`` between the words, as
#: its ``taskId``/``task_id`` go): a key missed leaks the callback token, one too many is harmless.
_CALLBACK_URL_KEY = r"call_?back_?url"
_CALLBACK_URL_KEY_PATTERN = re.compile(_CALLBACK_URL_KEY, re.IGNORECASE)
#: A ``callBackUrl``'s value in text that may be JSON or not, after the key (its opening quote,
#: if any, left out of the match, so that a run of backslashes is not scanned from each of its
#: characters): the key's closing quote (``"`` or ``'``, escaped ``\"`` too), ``:`` or ``=``, then
#: a value quoted like that up to its closing quote (or the end, in text cut short), or a bare
#: one up to a space, ``,``, ``}``, ``]``, a quote or a backslash. Quotes escaped up to 15
#: backslashes deep (4 levels of JSON in JSON strings) are known: each one is compared at every
#: character of the value, so they are kept short.
_CALLBACK_URL_MEMBER = re.compile(
    rf"""(?P<key>{_CALLBACK_URL_KEY}(?:\\*["'])?\s*[:=]\s*)"""
    r"""(?:(?P<quote>\\{0,15}["']).*?(?:(?<!\\)(?P=quote)|\Z)|[^\s,}\]"'\\]*)""",
    re.IGNORECASE | re.DOTALL,
)


def parse_callback(body: bytes, *, received_at: str, limits: CallbackLimits) -> Callback:
    """Parse a callback body in the provider's format; raise :class:`InvalidCallback` saying what
    is wrong. Accepts ``data.taskId`` or ``data.task_id``."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidCallback(f"body is not valid JSON: {exc.msg}") from None
    check_depth(document, limits.max_json_depth)
    if not isinstance(document, dict):
        raise InvalidCallback("body must be a JSON object")
    data = document.get("data")
    if not isinstance(data, dict):
        raise InvalidCallback("'data' must be an object")
    task_id = data.get("taskId", data.get("task_id"))
    fields = {
        "code": document.get("code"),
        "msg": document.get("msg"),
        "promptJson": data.get("promptJson"),
        "resultUrls": data.get("resultUrls"),
        "receivedAt": received_at,
    }
    return _from_fields(fields, task_id, limits)


def _from_fields(fields: dict[str, Any], task_id: Any, limits: CallbackLimits) -> Callback:
    if not isinstance(task_id, str) or not TASK_ID_PATTERN.fullmatch(task_id):
        raise InvalidCallback(
            "'data.taskId' must be 1-128 letters, digits, '_' or '-', starting with a letter or digit"
        )
    code = fields.get("code")
    if not isinstance(code, int) or isinstance(code, bool):
        raise InvalidCallback("'code' must be an integer")
    msg = fields.get("msg")
    if msg is None:
        msg = ""
    if not isinstance(msg, str):
        raise InvalidCallback("'msg' must be a string")
    prompt_json = fields.get("promptJson")
    if prompt_json is not None and not isinstance(prompt_json, str):
        raise InvalidCallback("'data.promptJson' must be a string")
    if prompt_json is not None and len(prompt_json.encode()) > limits.max_prompt_json_bytes:
        raise InvalidCallback(f"'data.promptJson' is longer than {limits.max_prompt_json_bytes} bytes")
    urls = fields.get("resultUrls")
    if urls is None:
        urls = []
    if not isinstance(urls, list) or not all(isinstance(url, str) for url in urls):
        raise InvalidCallback("'data.resultUrls' must be a list of strings")
    check_result_urls(urls, limits)
    return Callback(
        task_id=task_id,
        code=code,
        msg=msg,
        prompt_json=prompt_json,
        result_urls=tuple(urls),
        received_at=str(fields.get("receivedAt") or ""),
    )


def without_callback_url(prompt_json: str | None) -> str | None:
    """``promptJson`` without its ``callBackUrl``: the provider echoes the request's parameters,
    and the callback URL ``mjhook submit`` sends carries ``MJHOOK_CALLBACK_TOKEN``, which must not
    land in the manifest (anyone reading the task could forge callbacks).

    In JSON mjhook can read and write again, a ``callBackUrl`` member is dropped from every
    object at any depth, and every string (keys too) is scrubbed the same way, as JSON text if it
    is some (a ``promptJson`` kept as a JSON string, say); the rest keeps its shape, and the text
    is kept as it came when nothing was taken out. Any other text (malformed, as the provider's
    docs warn, or nested past orjson's or Python's limits) keeps its shape, the value of any
    ``callBackUrl`` in it emptied: quoted or not, after ``:`` or ``=``, or cut short. The key is
    matched in any case, with or without ``_`` between its words."""
    return None if prompt_json is None else _text_without_callback_urls(prompt_json)


def _text_without_callback_urls(text: str) -> str:
    if "\\" not in text and not _CALLBACK_URL_KEY_PATTERN.search(text):
        return text  # no key, nor an escape that could spell one once the text is read as JSON
    try:
        document = orjson.loads(text)
        scrubbed = _document_without_callback_urls(document)
        if scrubbed == document:
            return text
        return orjson.dumps(scrubbed).decode()
    except (orjson.JSONDecodeError, orjson.JSONEncodeError, RecursionError):
        return _CALLBACK_URL_MEMBER.sub(lambda match: match["key"] + (match["quote"] or "") * 2, text)


def _document_without_callback_urls(document: Any) -> Any:
    """Parsed JSON without a ``callBackUrl`` member in any object, its strings scrubbed.
    Recursive: a document nested past Python's limit raises :class:`RecursionError` (orjson
    reads 1024 levels, though it writes far fewer)."""
    if isinstance(document, str):
        return _text_without_callback_urls(document)
    if isinstance(document, list):
        return [_document_without_callback_urls(item) for item in document]
    if isinstance(document, dict):
        return {
            _text_without_callback_urls(key): _document_without_callback_urls(value)
            for key, value in document.items()
            if not _CALLBACK_URL_KEY_PATTERN.fullmatch(key)
        }
    return document


def parse_prompt(
    prompt_json: str | None, *, max_depth: int = DEFAULT_MAX_JSON_DEPTH
) -> tuple[dict[str, Any] | None, str | None]:
    """``promptJson`` as (params, prompt): the parsed object and its ``prompt`` string, or None for
    each when it is absent, malformed or nested deeper than ``max_depth`` (the raw string is kept
    elsewhere)."""
    if prompt_json is None:
        return None, None
    try:
        params = orjson.loads(prompt_json)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(params, dict) or document_depth(params) > max_depth:
        return None, None
    prompt = params.get("prompt")
    return params, prompt if isinstance(prompt, str) else None
