"""Checks of API request bodies, in the provider's terms: 400 when something required is
missing or the body is not an object, 422 when a value is not acceptable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from simulator.errors import CODE_BAD_REQUEST, CODE_VALIDATION, ProviderError
from simulator.tasks import GENERATE_TASK_TYPES, IMAGES_PER_GRID, REFERENCE_TASK_TYPES

MAX_PROMPT_CHARS = 2000
#: The ``speed`` values the provider documents, spelled exactly so. Of the other optional fields
#: (``aspectRatio``, ``version``, ``stylization``, ``weirdness``, ``variety``) the provider facts
#: we build against list no values, so the simulator takes them as sent.
SPEEDS = frozenset({"relaxed", "fast", "turbo"})
#: Request fields echoed in the callback's ``promptJson``.
PROMPT_FIELDS = ("taskType", "aspectRatio", "version", "speed", "stylization", "weirdness", "variety")


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    task_type: str
    prompt: str
    callback_url: str
    #: The whole request body, as sent.
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DeriveRequest:
    """An upscale or vary of image ``image_index`` of task ``task_id``."""

    task_id: str
    image_index: int
    callback_url: str
    params: dict[str, Any]


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ProviderError(CODE_BAD_REQUEST, "The request body must be a JSON object")
    return body


def _callback_url(body: dict[str, Any]) -> str:
    """The optional ``callBackUrl``: empty, or an http(s) URL with a host (and a valid port) that
    a callback can be sent to."""
    url = body.get("callBackUrl") or ""
    if not isinstance(url, str) or (url and not deliverable_url(url)):
        raise ProviderError(CODE_VALIDATION, "callBackUrl must be an http or https URL with a host")
    return url


def deliverable_url(url: str) -> bool:
    """Whether ``url`` is an http(s) URL with a host and a valid port: one a callback can be sent to."""
    try:
        parts = urlsplit(url)
        host, _port = parts.hostname, parts.port  # .port raises ValueError too: out of range, not a number
        httpx.URL(url).host  # noqa: B018 - an xn-- label that does not decode (as the sender will)
        (host or "").encode("idna")  # as getaddrinfo will: UnicodeError for a label over 63 characters
    except (ValueError, httpx.InvalidURL):  # "http://[::1", "host:99999", "host:abc", "xn--a.com"
        return False
    return parts.scheme in ("http", "https") and bool(host)


def parse_generate(body: Any) -> GenerateRequest:
    body = _object(body)
    task_type = body.get("taskType")
    if task_type is None:
        raise ProviderError(CODE_BAD_REQUEST, "taskType is required")
    if not isinstance(task_type, str) or task_type not in GENERATE_TASK_TYPES:
        raise ProviderError(
            CODE_VALIDATION, f"taskType must be one of {', '.join(sorted(GENERATE_TASK_TYPES))}"
        )
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ProviderError(CODE_BAD_REQUEST, "prompt is required")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ProviderError(CODE_VALIDATION, f"prompt is longer than {MAX_PROMPT_CHARS} characters")
    speed = body.get("speed")
    if speed is not None and (not isinstance(speed, str) or speed not in SPEEDS):
        raise ProviderError(CODE_VALIDATION, "speed must be relaxed, fast or turbo")
    if task_type in REFERENCE_TASK_TYPES and not _has_file_urls(body):
        raise ProviderError(CODE_VALIDATION, f"fileUrls is required for {task_type}")
    return GenerateRequest(task_type=task_type, prompt=prompt, callback_url=_callback_url(body), params=body)


def _has_file_urls(body: dict[str, Any]) -> bool:
    urls = body.get("fileUrls")
    if isinstance(urls, list) and urls and all(isinstance(url, str) and url for url in urls):
        return True
    single = body.get("fileUrl")
    return isinstance(single, str) and bool(single)


def parse_derive(body: Any) -> DeriveRequest:
    body = _object(body)
    task_id = body.get("taskId")
    if not isinstance(task_id, str) or not task_id:
        raise ProviderError(CODE_BAD_REQUEST, "taskId is required")
    index = body.get("imageIndex")
    if index is None:
        raise ProviderError(CODE_BAD_REQUEST, "imageIndex is required")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < IMAGES_PER_GRID:
        raise ProviderError(CODE_VALIDATION, f"imageIndex must be 0-{IMAGES_PER_GRID - 1}")
    return DeriveRequest(task_id=task_id, image_index=index, callback_url=_callback_url(body), params=body)


def parse_download_url(body: Any) -> str:
    url = _object(body).get("url")
    if not isinstance(url, str) or not url:
        raise ProviderError(CODE_BAD_REQUEST, "url is required")
    return url
