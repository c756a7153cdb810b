"""A task whose poll kills its worker process is given up after a few starts, not polled for good
(workers/polling.py, :class:`PollStarts`), against a real Redis."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable

import httpx
import pytest
import redis

from shared import keys
from shared.polling import ResultPoller
from shared.provider import ProviderClient
from shared.queue import create_broker
from shared.settings import Settings
from shared.submitted import SubmittedTasks
from shared.taskstate import TaskState, TaskStore
from tests.support.clock import FakeClock
from tests.support.servers import RedisServer
from workers.polling import PollStarts, SilentTaskPoller

GRACE_S = 100
INTERVAL_S = 30
GIVE_UP_S = 1000
MAX_STARTS = 3

Handle = Callable[[httpx.Request], httpx.Response]


def silent_poller(client: redis.Redis, handle: Handle, clock: FakeClock) -> SilentTaskPoller:
    """A pass over ``client``'s tasks, polling a provider that answers through ``handle``."""
    tasks = TaskStore(client, ttl_s=86_400, clock=clock)
    broker = create_broker(Settings(redis_url="redis://unused"), client=client, middleware=[])
    provider = ProviderClient(
        "http://provider.invalid", "k", http=httpx.Client(transport=httpx.MockTransport(handle)), attempts=1
    )
    return SilentTaskPoller(
        submitted=SubmittedTasks(client, tasks, ttl_s=86_400, clock=clock),
        tasks=tasks,
        poller=ResultPoller(provider=provider, tasks=tasks, broker=broker, clock=clock),
        starts=PollStarts(client, max_starts=MAX_STARTS, ttl_s=86_400),
        grace_s=GRACE_S,
        interval_s=INTERVAL_S,
        give_up_s=GIVE_UP_S,
        clock=clock,
    )


def overdue(client: redis.Redis, task_id: str) -> tuple[TaskStore, FakeClock]:
    """The task store and the clock once ``task_id`` was submitted and is overdue."""
    clock = FakeClock(2_000_000.0)
    tasks = TaskStore(client, ttl_s=86_400, clock=clock)
    SubmittedTasks(client, tasks, ttl_s=86_400, clock=clock).record(task_id, {})
    clock.now += GRACE_S + 1
    return tasks, clock


def killed_by_its_poll(redis_url: str, now: float) -> None:
    """A worker process's pass at ``now`` whose record-info kills the process (as the kernel's
    out-of-memory killer would: no code of it runs after)."""

    def handle(request: httpx.Request) -> httpx.Response:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("not killed")

    silent_poller(redis.Redis.from_url(redis_url), handle, FakeClock(now)).run_once()


def generating(request: httpx.Request) -> httpx.Response:
    data = {"taskId": request.url.params["taskId"], "successFlag": 0}
    return httpx.Response(200, json={"code": 200, "msg": "success", "data": data})


def test_a_task_whose_polls_killed_the_worker_each_time_is_given_up_not_polled_again(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    """Given an overdue task whose record-info killed the worker process polling it, pass after
    pass, MJHOOK_MAX_ATTEMPT_STARTS times
    When the next pass comes
    Then it does not poll the task but gives it up as failed, saying why. It was polled again every
    pass (a redelivered or newly kicked poll message counts nothing), the workers dying for good."""
    tasks, clock = overdue(client, "t-deadly")
    fork = multiprocessing.get_context("fork")
    for _ in range(MAX_STARTS):
        worker = fork.Process(target=killed_by_its_poll, args=(redis_server.url, clock.now))
        worker.start()
        worker.join(timeout=30)
        assert worker.exitcode == -signal.SIGKILL
        clock.now += INTERVAL_S + 1
    polled: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        polled.append(request.url.params["taskId"])
        return generating(request)

    summary = silent_poller(client, handle, clock).run_once()

    assert polled == []
    assert (summary.polled, summary.given_up) == (0, 1)
    record = tasks.get("t-deadly")
    assert record is not None
    assert record.state is TaskState.FAILED
    assert record.fields["reason"] == (
        "polling this task was started 3 times and never ended (its worker process died during it "
        "each time: killed, out of memory?); not polled again (MJHOOK_MAX_ATTEMPT_STARTS=3)"
    )
    # The count is left to expire with the task's record, not kept for good
    assert 0 < client.ttl(keys.poll_starts("t-deadly")) <= 86_400


def unavailable(request: httpx.Request) -> httpx.Response:
    return httpx.Response(503, content=b"<html>unavailable</html>")


def buggy(request: httpx.Request) -> httpx.Response:
    raise RuntimeError("a bug")


@pytest.mark.parametrize(
    "answer", [generating, unavailable, buggy], ids=["generating", "provider-error", "unexpected-error"]
)
def test_a_poll_that_ends_ends_its_count_so_a_task_is_polled_as_often_as_it_waits(
    client: redis.Redis, answer: Handle
) -> None:
    """Given an overdue task whose record-info answers it is generating, or fails (the pass stops,
    or goes on)
    When passes poll it many more times than MJHOOK_MAX_ATTEMPT_STARTS
    Then each poll was counted as it started and the count ended with it: the task is polled every
    pass and still waits."""
    tasks, clock = overdue(client, "t-slow")
    counted: list[bytes | str | None] = []

    def handle(request: httpx.Request) -> httpx.Response:
        counted.append(client.get(keys.poll_starts("t-slow")))
        return answer(request)

    poller = silent_poller(client, handle, clock)
    for _ in range(MAX_STARTS * 3):
        summary = poller.run_once()
        assert summary.given_up == 0
        assert client.exists(keys.poll_starts("t-slow")) == 0
        clock.now += INTERVAL_S + 1

    assert counted == [b"1"] * MAX_STARTS * 3
    record = tasks.get("t-slow")
    assert record is not None
    assert record.state is TaskState.SUBMITTED
