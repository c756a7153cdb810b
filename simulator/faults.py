"""Which tasks and files misbehave, decided by seeded randomness so runs are reproducible.

Each decision draws from its own ``random.Random`` seeded by (seed, task number[, file index]):
the faults of task number 7 are the same in every run with the same seed, whatever order
tasks are submitted or files requested in. API errors are drawn by (seed, submit call number):
the run's n-th submit call gets the same answer in every run with the same seed.
"""

from __future__ import annotations

import enum
import itertools
import random
import threading
from collections import Counter
from dataclasses import dataclass

from simulator.config import FaultConfig
from simulator.errors import CODE_FEATURE_DISABLED, CODE_GENERATION_FAILED, CODE_SERVER_ERROR


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
#: The body codes an API-error fault answers a submit call with, one drawn evenly per fault.
API_ERROR_CODES = (CODE_SERVER_ERROR, CODE_GENERATION_FAILED, CODE_FEATURE_DISABLED)


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
    that end transient faults and the count of submit calls that numbers them."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._requests: Counter[tuple[int, int]] = Counter()
        self._submit_calls = itertools.count()
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

    def for_submit_call(self, number: int) -> int | None:
        """The body code submit call ``number`` (0 first) is answered with in place of a task, one
        of :data:`API_ERROR_CODES`, or None when it goes through."""
        rng = random.Random(f"submit:{self.config.seed}:{number}")
        # Always both draws, so that the share changes which calls fail, not their codes.
        draw, which = rng.random(), rng.randrange(len(API_ERROR_CODES))
        return API_ERROR_CODES[which] if draw < self.config.api_error_share else None

    def on_submit_call(self) -> int | None:
        """Number this submit call (the next of the run) and return its injected body code, or
        None (:meth:`for_submit_call`)."""
        with self._lock:
            number = next(self._submit_calls)
        return self.for_submit_call(number)
