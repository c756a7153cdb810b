"""The seed of every generated result file: the same (taskId, index) always gives the same bytes."""

from __future__ import annotations

import random


def file_rng(task_id: str, index: int) -> random.Random:
    """The random source of result ``index`` of ``task_id``."""
    # A str seed is hashed with SHA-512 by random.Random: stable across runs and processes.
    return random.Random(f"file:{task_id}:{index}")
