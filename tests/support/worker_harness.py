"""The pipeline's test harness: the parts a worker process builds, against a test's own Redis,
SeaweedFS and file server (the ``harness`` fixture, tests/workers/conftest.py), and the callbacks
it processes."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from shared.callback import Callback
from shared.metrics import WorkerMetrics
from shared.settings import Settings
from shared.storage import ObjectStore
from shared.taskstate import TaskState, TaskStore
from tests.support.servers import FileServer

PROMPT = '{"prompt":"a beautiful landscape","model":"midjourney"}'


@dataclass
class Harness:
    parts: object
    tasks: TaskStore
    store: ObjectStore
    files: FileServer
    redis: redis.Redis
    #: What the processor counts.
    metrics: WorkerMetrics
    settings: Settings

    def process(self, callback: Callback, *, final_attempt: bool = False) -> TaskState:
        return self.parts.processor.process(callback, final_attempt=final_attempt)  # type: ignore[attr-defined]

    def manifest(self, task_id: str) -> dict[str, object]:
        return self.store.get_json(f"tasks/{task_id}/manifest.json")  # type: ignore[no-any-return]

    def object_bytes(self, key: str) -> bytes | None:
        return self.store.get_bytes(key)


def callback(urls: list[str], *, task_id: str = "task-1", code: int = 200, prompt: str = PROMPT) -> Callback:
    return Callback(
        task_id=task_id,
        code=code,
        msg="success" if code == 200 else "generation failed",
        prompt_json=prompt,
        result_urls=tuple(urls),
        received_at="2026-11-25T00:00:00.000Z",
    )
