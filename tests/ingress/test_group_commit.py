"""The ingress's group commit: concurrent acknowledgements share Redis round trips, and each
request still learns the fate of its own callback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
import redis
from falcon import testing
from redis.asyncio.connection import AbstractConnection

from ingress.group_commit import GroupCommit
from shared import keys
from shared.redis_client import connect_redis
from shared.taskstate import Received, TaskState, TaskStore
from tests.ingress.test_callbacks import QUEUE_KEY, make_app, post, queued_messages, success
from tests.support.acks import with_ack_connection
from tests.support.servers import RedisServer


class SlowFlush:
    """A flush that takes a while (as a Redis round trip does) and records every round."""

    def __init__(self, *, fail_on: str = "", delay_s: float = 0.02) -> None:
        self.rounds: list[list[str]] = []
        self.fail_on = fail_on
        self._delay_s = delay_s

    async def __call__(self, items: list[str]) -> list[str | Exception]:
        self.rounds.append(list(items))
        await asyncio.sleep(self._delay_s)
        return [ValueError(item) if item == self.fail_on else item.upper() for item in items]


def submit_all(group: GroupCommit[str, str], items: list[str]) -> list[str | BaseException]:
    """Submit every item at once, as concurrent requests of one event loop do."""

    async def run() -> list[str | BaseException]:
        return await asyncio.gather(*(group.submit(item) for item in items), return_exceptions=True)

    return asyncio.run(run())


def submit_one(group: GroupCommit[str, str], item: str) -> str:
    return asyncio.run(group.submit(item))


def test_a_lone_call_is_flushed_at_once() -> None:
    flush = SlowFlush(delay_s=0)

    async def run() -> list[str]:
        group: GroupCommit[str, str] = GroupCommit(flush)
        return [await group.submit("a"), await group.submit("b")]

    assert asyncio.run(run()) == ["A", "B"]
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
    # 32 requests arriving together: far fewer rounds than items.
    assert len(flush.rounds) < len(items)
    assert max(len(round_) for round_ in flush.rounds) > 1


def test_items_arriving_during_a_round_go_in_the_next_one() -> None:
    flush = SlowFlush()

    async def run() -> list[str]:
        group: GroupCommit[str, str] = GroupCommit(flush)
        first = asyncio.create_task(group.submit("first"))
        await asyncio.sleep(0.005)  # round 1 ("first") is under way
        later = [asyncio.create_task(group.submit(item)) for item in ("second", "third")]
        return await asyncio.gather(first, *later)

    assert asyncio.run(run()) == ["FIRST", "SECOND", "THIRD"]
    assert flush.rounds == [["first"], ["second", "third"]]


def test_a_round_never_holds_more_than_max_batch() -> None:
    flush = SlowFlush()
    group: GroupCommit[str, str] = GroupCommit(flush, max_batch=3)
    items = [f"i{n}" for n in range(20)]
    assert submit_all(group, items) == [item.upper() for item in items]
    assert max(len(round_) for round_ in flush.rounds) <= 3


def test_a_failed_round_fails_each_of_its_calls_and_the_next_round_still_runs() -> None:
    calls = 0

    async def flaky(items: list[str]) -> list[str | Exception]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("redis went away")
        return [item.upper() for item in items]

    group: GroupCommit[str, str] = GroupCommit(flaky)
    first, second = submit_all(group, ["first", "second"])
    assert isinstance(first, ConnectionError)
    assert isinstance(second, ConnectionError)  # same round
    assert submit_one(group, "third") == "THIRD"


def test_items_waiting_behind_a_failed_round_fail_with_it_instead_of_one_timeout_each() -> None:
    """A hung Redis: the round times out; the requests queued behind it get the same error at
    once (each then spools or answers 503) rather than a timeout of their own in turn; the next
    request tries again."""
    calls: list[list[str]] = []
    stuck = asyncio.Event()

    async def scenario() -> tuple[list[str | BaseException], str]:
        async def flush(items: list[str]) -> list[str | Exception]:
            calls.append(list(items))
            if len(calls) == 1:
                stuck.set()
                await asyncio.sleep(0.05)  # the socket timeout
                raise TimeoutError("Redis did not answer")
            return [item.upper() for item in items]

        group: GroupCommit[str, str] = GroupCommit(flush)
        first = asyncio.create_task(group.submit("first"))
        await stuck.wait()
        behind = [asyncio.create_task(group.submit(f"behind-{n}")) for n in range(3)]
        outcomes = await asyncio.gather(first, *behind, return_exceptions=True)
        return outcomes, await group.submit("later")

    outcomes, later = asyncio.run(scenario())
    assert all(isinstance(outcome, TimeoutError) for outcome in outcomes)
    assert calls == [["first"], ["later"]]  # the 3 behind never cost a round of their own
    assert later == "LATER"


def test_a_flush_returning_the_wrong_number_of_outcomes_fails_the_round() -> None:
    async def nothing(items: list[str]) -> list[str | Exception]:
        return []

    group: GroupCommit[str, str] = GroupCommit(nothing)
    with pytest.raises(RuntimeError, match="0 outcomes for 1 items"):
        submit_one(group, "x")


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError):
        GroupCommit(SlowFlush(), max_batch=0)


def test_a_cancelled_request_does_not_cancel_its_round() -> None:
    """A client that goes away cancels its request; the other requests of the round still get
    their outcomes and the item is still written (the ack's write is not undone)."""
    flush = SlowFlush(delay_s=0.05)

    async def run() -> tuple[bool, str]:
        group: GroupCommit[str, str] = GroupCommit(flush)
        gone = asyncio.create_task(group.submit("gone"))
        stays = asyncio.create_task(group.submit("stays"))
        await asyncio.sleep(0.01)
        gone.cancel()
        return gone.cancelled() or isinstance(
            await asyncio.gather(gone, return_exceptions=True), list
        ), await stays

    _, stays = asyncio.run(run())
    assert stays == "STAYS"
    assert flush.rounds == [["gone", "stays"]]


def test_a_cancelled_round_fails_its_waiters_and_the_next_round_runs() -> None:
    """A round cut off by cancellation (the worker shutting down) fails each of its requests with
    an error instead of leaving them waiting forever; the items that were waiting behind it, and
    later ones, get rounds of their own."""
    started = asyncio.Event()

    async def scenario() -> tuple[list[str | BaseException], str, str]:
        rounds = 0

        async def flush(items: list[str]) -> list[str | Exception]:
            nonlocal rounds
            rounds += 1
            if rounds == 1:
                started.set()
                await asyncio.sleep(10)
            return [item.upper() for item in items]

        group: GroupCommit[str, str] = GroupCommit(flush)
        waiting = asyncio.gather(group.submit("a"), group.submit("b"), return_exceptions=True)
        await started.wait()
        behind = asyncio.create_task(group.submit("behind"))  # queued behind the stuck round
        await asyncio.sleep(0)
        assert group._flusher is not None
        group._flusher.cancel()
        outcomes = await waiting
        return outcomes, await behind, await group.submit("c")

    outcomes, behind, later = asyncio.run(scenario())
    assert all(isinstance(outcome, RuntimeError) and "interrupted" in str(outcome) for outcome in outcomes)
    assert behind == "BEHIND"
    assert later == "C"


def test_mark_received_many_records_and_queues_each_task_once(
    client: redis.Redis, redis_server: RedisServer
) -> None:
    tasks = TaskStore(client, ttl_s=3600)
    batch = [Received("t1", "now"), Received("t2", "now"), Received("t1", "again")]
    outcomes = with_ack_connection(
        redis_server.url, lambda connection: tasks.mark_received_many(batch, connection=connection)
    )
    assert outcomes == [None, None, TaskState.RECEIVED]
    record = tasks.get("t1")
    assert record is not None
    assert record.fields["receivedAt"] == "now"


def test_mark_received_many_reloads_a_script_redis_forgot(
    client: redis.Redis, redis_server: RedisServer
) -> None:
    tasks = TaskStore(client, ttl_s=3600)
    client.script_flush()

    async def run(connection: AbstractConnection) -> list[list[TaskState | Exception | None]]:
        first = await tasks.mark_received_many([Received("t1", "now")], connection=connection)
        client.script_flush()
        second = await tasks.mark_received_many(
            [Received("t2", "now"), Received("t3", "now")], connection=connection
        )
        return [first, second]

    assert with_ack_connection(redis_server.url, run) == [[None], [None, None]]
    assert all(tasks.get(task_id) is not None for task_id in ("t1", "t2", "t3"))


def ack_concurrently(app: testing.TestClient, task_ids: list[str]) -> list[int]:
    """Post a success callback for each task id at once (one event loop, as concurrent requests
    of one ingress process); their status codes, in order."""

    async def ack_all() -> list[int]:
        async with testing.ASGIConductor(app.app) as conductor:
            responses = await asyncio.gather(
                *(
                    conductor.simulate_post(
                        "/callbacks/midjourney",
                        body=orjson.dumps(success(task_id)),
                        headers={"Content-Type": "application/json"},
                    )
                    for task_id in task_ids
                )
            )
        return [response.status_code for response in responses]

    return asyncio.run(ack_all())


def test_concurrent_acks_are_each_recorded_and_queued_once(client: redis.Redis) -> None:
    """64 callbacks at once through the real app and a real Redis: each is acknowledged, recorded
    and queued exactly once, whichever rounds they shared, and the rounds shared script calls."""
    app = make_app(client)
    post(app, orjson.dumps(success("warm-up")))
    task_ids = [f"conc-{n}" for n in range(64)]
    client.config_resetstat()

    assert ack_concurrently(app, task_ids) == [200] * 64
    assert 1 <= client.info("commandstats")["cmdstat_evalsha"]["calls"] < 64
    queued = [message["args"][0]["taskId"] for message in queued_messages(client)]  # type: ignore[index]
    assert sorted(queued) == sorted(["warm-up", *task_ids])
    tasks = TaskStore(client, ttl_s=3600)
    assert all(tasks.get(task_id) is not None for task_id in task_ids)


@pytest.mark.parametrize("spooling", [False, True], ids=["no-spool", "spool"])
def test_a_callback_redis_refuses_fails_alone_in_its_round(
    client: redis.Redis, tmp_path: Path, spooling: bool
) -> None:
    """A callback whose task key holds something else (written by another program) is answered
    503, so the provider retries it, and nothing of it is queued; the callbacks beside it in the
    same concurrent burst are acknowledged and queued. With a spool (the default) too: such a
    callback was taken for a Redis outage, answered 200 and spooled, where no drain could ever
    queue it, and the process paused Redis, spooling the callbacks after it."""
    spool_dir = tmp_path / "spool"
    app = make_app(client, spool_dir=str(spool_dir) if spooling else "")
    client.set(keys.task("clobbered"), "not a task record")
    task_ids = ["before", "clobbered", "after"]

    assert ack_concurrently(app, task_ids) == [200, 503, 200]
    assert post(app, orjson.dumps(success("later"))).status_code == 200
    queued = [message["args"][0]["taskId"] for message in queued_messages(client)]  # type: ignore[index]
    assert sorted(queued) == ["after", "before", "later"]
    assert not spool_dir.exists() or not any(spool_dir.iterdir())


def test_a_record_in_a_state_this_version_does_not_know_is_a_503_of_its_own(client: redis.Redis) -> None:
    """Given a task record in a state this version does not know (written by another version, or
    by hand)
    When its callback arrives in a round with others
    Then it alone is answered 503, naming the unusable record, and nothing of it is queued (each
    retry of the 503 queued a message the workers could only dead-letter); the others are
    acknowledged. Such a record failed the whole round with a ValueError: 500 for every callback."""
    app = make_app(client)
    client.hset(keys.task("odd"), mapping={"state": "archived", "updatedAt": "1"})

    assert ack_concurrently(app, ["before", "odd", "after"]) == [200, 503, 200]
    response = post(app, orjson.dumps(success("odd")))
    assert response.status_code == 503
    assert "archived" not in response.text  # the reason is logged, not told to the caller
    queued = [message["args"][0]["taskId"] for message in queued_messages(client)]  # type: ignore[index]
    assert sorted(queued) == ["after", "before"]


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


@pytest.mark.parametrize("shared_key", ["queue", "messages", "recent"])
def test_a_shared_key_holding_another_type_fails_the_round_before_any_task_is_recorded(
    client: redis.Redis, shared_key: str
) -> None:
    # Given the queue's list, its messages' hash or the recent index holding a string (a mistaken SET)
    key = {"queue": QUEUE_KEY, "messages": f"{QUEUE_KEY}.msgs", "recent": keys.RECENT}[shared_key]
    client.set(key, "not what it should be")
    # When a callback comes (no spool: the answer says whether it was queued)
    response = post(make_app(client), orjson.dumps(success("wrongtype-1")))
    # Then it is not acknowledged, and no task record says "received" with nothing queued for it
    assert response.status_code == 503
    assert client.hgetall(keys.task("wrongtype-1")) == {}
