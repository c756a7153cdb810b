"""Run callables later on a bounded pool: one timer thread and a heap, not a sleeping thread
per task, so ten thousand pending callbacks cost ten thousand heap entries."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger(__name__)


class Scheduler:
    """``call_later(delay_s, job)`` runs ``job`` on one of ``threads`` pool threads once
    ``delay_s`` seconds have passed (``clock`` is monotonic seconds)."""

    def __init__(
        self, *, threads: int, clock: Callable[[], float] = time.monotonic, name: str = "simulator"
    ) -> None:
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()  # ties run in scheduling order, jobs are never compared
        self._running = 0
        self._stopped = False
        self._changed = threading.Condition()
        self._timer = threading.Thread(target=self._dispatch, name=f"{name}-timer", daemon=True)
        self._timer.start()

    def call_later(self, delay_s: float, job: Callable[[], None]) -> None:
        with self._changed:
            if self._stopped:
                return
            heapq.heappush(self._heap, (self._clock() + max(0.0, delay_s), next(self._order), job))
            self._changed.notify_all()

    def idle(self) -> bool:
        """Nothing is due later and nothing is running."""
        with self._changed:
            return not self._heap and self._running == 0

    def pending(self) -> int:
        """How many jobs are not handed to the pool yet: not due, or due and not yet taken by the
        timer thread."""
        with self._changed:
            return len(self._heap)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until :meth:`idle`; False when ``timeout_s`` seconds passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._heap and self._running == 0, timeout_s)

    def stop(self) -> None:
        """Drop what is not yet due and what is due but not started; let running jobs finish in
        the background."""
        with self._changed:
            self._stopped = True
            self._heap.clear()
            self._changed.notify_all()
        self._timer.join(timeout=5.0)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _dispatch(self) -> None:
        with self._changed:
            while not self._stopped:
                if not self._heap:
                    self._changed.wait()
                    continue
                due = self._heap[0][0] - self._clock()
                if due > 0:
                    self._changed.wait(due)
                    continue
                _, _, job = heapq.heappop(self._heap)
                self._running += 1
                # Counted down when done, and also when stop() cancels it before it ran.
                self._pool.submit(self._run, job).add_done_callback(self._finished)

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except Exception:
            log.exception("scheduled job failed")

    def _finished(self, _future: Future[None]) -> None:
        with self._changed:
            self._running -= 1
            self._changed.notify_all()
