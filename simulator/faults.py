"""Which tasks and files misbehave, decided by seeded randomness so runs are reproducible.

Each decision draws from its own ``random.Random`` seeded by (seed, task number[, file index]):
the faults of task number 7 are the same in every run with the same seed, whatever order
tasks are submitted or files requested in.
"""

from __future__ import annotations

import enum
import random
import threading
from collections import Counter
from dataclasses import dataclass

from simulator.config import FaultConfig


class FileFault(enum.Enum):
    NONE = "none"
    #: 503 on the first ``file_fault_repeats`` requests.
    ERROR = "error"
    #: The body trickles out over ``file_slow_delay_s`` seconds.
    SLOW = "slow"
    #: Content-Length says more than is sent, on the first ``file_fault_repeats`` requests.
    TRUNCATED = "truncated"
    #: The URL is issued already expired.
    EXPIRED = "expired"


#: Faults that stop after ``file_fault_repeats`` requests of the file.
TRANSIENT_FILE_FAULTS = frozenset({FileFault.ERROR, FileFault.TRUNCATED})


@dataclass(frozen=True, slots=True)
class TaskFaults:
    """What happens to one task's result and callback."""

    fails: bool = False
    duplicate: bool = False
    drop: bool = False
    #: 0.0-1.0: the share of the configured generation jitter this task waits.
    jitter: float = 0.0
    #: The callback spells the id ``task_id`` instead of ``taskId``.
    task_id_spelling: bool = False
    #: The callback's ``promptJson`` is not valid JSON.
    malformed_prompt: bool = False
    #: A failed task's record says successFlag 3 (created but generation failed), not 2.
    failed_after_creation: bool = False


class FaultPlan:
    """Fault decisions for task numbers and file indexes, plus the per-file request counts
    that end transient faults."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._requests: Counter[tuple[int, int]] = Counter()
        self._lock = threading.Lock()

    def for_task(self, number: int) -> TaskFaults:
        rng = random.Random(f"task:{self.config.seed}:{number}")
        # Always seven draws in this order, so changing one share leaves the other decisions be;
        # the last three came later, drawn after the first four so those stay what they were.
        fails, duplicate, drop, jitter, spelling, malformed, after_creation = (rng.random() for _ in range(7))
        failed = fails < self.config.failure_share
        return TaskFaults(
            fails=failed,
            duplicate=duplicate < self.config.duplicate_share,
            drop=drop < self.config.drop_share,
            jitter=jitter,
            task_id_spelling=spelling < self.config.task_id_spelling_share,
            malformed_prompt=malformed < self.config.malformed_prompt_share,
            failed_after_creation=failed and after_creation < self.config.failed_after_creation_share,
        )

    def for_file(self, number: int, index: int) -> FileFault:
        """The file's fault (the file faults exclude each other)."""
        draw = random.Random(f"file:{self.config.seed}:{number}:{index}").random()
        bounds = (
            (self.config.file_error_share, FileFault.ERROR),
            (self.config.file_slow_share, FileFault.SLOW),
            (self.config.file_truncated_share, FileFault.TRUNCATED),
            (self.config.file_expired_share, FileFault.EXPIRED),
        )
        for share, fault in bounds:
            if draw < share:
                return fault
            draw -= share
        return FileFault.NONE

    def on_request(self, number: int, index: int) -> FileFault:
        """The fault that applies to this request of the file: transient ones only to the
        first ``file_fault_repeats`` requests; an expired URL is the link's business."""
        fault = self.for_file(number, index)
        if fault in TRANSIENT_FILE_FAULTS:
            with self._lock:
                self._requests[number, index] += 1
                if self._requests[number, index] > self.config.file_fault_repeats:
                    return FileFault.NONE
        return FileFault.NONE if fault is FileFault.EXPIRED else fault
