"""The manifest: written last, its presence means a task is complete."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from shared.callback import Callback, parse_prompt, without_callback_url
from shared.clock import iso_seconds
from shared.taskstate import TaskState


@dataclass(frozen=True, slots=True)
class ImageEntry:
    index: int
    sourceUrl: str
    key: str
    size: int
    sha256: str
    contentType: str


@dataclass(frozen=True, slots=True)
class FileError:
    index: int | None
    sourceUrl: str | None
    reason: str


def outcome(callback: Callback, images: list[ImageEntry], errors: list[FileError]) -> TaskState:
    """stored when every file is stored, partial when some are, failed otherwise."""
    if not callback.succeeded or not images:
        return TaskState.FAILED
    return TaskState.PARTIAL if errors else TaskState.STORED


def newest_received_at(received_at: str, earlier: Mapping[str, Any] | None) -> str:
    """The ``receivedAt`` of a task's new manifest: its callback's ``received_at``, or the
    ``earlier`` manifest's when that one is later (or ours is no time: a callback kept by an older
    version without one). A task's manifest never goes back in time: an older delivery
    processed after a newer one (a retry of the first callback of a partial task, due after its
    duplicate was processed) answers for both."""
    theirs = str(earlier.get("receivedAt", "")) if earlier is not None else ""
    ours_s, theirs_s = iso_seconds(received_at), iso_seconds(theirs)
    if theirs_s is not None and (ours_s is None or theirs_s > ours_s):
        return theirs
    return received_at


#: A URL's scheme and authority up to its userinfo's "@" (the last one before the path).
_USERINFO = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.\-]*:)?//)[^/?#]*@")


def without_credentials(url: str) -> str:
    """``url`` with any user name and password in it replaced by ``***``: a result URL carrying
    them is refused, and its refusal in the manifest must not hand them to whoever reads it."""
    return _USERINFO.sub(r"\1***@", url, count=1)


def build_manifest(
    callback: Callback,
    *,
    status: TaskState,
    images: list[ImageEntry],
    errors: list[FileError],
    completed_at: str,
    max_json_depth: int,
) -> dict[str, Any]:
    """The manifest's fields. Source URLs are kept without credentials (:func:`without_credentials`).
    ``promptJson`` is kept raw but for any ``callBackUrl`` in it
    (removed, or its value emptied: it carries the callback token, see
    :func:`~shared.callback.without_callback_url`); it is parsed into ``params`` and ``prompt``
    only when it nests at most ``max_json_depth`` levels (``MJHOOK_MAX_JSON_DEPTH``), else both
    are None. The workers pass the setting (``workers.runtime.build_parts`` builds the processor
    from it); the processor's own default, 32, serves tests and scripts."""
    prompt_json = without_callback_url(callback.prompt_json)
    images = [replace(image, sourceUrl=without_credentials(image.sourceUrl)) for image in images]
    errors = [
        replace(error, sourceUrl=None if error.sourceUrl is None else without_credentials(error.sourceUrl))
        for error in errors
    ]
    params, prompt = parse_prompt(prompt_json, max_depth=max_json_depth)
    return {
        "taskId": callback.task_id,
        "status": status.value,
        "code": callback.code,
        "msg": callback.msg,
        "promptJson": prompt_json,
        "params": params,
        "prompt": prompt,
        "images": [asdict(image) for image in sorted(images, key=lambda i: i.index)],
        "errors": [asdict(error) for error in errors],
        "receivedAt": callback.received_at,
        "completedAt": completed_at,
    }
