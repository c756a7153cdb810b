"""Who may call the API or submit a task right now: the provider's rate limit (429) and credits
(402)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from simulator.errors import CODE_NO_CREDITS, CODE_RATE_LIMITED, ProviderError


class Admission:
    """At most ``rate_limit`` API calls per sliding ``window_s`` seconds (0: no limit; every
    endpoint may answer 429, as the provider's do), each submission costing one of ``credits``
    (None: unlimited). ``clock`` is monotonic seconds."""

    def __init__(
        self,
        *,
        rate_limit: int,
        window_s: float,
        credits: int | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate_limit = rate_limit
        self._window_s = window_s
        self._credits = credits
        self._clock = clock
        self._recent: deque[float] = deque()
        self._rate_limited = 0
        self._lock = threading.Lock()

    def limit_rate(self) -> None:
        """Take one slot of the rate limit for an API call, or raise the provider's 429."""
        with self._lock:
            now = self._clock()
            while self._recent and self._recent[0] <= now - self._window_s:
                self._recent.popleft()
            if self._rate_limit and len(self._recent) >= self._rate_limit:
                self._rate_limited += 1
                raise ProviderError(CODE_RATE_LIMITED, "Rate limited: too many requests, try again later")
            self._recent.append(now)

    def admit(self) -> None:
        """Take one credit for a submission, or raise the provider's 402."""
        with self._lock:
            if self._credits is not None:
                if self._credits <= 0:
                    raise ProviderError(CODE_NO_CREDITS, "The current credits are insufficient")
                self._credits -= 1

    @property
    def rate_limited(self) -> int:
        """How many API calls were answered 429 so far."""
        with self._lock:
            return self._rate_limited

    @property
    def credits(self) -> int | None:
        with self._lock:
            return self._credits
