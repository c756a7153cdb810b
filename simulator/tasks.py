"""The simulated provider's task records and the task types it knows."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from simulator.faults import TaskFaults
from simulator.files import MP4, PNG, FileKind

#: Task types of ``/api/v1/mj/generate`` that yield a grid of four images.
IMAGE_TASK_TYPES = frozenset({"mj_txt2img", "mj_img2img", "mj_style_reference", "mj_omni_reference"})
#: Task types of ``/api/v1/mj/generate`` that yield videos (four, as a Midjourney video job makes).
VIDEO_TASK_TYPES = frozenset({"mj_video", "mj_video_hd"})
#: Task types that start from the caller's images (``fileUrls``).
REFERENCE_TASK_TYPES = frozenset({"mj_img2img", "mj_style_reference", "mj_omni_reference"}) | VIDEO_TASK_TYPES
GENERATE_TASK_TYPES = IMAGE_TASK_TYPES | VIDEO_TASK_TYPES
#: Task types of ``generateUpscale`` and ``generateVary``: one image each.
UPSCALE_TASK_TYPE = "mj_upscale"
VARY_TASK_TYPE = "mj_vary"
IMAGES_PER_GRID = 4
VIDEOS_PER_JOB = 4


class SuccessFlag(enum.IntEnum):
    """``successFlag`` of task details."""

    GENERATING = 0
    SUCCESS = 1
    FAILED = 2
    #: Created, but generation failed upstream: the simulator's failed tasks picked by
    #: ``failed_after_creation_share`` (the others say FAILED).
    CREATE_FAILED = 3


def result_shape(task_type: str) -> tuple[int, FileKind]:
    """How many result files a task type yields, and of which kind."""
    if task_type in VIDEO_TASK_TYPES:
        return VIDEOS_PER_JOB, MP4
    if task_type in IMAGE_TASK_TYPES:
        return IMAGES_PER_GRID, PNG
    return 1, PNG


def provider_time(timestamp: float) -> str:
    """Unix seconds in the provider's task-details format, e.g. ``2024-03-20T10:30:00Z``."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class Task:
    """One generation. Fields after ``faults`` change once, when the task completes."""

    task_id: str
    #: The order of submission (0-based): what fault decisions are keyed on.
    number: int
    task_type: str
    #: The request as submitted, as JSON (``paramJson`` of task details).
    param_json: str
    #: The ``promptJson`` string of the callback.
    prompt_json: str
    callback_url: str
    created_at: float
    faults: TaskFaults
    success_flag: SuccessFlag = SuccessFlag.GENERATING
    completed_at: float | None = None
    result_urls: list[str] = field(default_factory=list)
    error_code: int | None = None
    error_message: str | None = None
    #: Set once the task completed and its callbacks (none, one, or with a duplicate) were queued.
    callbacks_queued: bool = False

    @property
    def result_count(self) -> int:
        return result_shape(self.task_type)[0]

    @property
    def kind(self) -> FileKind:
        return result_shape(self.task_type)[1]

    def details(self) -> dict[str, Any]:
        """The ``data`` of ``record-info``; result URLs are objects there, not strings."""
        return {
            "taskId": self.task_id,
            "taskType": self.task_type,
            "paramJson": self.param_json,
            "completeTime": None if self.completed_at is None else provider_time(self.completed_at),
            "resultInfoJson": {"resultUrls": [{"resultUrl": url} for url in self.result_urls]},
            "successFlag": int(self.success_flag),
            "createTime": provider_time(self.created_at),
            "errorCode": self.error_code,
            "errorMessage": self.error_message,
        }
