"""Give-ups waiting for a second look, kept in Redis.

When the queue gives up on a message of a task some worker's lease holds, the task is left to that
holder. If the lease was a stale one (its worker could not release it), nobody would ever settle
the task, so it is looked at again once any such lease must have lapsed. That second look is kept
in Redis, not in the memory of the worker that gave up: any worker takes it when it is due, and a
worker stopping meanwhile loses none (one taken and not finished is due again later)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import orjson
import redis

from shared import keys
from shared.callback import Callback, without_callback_url
from shared.errors import MjhookError
from shared.periodic import PeriodicThread
from workers.retries import refuses_writes

log = logging.getLogger(__name__)

#: Second looks one sweep takes at most; the rest wait for the next sweep.
DEFAULT_TAKE = 100


@dataclass(frozen=True, slots=True)
class SecondLook:
    #: The member as stored: what :meth:`PendingGiveUps.done` removes.
    member: bytes
    callback: Callback
    reason: str
    #: The polling fallback's give-up of a task still ``submitted``: the look ends the task as
    #: the poll decided (``submitted`` to ``failed``) where a queue's give-up leaves it alone.
    polled: bool = False


class PendingGiveUps:
    """The second looks waiting in Redis, each due ``after_s`` seconds after it was added (the
    runtime's: once any lease a task may be held by has lapsed). ``clock`` returns Unix seconds."""

    def __init__(
        self, client: redis.Redis, *, after_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._client = client
        self._after_s = after_s
        self._clock = clock
        source = resources.files("shared").joinpath("lua", "take_due.lua").read_text()
        self._take_due = client.register_script(source)

    def add(self, callback: Callback, reason: str, *, polled: bool = False) -> None:
        """Look at ``callback``'s task again when it is due, to record ``reason`` (``polled``: a
        give-up of the polling fallback, :attr:`SecondLook.polled`). Adding it again only moves
        the moment it is due."""
        self._client.zadd(keys.GIVE_UPS_PENDING, dict([self.entry(callback, reason, polled=polled)]))

    def entry(self, callback: Callback, reason: str, *, polled: bool = False) -> tuple[bytes, int]:
        """The look :meth:`add` records, as (member, due time in Unix ms), for a caller that
        records it in a transaction of its own (:meth:`TaskStore.give_up`)."""
        return _member(callback, reason, polled), self._due_ms(self._after_s)

    def add_if_possible(self, callback: Callback, reason: str, *, polled: bool = False) -> bool:
        """:meth:`add`, or False (logged) when Redis will never take it (the key of the pending
        looks holds another type): the give-up goes on without its look. Redis refusing writes
        for now, and any other Redis error, raise."""
        try:
            self.add(callback, reason, polled=polled)
        except redis.ResponseError as exc:
            if refuses_writes(exc):
                raise
            log.error("task %s: no second look can be recorded: %s", callback.task_id, exc)
            return False
        return True

    def remove(self, callback: Callback, reason: str, *, polled: bool = False) -> None:
        """Drop the look :meth:`add` recorded with these arguments (nothing left to do)."""
        self.done(_member(callback, reason, polled))

    def take_due(self, *, hold_s: float, limit: int = DEFAULT_TAKE) -> list[SecondLook]:
        """The second looks due now, taken for ``hold_s`` seconds: due again then unless
        :meth:`done` removed them. An unreadable member is dropped."""
        now_ms = self._due_ms(0)
        taken = self._take_due(keys=[keys.GIVE_UPS_PENDING], args=[now_ms, self._due_ms(hold_s), limit])
        looks = []
        for member in taken:
            try:
                entry = orjson.loads(member)
                callback = Callback.from_message(entry["callback"])
                looks.append(SecondLook(member, callback, str(entry["reason"]), entry.get("polled") is True))
            except (orjson.JSONDecodeError, MjhookError, KeyError, TypeError, AttributeError):
                # Without its callBackUrl, as the spool's torn lines: the token the provider echoes.
                text = without_callback_url(member.decode("utf-8", "replace"))
                log.error("dropping an unreadable pending give-up: %r", text)
                self.done(member)
        return looks

    def done(self, member: bytes) -> None:
        self._client.zrem(keys.GIVE_UPS_PENDING, member)

    def _due_ms(self, after_s: float) -> int:
        return int((self._clock() + after_s) * 1000)


def _member(callback: Callback, reason: str, polled: bool) -> bytes:
    """A look as stored: the same bytes for the same arguments (one member per look). A queue's
    give-up is stored as before ``polled`` existed (a member an earlier version added is the same)."""
    entry: dict[str, object] = {"callback": callback.to_message(), "reason": reason}
    if polled:
        entry["polled"] = True
    return orjson.dumps(entry)


class SecondLookSweeper:
    """Every ``interval_s`` seconds, in a daemon thread, hands each due second look to ``look``,
    which returns True once the look is recorded (False: Redis refused it, take it again later)."""

    def __init__(
        self,
        pending: PendingGiveUps,
        look: Callable[[SecondLook], bool],
        *,
        interval_s: float,
        hold_s: float,
    ) -> None:
        self._pending = pending
        self._look = look
        self._hold_s = hold_s
        self._thread = PeriodicThread(
            self.sweep, interval_s=interval_s, name="second-looks", what="taking the pending give-ups"
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._thread.stop()

    def sweep(self) -> int:
        """Look at every due second look now; returns how many were recorded."""
        recorded = 0
        for look in self._pending.take_due(hold_s=self._hold_s):
            if self._look(look):
                self._pending.done(look.member)
                recorded += 1
        return recorded
