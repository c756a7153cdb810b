"""A daemon thread that does one step of work every few seconds, whatever a step meets.

The ingress drains its spool this way, and each worker process beats its broker heartbeat, takes
due second looks and checks the poll schedule: each is the only thread doing that work in its
process, so an error in one step (Redis away, or anything unforeseen) must not end it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

log = logging.getLogger(__name__)

#: What a step meets when Redis or the disk is away: one log line, no traceback.
OUTAGES = (redis.RedisError, OSError)


class PeriodicThread:
    """Runs ``step`` in a daemon thread named ``name``: at once when started (``first_at_once``)
    or after ``interval_s`` seconds, and then every ``interval_s`` seconds until :meth:`stop`, or
    until a step returns False. What a step raises is logged (``what`` names the step: an outage
    in one line, anything else with its traceback) and the next step comes all the same."""

    def __init__(
        self,
        step: Callable[[], object],
        *,
        interval_s: float,
        name: str,
        what: str,
        first_at_once: bool = False,
    ) -> None:
        self._step = step
        self._interval_s = interval_s
        self._name = name
        self._what = what
        self._first_at_once = first_at_once
        self._starting = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread; one running goes on as it is. Started again after :meth:`stop` (an
        ASGI app served through a second lifespan), a new thread takes over."""
        with self._starting:
            if self._thread is not None and self._thread.is_alive() and not self._stop.is_set():
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(self._stop,), name=self._name, daemon=True
            )
            self._thread.start()

    def stop(self, *, wait: bool = True) -> None:
        """No step after the one running now (if any); ``wait``: until it is over."""
        with self._starting:
            self._stop.set()
            thread = self._thread
        if wait and thread is not None:
            thread.join(timeout=self._interval_s + 5)

    @property
    def running(self) -> bool:
        """Whether a thread runs and was not told to stop."""
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def _run(self, stop: threading.Event) -> None:
        if not self._first_at_once and stop.wait(self._interval_s):
            return
        while True:
            try:
                if self._step() is False:
                    return
            except OUTAGES as exc:
                log.warning("%s failed: %s: %s", self._what, type(exc).__name__, exc)
            except Exception:
                log.exception("%s failed", self._what)
            if stop.wait(self._interval_s):
                return
