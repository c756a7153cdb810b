"""The ingress's group commit: concurrent acknowledgements share Redis round trips, and each
request still learns the fate of its own callback."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest
import redis

from ingress.group_commit import GroupCommit
from shared.redis_client import connect_redis
from shared.taskstate import Received, TaskState, TaskStore
from tests.ingress.test_callbacks import make_app, post, queued_messages, success
from tests.support.servers import RedisServer


class SlowFlush:
    """A flush that takes a while (as a Redis round trip does) and records every round."""

    def __init__(self, *, fail_on: str = "", delay_s: float = 0.02) -> None:
        self.rounds: list[list[str]] = []
        self.fail_on = fail_on
        self._delay = threading.Event()
        self._delay_s = delay_s

    def __call__(self, items: list[str]) -> list[str | Exception]:
        self.rounds.append(list(items))
        self._delay.wait(self._delay_s)
        return [ValueError(item) if item == self.fail_on else item.upper() for item in items]


def submit_all(group: GroupCommit[str, str], items: list[str]) -> list[str | Exception]:
    def one(item: str) -> str | Exception:
        try:
            return group.submit(item)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        return list(pool.map(one, items))


def test_a_lone_call_is_flushed_at_once_by_its_own_thread() -> None:
    flush = SlowFlush(delay_s=0)
    group: GroupCommit[str, str] = GroupCommit(flush)
    assert group.submit("a") == "A"
    assert group.submit("b") == "B"
    assert flush.rounds == [["a"], ["b"]]


def test_concurrent_calls_share_rounds_and_each_gets_its_own_outcome() -> None:
    flush = SlowFlush(fail_on="item-7")
    group: GroupCommit[str, str] = GroupCommit(flush)
    items = [f"item-{n}" for n in range(32)]
    outcomes = submit_all(group, items)
    for item, outcome in zip(items, outcomes, strict=True):
        if item == "item-7":
            assert isinstance(outcome, ValueError)
            assert str(outcome) == "item-7"
        else:
            assert outcome == item.upper()
    flushed = [item for round_ in flush.rounds for item in round_]
    assert sorted(flushed) == sorted(items)  # each item flushed exactly once
    # 32 threads arriving while a 20 ms round runs: far fewer rounds than items.
    assert len(flush.rounds) < len(items)
    assert max(len(round_) for round_ in flush.rounds) > 1


def test_a_round_never_holds_more_than_max_batch() -> None:
    flush = SlowFlush()
    group: GroupCommit[str, str] = GroupCommit(flush, max_batch=3)
    items = [f"i{n}" for n in range(20)]
    assert submit_all(group, items) == [item.upper() for item in items]
    assert max(len(round_) for round_ in flush.rounds) <= 3


def test_a_failed_round_fails_each_of_its_calls_and_the_next_round_still_runs() -> None:
    calls = 0

    def flaky(items: list[str]) -> list[str | Exception]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("redis went away")
        return [item.upper() for item in items]

    group: GroupCommit[str, str] = GroupCommit(flaky)
    with pytest.raises(ConnectionError):
        group.submit("first")
    assert group.submit("second") == "SECOND"


def test_a_flush_returning_the_wrong_number_of_outcomes_fails_the_round() -> None:
    group: GroupCommit[str, str] = GroupCommit(lambda items: [])
    with pytest.raises(RuntimeError, match="0 outcomes for 1 items"):
        group.submit("x")


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError):
        GroupCommit(SlowFlush(), max_batch=0)


def test_mark_received_many_records_and_queues_each_task_once(client: redis.Redis) -> None:
    tasks = TaskStore(client, ttl_s=3600)
    connection = client.connection_pool.get_connection()
    try:
        results = tasks.mark_received_many(
            [Received("t1", "now"), Received("t2", "now"), Received("t1", "again")], connection=connection
        )
    finally:
        client.connection_pool.release(connection)
    assert results == [None, None, TaskState.RECEIVED]
    record = tasks.get("t1")
    assert record is not None
    assert record.fields["receivedAt"] == "now"


def test_mark_received_many_reloads_a_script_redis_forgot(client: redis.Redis) -> None:
    tasks = TaskStore(client, ttl_s=3600)
    client.script_flush()
    connection = client.connection_pool.get_connection()
    try:
        assert tasks.mark_received_many([Received("t1", "now")], connection=connection) == [None]
        client.script_flush()
        assert tasks.mark_received_many([Received("t2", "now")], connection=connection) == [None]
    finally:
        client.connection_pool.release(connection)
    assert tasks.get("t1") is not None
    assert tasks.get("t2") is not None


def test_concurrent_acks_are_each_recorded_and_queued_once(client: redis.Redis) -> None:
    """64 callbacks from 16 threads through the real app and a real Redis: each is acknowledged,
    recorded and queued exactly once, in one script call each, whichever rounds they shared."""
    app = make_app(client)
    post(app, orjson.dumps(success("warm-up")))
    task_ids = [f"conc-{n}" for n in range(64)]

    client.config_resetstat()

    def ack(task_id: str) -> int:
        return post(app, orjson.dumps(success(task_id))).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        assert list(pool.map(ack, task_ids)) == [200] * 64
    assert client.info("commandstats")["cmdstat_evalsha"]["calls"] == 64
    queued = [message["args"][0]["taskId"] for message in queued_messages(client)]  # type: ignore[index]
    assert sorted(queued) == sorted(["warm-up", *task_ids])
    tasks = TaskStore(client, ttl_s=3600)
    assert all(tasks.get(task_id) is not None for task_id in task_ids)


def test_a_script_flush_between_acks_loses_nothing(client: redis.Redis) -> None:
    app = make_app(client)
    assert post(app, orjson.dumps(success("before"))).status_code == 200
    client.script_flush()
    assert post(app, orjson.dumps(success("after"))).status_code == 200
    queued = [message["args"][0]["taskId"] for message in queued_messages(client)]  # type: ignore[index]
    assert queued == ["before", "after"]


def test_a_redis_restart_between_acks_costs_no_detour(aof_redis_server: RedisServer, tmp_path: Path) -> None:
    """The connection the acks hold breaks when Redis restarts: the next ack opens it again and is
    queued in Redis, not spooled and not refused (as the client's own commands retry)."""
    spool_dir = tmp_path / "spool"
    client = connect_redis(aof_redis_server.url)
    app = make_app(client, spool_dir=str(spool_dir))
    assert post(app, orjson.dumps(success("before"))).status_code == 200
    aof_redis_server.stop()
    aof_redis_server.start()
    assert post(app, orjson.dumps(success("after"))).status_code == 200
    queued = [message["args"][0]["taskId"] for message in queued_messages(client)]  # type: ignore[index]
    assert queued == ["before", "after"]
    assert not any(path.stat().st_size for path in spool_dir.glob("*"))


def test_an_interrupted_round_still_answers_its_waiters_and_hands_on_the_lead() -> None:
    """A BaseException in the leading thread (KeyboardInterrupt, SystemExit) is raised there; the
    threads of that round get an error instead of waiting forever, and the next round runs."""
    release = threading.Event()
    rounds: list[list[str]] = []

    def flush(items: list[str]) -> list[str | Exception]:
        rounds.append(list(items))
        if len(rounds) == 1:
            release.wait(5)  # round 1 holds on while "second" and "third" queue up behind it
        if len(rounds) == 2:
            raise KeyboardInterrupt
        return [item.upper() for item in items]

    group: GroupCommit[str, str] = GroupCommit(flush)
    outcomes: dict[str, object] = {}

    def submit(item: str) -> None:
        try:
            outcomes[item] = group.submit(item)
        except BaseException as exc:
            outcomes[item] = exc

    threads = [threading.Thread(target=submit, args=(item,)) for item in ("first", "second", "third")]
    threads[0].start()
    while not rounds:
        time.sleep(0.005)
    threads[1].start()
    threads[2].start()
    while len(group._waiting) < 2:  # both queued behind round 1
        time.sleep(0.005)
    release.set()
    for thread in threads:
        thread.join(5)
    assert rounds == [["first"], ["second", "third"]]
    assert outcomes["first"] == "FIRST"
    assert isinstance(outcomes["second"], KeyboardInterrupt)  # raised in the thread that led
    assert isinstance(outcomes["third"], RuntimeError)
    assert "interrupted" in str(outcomes["third"])
    assert group.submit("fourth") == "FOURTH"  # the lead was handed on
