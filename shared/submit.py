"""Submitting tasks to the provider with our callback URL, and recording each as ``submitted`` so
the polling fallback can fetch its result when no callback comes. Used by ``mjhook submit`` and
by programs (:func:`submit_task`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson
import redis

from shared.callback import CALLBACK_PATH, TASK_ID_PATTERN
from shared.errors import ConfigError
from shared.printable import printable, shortened
from shared.provider import ProviderClient, create_provider_client
from shared.redis_client import connect_redis
from shared.settings import Settings
from shared.submitted import SubmittedTasks
from shared.taskstate import TaskStore

log = logging.getLogger(__name__)

#: Characters logged of a taskId the provider answered that mjhook cannot use (not bounded).
MAX_LOGGED_TASK_ID_CHARS = 200


def callback_url(settings: Settings) -> str:
    """``MJHOOK_PUBLIC_URL`` + the callback path, with ``?token=`` the first of
    ``MJHOOK_CALLBACK_TOKEN`` when set. A :class:`ConfigError` without a public URL."""
    base = settings.public_url.strip().rstrip("/")
    if not base.lower().startswith(("http://", "https://")):
        raise ConfigError(
            "MJHOOK_PUBLIC_URL must be the http(s) base URL the provider can reach the ingress at"
        )
    url = base + CALLBACK_PATH
    if settings.callback_tokens:
        url += "?token=" + quote(settings.callback_tokens[0], safe="")
    return url


@dataclass(frozen=True, slots=True)
class Submission:
    """A task the provider accepted."""

    task_id: str
    task_type: str
    #: What was asked for (without the callback URL, which may carry our token).
    params: dict[str, Any]
    #: Why it is not recorded in Redis (so nothing polls for it), or "" when it is.
    not_recorded: str = ""


class TaskSubmitter:
    """Submits through ``provider`` with ``callback_url`` and records each accepted task."""

    def __init__(self, *, provider: ProviderClient, submitted: SubmittedTasks, callback_url: str) -> None:
        self._provider = provider
        self._submitted = submitted
        self._callback_url = callback_url

    def generate(
        self,
        prompt: str,
        *,
        task_type: str = "mj_txt2img",
        aspect_ratio: str | None = None,
        version: str | None = None,
        speed: str | None = None,
        file_urls: Sequence[str] = (),
    ) -> Submission:
        """Submit a generation; raise :class:`~shared.errors.ProviderError` when refused."""
        task_id = self._provider.generate(
            prompt,
            task_type,
            aspect_ratio,
            version,
            speed,
            callback_url=self._callback_url,
            file_urls=file_urls,
        )
        params = {
            "prompt": prompt,
            "aspectRatio": aspect_ratio,
            "version": version,
            "speed": speed,
            "fileUrls": list(file_urls) or None,
        }
        return self._record(task_id, task_type, params)

    def upscale(self, task_id: str, index: int) -> Submission:
        """Upscale image ``index`` (0-3) of ``task_id``, a new task."""
        new_id = self._provider.upscale(task_id, index, self._callback_url)
        return self._record(new_id, "mj_upscale", {"taskId": task_id, "imageIndex": index})

    def vary(self, task_id: str, index: int) -> Submission:
        """A variation of image ``index`` (0-3) of ``task_id``, a new task."""
        new_id = self._provider.vary(task_id, index, self._callback_url)
        return self._record(new_id, "mj_vary", {"taskId": task_id, "imageIndex": index})

    def _record(self, task_id: str, task_type: str, params: dict[str, Any]) -> Submission:
        """The provider accepted the task: whatever happens now, its taskId is returned."""
        params = {name: value for name, value in params.items() if value is not None}
        if not TASK_ID_PATTERN.fullmatch(task_id):
            reason = "the provider's taskId is not one mjhook can use as a key"
        else:
            try:
                self._submitted.record(
                    task_id, {"taskType": task_type, "params": orjson.dumps(params).decode()}
                )
                return Submission(task_id, task_type, params)
            except (redis.RedisError, OSError) as exc:
                reason = f"Redis unavailable: {type(exc).__name__}: {exc}"
        log.warning(
            "task %s submitted but not recorded (%s): nothing will poll for it",
            printable(shortened(task_id, MAX_LOGGED_TASK_ID_CHARS)),
            reason,
        )
        return Submission(task_id, task_type, params, not_recorded=reason)


@contextmanager
def open_submitter(settings: Settings, **provider_options: Any) -> Iterator[TaskSubmitter]:
    """A submitter from settings, for the ``with`` block, once Redis answered (so no credit is
    spent on a task that could not be recorded). Raises :class:`~shared.errors.ConfigError` (no
    API key or public URL) or ``redis.RedisError``. ``provider_options`` go to the client."""
    url = callback_url(settings)
    provider = create_provider_client(settings, **provider_options)
    client = connect_redis(settings.redis_url)
    try:
        client.ping()
        tasks = TaskStore(client, ttl_s=settings.task_ttl_s)
        submitted = SubmittedTasks(client, tasks, ttl_s=settings.task_ttl_s)
        yield TaskSubmitter(provider=provider, submitted=submitted, callback_url=url)
    finally:
        provider.close()
        client.close()


def submit_task(
    settings: Settings,
    prompt: str,
    *,
    task_type: str = "mj_txt2img",
    aspect_ratio: str | None = None,
    version: str | None = None,
    speed: str | None = None,
    file_urls: Sequence[str] = (),
) -> str:
    """Submit one generation with mjhook's callback URL, record it as ``submitted`` and return
    its taskId; its files then land in the bucket like any callback's, by callback or polling.
    Raises :class:`~shared.errors.ConfigError` (no API key or public URL),
    :class:`~shared.errors.ProviderRefused`, :class:`~shared.errors.ProviderUnavailable` (still
    after retries) or ``redis.RedisError`` (nothing submitted). A task submitted but not recorded
    (Redis failed just then) is logged and its taskId returned."""
    with open_submitter(settings) as submitter:
        return submitter.generate(
            prompt,
            task_type=task_type,
            aspect_ratio=aspect_ratio,
            version=version,
            speed=speed,
            file_urls=file_urls,
        ).task_id
