"""What the real-process tests share: callbacks in the provider's format, polling, reading the bucket."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import orjson
from minio import Minio
from minio.error import S3Error

from shared.callback import CALLBACK_PATH

PROMPT = '{"prompt":"a beautiful landscape","model":"midjourney"}'

T = TypeVar("T")


def callback(task_id: str, urls: list[str], *, code: int = 200, prompt: str = PROMPT) -> dict[str, Any]:
    """A callback body in the provider's exact format."""
    return {
        "code": code,
        "msg": "success" if code == 200 else "Midjourney generation failed",
        "data": {"taskId": task_id, "promptJson": prompt, "resultUrls": urls},
    }


def nested_prompt_json(depth: int, *, prompt: str = "a fox") -> str:
    """A ``promptJson`` object with a ``prompt`` that nests exactly ``depth`` levels (at least 2:
    the object, then a list nesting the rest)."""
    nest: list[Any] = []
    for _ in range(depth - 2):
        nest = [nest]
    return orjson.dumps({"prompt": prompt, "nest": nest}).decode()


def post_callback(http: httpx.Client, body: dict[str, Any] | bytes) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return http.post(CALLBACK_PATH, content=content, headers={"Content-Type": "application/json"})


def wait_for(check: Callable[[], T | None], *, timeout_s: float = 60.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s} s")
        time.sleep(0.2)


def object_bytes(s3: Minio, bucket: str, key: str) -> bytes | None:
    try:
        response = s3.get_object(bucket, key)
    except S3Error:
        return None
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def read_manifest(s3: Minio, bucket: str, task_id: str) -> dict[str, Any] | None:
    body = object_bytes(s3, bucket, f"tasks/{task_id}/manifest.json")
    return None if body is None else orjson.loads(body)  # type: ignore[no-any-return]


def queued_callback(task_id: str, **changes: Any) -> dict[str, Any]:
    """A callback as the ingress queues it (``Callback.to_message``), with ``changes`` applied."""
    body = {
        "taskId": task_id,
        "code": 200,
        "msg": "success",
        "promptJson": None,
        "resultUrls": [],
        "receivedAt": "2026-11-25T00:00:00.000Z",
    }
    return {**body, **changes}
