"""A clock for tests: seconds that move only when told, or slept."""

from __future__ import annotations


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        """A sleep that returns at once, the clock moved on by ``seconds``."""
        self.now += seconds
