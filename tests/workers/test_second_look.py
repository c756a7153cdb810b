"""Give-ups waiting for a second look in Redis (workers/second_look.py), against a real Redis."""

from __future__ import annotations

import logging

import orjson
import pytest
import redis

from shared import keys
from shared.callback import Callback
from tests.support.clock import FakeClock
from workers.second_look import PendingGiveUps, SecondLook, SecondLookSweeper


def callback(task_id: str) -> Callback:
    return Callback(task_id, 200, "success", None, (), "2026-11-25T00:00:00.000Z")


def test_a_second_look_is_due_after_its_delay_and_again_when_its_taker_never_finished(
    client: redis.Redis,
) -> None:
    clock = FakeClock()
    pending = PendingGiveUps(client, after_s=10, clock=clock)
    pending.add(callback("t-1"), "gave up: TaskBusy")

    clock.now += 9
    assert pending.take_due(hold_s=5) == []
    clock.now += 1
    [look] = pending.take_due(hold_s=5)
    assert (look.callback, look.reason) == (callback("t-1"), "gave up: TaskBusy")
    # Taken: not due for anybody else while its taker works on it ...
    assert pending.take_due(hold_s=5) == []
    # ... and due again once the hold is over, its taker gone without saying it was done
    clock.now += 5
    [again] = pending.take_due(hold_s=5)
    pending.done(again.member)
    clock.now += 100
    assert pending.take_due(hold_s=5) == []


def test_a_sweep_keeps_a_look_redis_refused_to_record_and_drops_an_unreadable_one(
    client: redis.Redis,
) -> None:
    clock = FakeClock()
    pending = PendingGiveUps(client, after_s=0, clock=clock)
    pending.add(callback("refused"), "r")
    pending.add(callback("recorded"), "r")
    client.zadd(keys.GIVE_UPS_PENDING, {b"not json": 0})
    seen: list[str] = []

    def look(second: SecondLook) -> bool:
        seen.append(second.callback.task_id)
        return second.callback.task_id == "recorded"

    sweeper = SecondLookSweeper(pending, look, interval_s=60, hold_s=1)
    assert sweeper.sweep() == 1

    assert sorted(seen) == ["recorded", "refused"]
    members = client.zrange(keys.GIVE_UPS_PENDING, 0, -1)
    assert len(members) == 1
    assert b"refused" in members[0]


def test_a_look_is_removed_by_what_it_was_added_with_and_a_polled_one_is_its_own(
    client: redis.Redis,
) -> None:
    """A give-up records its second look before it moves the task, and removes it once nothing
    is left to do: by the same callback and reason (and whether the polling fallback gave it up),
    leaving every other look alone."""
    clock = FakeClock()
    pending = PendingGiveUps(client, after_s=0, clock=clock)
    pending.add(callback("t-1"), "gave up: StorageUnavailable")
    pending.add(callback("t-1"), "gave up: StorageUnavailable", polled=True)
    pending.add(callback("t-2"), "gave up: StorageUnavailable")

    pending.remove(callback("t-1"), "gave up: StorageUnavailable")

    looks = pending.take_due(hold_s=5)
    assert sorted((look.callback.task_id, look.polled) for look in looks) == [("t-1", True), ("t-2", False)]
    for look in looks:
        pending.remove(look.callback, look.reason, polled=look.polled)
    assert client.zcard(keys.GIVE_UPS_PENDING) == 0


def test_an_unreadable_look_is_logged_without_the_callback_token(
    client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a pending look another version wrote (a code no int), whose callback's promptJson
    echoes the callback URL with our token
    When it is taken
    Then it is dropped, and the log line naming it holds no token"""
    prompt = orjson.dumps({"prompt": "a cat", "callBackUrl": "https://me/cb?token=tok-s3cret"}).decode()
    written = {"taskId": "t-1", "code": "200", "msg": "success", "promptJson": prompt}
    entry = {"callback": written, "reason": "r"}
    client.zadd(keys.GIVE_UPS_PENDING, {orjson.dumps(entry): 0})
    pending = PendingGiveUps(client, after_s=0, clock=FakeClock())
    with caplog.at_level(logging.ERROR, logger="workers.second_look"):
        assert pending.take_due(hold_s=5) == []
    assert client.zcard(keys.GIVE_UPS_PENDING) == 0
    [line] = [r.getMessage() for r in caplog.records if "unreadable pending give-up" in r.getMessage()]
    assert "t-1" in line
    assert "tok-s3cret" not in line
