"""The intake's blocking work while Redis misbehaves: a real Redis for task records, a real spool,
and a broker that hangs on purpose."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import dramatiq
import orjson
import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from falcon import testing

from ingress.app import build_ingress
from ingress.intake import CallbackIntake
from ingress.spool import Spool
from shared.callback import Callback
from shared.queue import enqueue_broker_beside
from shared.settings import Settings
from shared.taskstate import Received, TaskState, TaskStore
from tests.ingress.test_callbacks import queued_messages
from tests.support.procs import free_port
from tests.support.servers import RedisServer

PATH = "/callbacks/midjourney"
JSON = {"Content-Type": "application/json"}


def callback(task_id: str) -> Callback:
    return Callback(task_id, 200, "success", None, ("https://example.com/a.png",), "2026-11-26T00:00:00.000Z")


def test_a_callback_is_spooled_while_every_thread_of_the_default_pool_waits_on_redis(tmp_path: Path) -> None:
    """Given Redis away and the event loop's default thread pool held entirely (the read endpoints
    and the keeping of refused bodies wait there on a hung Redis), when a valid callback arrives,
    then it is spooled and answered 200 all the same: its blocking work has threads of its own."""
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", spool_dir=str(tmp_path))
    ingress = build_ingress(settings)
    pool_size = min(32, (os.cpu_count() or 1) + 4)  # asyncio's default executor

    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        release = threading.Event()
        held = [loop.run_in_executor(None, release.wait) for _ in range(pool_size)]
        try:
            async with testing.ASGIConductor(ingress.app) as conductor:
                answer = conductor.simulate_post(PATH, body=orjson.dumps(body("spooled-1")), headers=JSON)
                response = await asyncio.wait_for(answer, timeout=30)
                return response.status_code
        finally:
            release.set()
            await asyncio.gather(*held)

    assert asyncio.run(scenario()) == 200
    assert ingress.spool is not None
    assert ingress.spool.depth() == 1


def body(task_id: str) -> dict[str, Any]:
    return {
        "code": 200,
        "msg": "ok",
        "data": {"taskId": task_id, "resultUrls": ["https://example.com/a.png"]},
    }


class HangingBroker(StubBroker):
    """A queue whose first enqueue hangs until released and then fails (a Redis that hung);
    counts the enqueues it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> dramatiq.Message[Any]:
        self.asked += 1
        self.entered.set()
        self.release.wait(30)
        raise redis.ConnectionError("Timeout reading from socket")


def test_callbacks_waiting_behind_a_hung_enqueue_are_spooled_without_trying_it(
    client: redis.Redis, tmp_path: Path
) -> None:
    """Given a queue in a Redis of its own that hangs, and one thread for the blocking enqueues,
    when five callbacks arrive together and the first enqueue times out, then all five are
    spooled and answered, and the four queued behind it never tried the queue: each would have
    waited out the timeout again, past the provider's 15 s deadline."""
    broker = HangingBroker()
    spool = Spool(tmp_path, max_bytes=1 << 20)
    intake = CallbackIntake(broker=broker, tasks=TaskStore(client, ttl_s=3600), spool=spool, threads=1)

    async def scenario() -> None:
        accepted = [asyncio.create_task(intake.accept(callback(f"t{i}"))) for i in range(5)]
        await asyncio.to_thread(broker.entered.wait, 10)
        broker.release.set()
        await asyncio.wait_for(asyncio.gather(*accepted), timeout=30)

    asyncio.run(scenario())
    assert broker.asked == 1
    assert spool.depth() == 5


def test_a_queue_in_a_redis_of_its_own_waits_no_longer_than_the_task_store(redis_server) -> None:
    """redis-py's default socket timeout (5 s, per try) is not MJHOOK_REDIS_TIMEOUT_S."""
    settings = Settings(
        redis_url=redis_server.url,
        broker_url=f"redis://127.0.0.1:{free_port()}/0",
        redis_timeout_s=0.75,
    )
    broker = enqueue_broker_beside(settings, redis.Redis.from_url(redis_server.url))
    kwargs = broker.client.connection_pool.connection_kwargs  # type: ignore[attr-defined]
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.75, 0.75)


class BlockingBroker(StubBroker):
    """A queue that blocks its publishers and never fails (RabbitMQ's memory alarm)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        #: Released once per publisher that entered (and is held).
        self.entered = threading.Semaphore(0)

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> dramatiq.Message[Any]:
        self.entered.release()
        self.release.wait(60)
        return message


def test_a_spool_append_never_waits_on_a_drain_blocked_in_the_queue(
    client: redis.Redis, tmp_path: Path
) -> None:
    """Given a queue that blocks its publishers for good and a callback spooled for it, when the
    spool's drain (the ingress's drainer: ``drain_one``) is blocked in that queue while holding
    the spool file's lock, then the next callback is still spooled and answered: the drain gives
    its enqueue up at the deadline and lets go of the file."""
    broker = BlockingBroker()
    spool = Spool(tmp_path, max_bytes=1 << 20)
    # (no pause after a failure: every enqueue reaches the blocked queue)
    intake = CallbackIntake(
        broker=broker, tasks=TaskStore(client, ttl_s=3600), spool=spool, enqueue_deadline_s=0.3, pause_s=0
    )
    drained: list[int] = []

    async def scenario() -> None:
        await intake.accept(callback("t0"))  # spooled once the deadline passed
        assert broker.entered.acquire(timeout=10)  # (the acknowledgement's own enqueue, held)
        draining = threading.Thread(target=lambda: drained.append(spool.drain(intake.drain_one)))
        draining.start()
        assert await asyncio.to_thread(broker.entered.acquire, timeout=10)  # the drain's, held
        await asyncio.wait_for(intake.accept(callback("t1")), timeout=5)
        await asyncio.to_thread(draining.join, 10)

    try:
        asyncio.run(scenario())
    finally:
        broker.release.set()
    assert drained == [0]  # the drain paused at t0, which stays spooled with t1
    assert spool.depth() == 2


def test_callbacks_are_spooled_when_the_queue_blocks_past_the_deadline(
    client: redis.Redis, tmp_path: Path
) -> None:
    """Given a queue that blocks its publishers without ever failing, when callbacks arrive, then
    each is spooled and answered once the enqueue deadline passed: waiting on would keep the
    provider past its 15 s, and the pause then sends the next ones straight to the spool."""
    broker = BlockingBroker()
    spool = Spool(tmp_path, max_bytes=1 << 20)
    intake = CallbackIntake(
        broker=broker, tasks=TaskStore(client, ttl_s=3600), spool=spool, threads=2, enqueue_deadline_s=0.3
    )

    async def scenario() -> None:
        accepted = [asyncio.create_task(intake.accept(callback(f"t{i}"))) for i in range(4)]
        await asyncio.wait_for(asyncio.gather(*accepted), timeout=20)

    try:
        asyncio.run(scenario())
    finally:
        broker.release.set()
    assert spool.depth() == 4


def test_a_drain_when_the_ingress_shuts_down_keeps_the_callbacks_spooled(
    client: redis.Redis, tmp_path: Path
) -> None:
    """Given spooled callbacks and an intake whose threads were shut down (the ingress process
    exits while its drainer is mid-round)
    When the drain hands them to ``drain_one``
    Then the drain pauses and they all stay spooled, none set aside in unqueued.jsonl: the pool's
    refusal used to be taken for the queue refusing each of them for good."""
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for i in range(3):
        spool.append(callback(f"t{i}"))
    intake = CallbackIntake(broker=StubBroker(), tasks=TaskStore(client, ttl_s=3600), spool=spool)
    intake._threads.shutdown()  # what the interpreter's exit does to it; no public way in

    assert spool.drain(intake.drain_one) == 0

    assert spool.depth() == 3
    assert spool.unqueued() == 0


@pytest.mark.parametrize(
    ("spool", "status", "spooled"), [(False, 503, 0), (True, 200, 1)], ids=["no-spool", "spool"]
)
def test_an_unforeseen_error_recording_a_callback_is_no_200_unless_the_callback_is_spooled(
    client: redis.Redis,
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    spool: bool,
    status: int,
    spooled: int,
) -> None:
    """Given the recording of received callbacks failing with an error nobody foresaw (a bug, not
    Redis away)
    When a valid callback arrives
    Then without a spool it is answered 503 and nothing is queued, so the provider retries; with a
    spool it is spooled and answered 200. A 200 is only ever given for a callback kept durably."""

    async def unforeseen(
        self: TaskStore, received: list[Received], *, connection: object
    ) -> list[TaskState | Exception | None]:
        raise RuntimeError("unforeseen")

    monkeypatch.setattr(TaskStore, "mark_received_many", unforeseen)
    settings = Settings(redis_url=redis_server.url, spool_dir=str(tmp_path / "spool") if spool else "")
    ingress = build_ingress(settings, redis_client=client)

    response = testing.TestClient(ingress.app).simulate_post(
        PATH, body=orjson.dumps(body("t1")), headers=JSON
    )

    assert response.status_code == status
    assert queued_messages(client) == []
    assert (ingress.spool.depth() if ingress.spool is not None else 0) == spooled
