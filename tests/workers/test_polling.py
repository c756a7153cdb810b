"""The workers' polling fallback against a real Redis and the simulated provider: one pass over
the silent tasks, and the chain of self-scheduling messages that runs one pass at a time."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import dramatiq
import httpx
import pytest
import redis

from shared import keys
from shared.callback import Callback
from shared.errors import FreshLinkPending, ProviderUnavailable
from shared.metrics import WorkerMetrics, create_worker_metrics
from shared.polling import PollOutcome, PollResult, ResultPoller
from shared.provider import ProviderClient
from shared.queue import BROKER_NAMESPACE, CALLBACK_QUEUE, POLL_QUEUE, create_broker
from shared.settings import Settings
from shared.storage import manifest_key
from shared.submitted import HANDOFFS_FIELD, MAX_POLL_HANDOFFS, SubmittedTasks
from shared.taskstate import TaskState, TaskStore
from simulator import FaultConfig, RunningSimulator
from tests.support.clock import FakeClock
from tests.support.provider import StartSimulator, client_for, generated
from tests.support.stack import ready_bucket
from workers.polling import MAX_POLL_HOLD_S, POLL_SILENT_TASKS, PollChain, PollStarts, SilentTaskPoller
from workers.runtime import WorkerParts, WorkerRuntime, build_parts

GRACE_S = 100
INTERVAL_S = 30
GIVE_UP_S = 1000


# --- one pass ---------------------------------------------------------------------------------


class Pass:
    """A poller with a fake clock over a simulator, and what it touches."""

    def __init__(
        self,
        sim: RunningSimulator | None,
        client: redis.Redis,
        *,
        provider: ProviderClient | None = None,
        record_failure: Callable[[Callback, str], None] | None = None,
        **client_options: Any,
    ) -> None:
        self.clock = FakeClock(2_000_000.0)
        self.client = client
        self.metrics = create_worker_metrics()
        self.tasks = TaskStore(client, ttl_s=86_400, clock=self.clock)
        self.submitted = SubmittedTasks(client, self.tasks, ttl_s=86_400, clock=self.clock)
        broker = create_broker(Settings(redis_url="redis://unused"), client=client, middleware=[])
        self.provider = provider or client_for(sim, **client_options)  # type: ignore[arg-type]
        self.poller = SilentTaskPoller(
            submitted=self.submitted,
            tasks=self.tasks,
            poller=ResultPoller(provider=self.provider, tasks=self.tasks, broker=broker, clock=self.clock),
            starts=PollStarts(client, max_starts=3, ttl_s=86_400),
            grace_s=GRACE_S,
            interval_s=INTERVAL_S,
            give_up_s=GIVE_UP_S,
            record_failure=record_failure,
            metrics=self.metrics,
            clock=self.clock,
        )

    def state(self, task_id: str) -> TaskState:
        record = self.tasks.get(task_id)
        assert record is not None
        return record.state

    def queued_ids(self) -> list[str]:
        raw = self.client.hvals(keys.broker_messages(BROKER_NAMESPACE, CALLBACK_QUEUE))
        return sorted(dramatiq.Message.decode(body).args[0]["taskId"] for body in raw)


def finished(sim: RunningSimulator) -> str:
    task = sim.provider.submit(
        task_type="mj_txt2img", params={"prompt": "p"}, prompt={}, callback_url="", delay_s=0
    )
    deadline = time.monotonic() + 5
    while task.completed_at is None:
        assert time.monotonic() < deadline, "the simulator did not finish the task"
        time.sleep(0.01)
    return task.task_id


def generating(sim: RunningSimulator) -> str:
    task = sim.provider.submit(task_type="mj_txt2img", params={}, prompt={}, callback_url="", delay_s=120)
    return task.task_id


def test_silent_tasks_past_the_grace_are_polled_and_the_finished_ones_queued(
    start_simulator: StartSimulator, client: redis.Redis
) -> None:
    sim = start_simulator(faults=FaultConfig(drop_share=1.0))
    run = Pass(sim, client)
    # Given a finished task and a generating one, submitted long ago, and a finished one just now
    done, busy, recent = finished(sim), generating(sim), finished(sim)
    run.submitted.record(done, {})
    run.submitted.record(busy, {})
    run.clock.now += GRACE_S
    run.submitted.record(recent, {})
    # When a pass runs
    summary = run.poller.run_once()
    # Then the two overdue tasks were polled; the finished one is queued and received
    assert (summary.polled, summary.queued, summary.given_up) == (2, 1, 0)
    assert run.queued_ids() == [done]
    assert run.state(done) is TaskState.RECEIVED
    assert run.state(busy) is TaskState.SUBMITTED
    assert run.state(recent) is TaskState.SUBMITTED


def test_a_task_is_polled_at_most_once_per_interval(
    start_simulator: StartSimulator, client: redis.Redis
) -> None:
    sim = start_simulator()
    run = Pass(sim, client)
    busy = generating(sim)
    run.submitted.record(busy, {})
    run.clock.now += GRACE_S
    assert run.poller.run_once().polled == 1
    run.clock.now += INTERVAL_S - 1
    assert run.poller.run_once().polled == 0
    run.clock.now += 1
    assert run.poller.run_once().polled == 1


def test_a_task_without_a_result_is_given_up_as_failed_with_the_reason(
    start_simulator: StartSimulator, client: redis.Redis
) -> None:
    sim = start_simulator()
    run = Pass(sim, client)
    busy = generating(sim)
    run.submitted.record(busy, {})
    run.submitted.record("unknown-to-the-provider", {})
    run.clock.now += GIVE_UP_S
    summary = run.poller.run_once()
    assert summary.given_up == 2
    for task_id, words in ((busy, "successFlag 0"), ("unknown-to-the-provider", "404")):
        record = run.tasks.get(task_id)
        assert record is not None
        assert record.state is TaskState.FAILED
        assert "no result from the provider within 1000 s" in record.fields["reason"]
        assert words in record.fields["reason"]
    # No longer waiting: the next pass has nothing to do
    assert run.poller.run_once().polled == 0


def failed_count(metrics: WorkerMetrics) -> float:
    return metrics.registry.get_sample_value("mjhook_tasks_total", {"outcome": "failed"}) or 0.0


def test_a_task_the_pass_gives_up_on_is_counted_failed_and_one_whose_result_came_is_not(
    start_simulator: StartSimulator, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given two tasks past MJHOOK_POLL_GIVE_UP_S, one of them stored meanwhile (its callback came
    while the pass ran: the give-up must not overrule it), when the pass gives up on both, then
    only the one it failed is counted failed: no message's end counts it (none was given up)."""
    sim = start_simulator()
    run = Pass(sim, client)
    busy, stored = generating(sim), generating(sim)
    run.submitted.record(busy, {})
    run.submitted.record(stored, {})
    run.clock.now += GIVE_UP_S
    polled: list[str] = []
    poll = run.poller._poller.poll

    def poll_then_store(task_id: str) -> Any:
        result = poll(task_id)
        polled.append(task_id)
        if task_id == stored:
            run.tasks.move(stored, TaskState.STORED)
        return result

    monkeypatch.setattr(run.poller._poller, "poll", poll_then_store)

    assert run.poller.run_once().given_up == 1
    assert sorted(polled) == sorted([busy, stored])
    assert (run.state(busy), run.state(stored)) == (TaskState.FAILED, TaskState.STORED)
    assert failed_count(run.metrics) == 1


def test_a_task_given_up_gets_the_manifest_of_its_failure(
    start_simulator: StartSimulator, client: redis.Redis, app_env: dict[str, str]
) -> None:
    """Given a worker whose object storage works, and a task the provider never finished
    When the pass gives up on it
    Then the bucket says so too: a manifest with status failed, code 500 and the reason. Without
    it, whoever waits for manifests in the bucket waited for good: no callback ever comes."""
    runtime = WorkerRuntime(Settings.from_env(app_env))
    store = runtime.parts().store
    ready_bucket(store)
    sim = start_simulator()
    run = Pass(sim, client, record_failure=runtime.parts().processor.record_failure)
    busy = generating(sim)
    run.submitted.record(busy, {})
    run.clock.now += GIVE_UP_S

    assert run.poller.run_once().given_up == 1

    manifest = store.get_json(f"tasks/{busy}/manifest.json")
    assert (manifest["taskId"], manifest["status"], manifest["code"]) == (busy, "failed", 500)
    assert manifest["images"] == []
    assert "no result from the provider within 1000 s" in manifest["msg"]
    assert [error["reason"] for error in manifest["errors"]] == [run.tasks.get(busy).fields["reason"]]  # type: ignore[union-attr]


def test_a_refused_account_stops_the_pass_and_fails_no_task(
    start_simulator: StartSimulator, client: redis.Redis
) -> None:
    sim = start_simulator()
    run = Pass(sim, client, api_key="revoked")
    run.submitted.record("t-1", {})
    run.submitted.record("t-2", {})
    run.clock.now += GIVE_UP_S
    summary = run.poller.run_once()
    assert summary.polled == 0
    assert "401" in summary.stopped
    assert run.state("t-1") is TaskState.SUBMITTED


def test_a_result_mjhook_cannot_take_is_given_up_at_once(client: redis.Redis) -> None:
    # Given a provider answering a finished task with a result URL longer than any we accept
    details = {
        "taskId": "t-long",
        "successFlag": 1,
        "resultInfoJson": {"resultUrls": [{"resultUrl": "https://a/" + "x" * 5000}]},
    }
    answer = httpx.Response(200, json={"code": 200, "msg": "success", "data": details})
    http = httpx.Client(transport=httpx.MockTransport(lambda request: answer))
    run = Pass(None, client, provider=ProviderClient("http://provider.test", "k", http=http))
    run.submitted.record("t-long", {})
    run.clock.now += GRACE_S
    # When it is polled, long before the give-up time
    assert run.poller.run_once().given_up == 1
    # Then it is failed with the reason, and nothing is queued
    record = run.tasks.get("t-long")
    assert record is not None
    assert record.state is TaskState.FAILED
    assert "its result cannot be used: a result URL is longer than 4096" in record.fields["reason"]
    assert run.queued_ids() == []


# --- the chain --------------------------------------------------------------------------------


class Enqueued:
    def __init__(self) -> None:
        self.messages: list[tuple[dramatiq.Message[Any], int]] = []

    def __call__(self, message: dramatiq.Message[Any], delay_ms: int) -> None:
        self.messages.append((message, delay_ms))

    @property
    def ids(self) -> list[str]:
        return [message.message_id for message, _ in self.messages]


def next_id(client: redis.Redis) -> str | None:
    value = client.get(keys.POLL_NEXT)
    return value.decode() if value is not None else None


def test_a_poll_is_kicked_only_when_none_is_scheduled(client: redis.Redis) -> None:
    enqueued = Enqueued()
    chain = PollChain(client, enqueue=enqueued, period_s=5)
    assert chain.ensure_scheduled()
    assert not chain.ensure_scheduled()
    assert not PollChain(client, enqueue=enqueued, period_s=5).ensure_scheduled()  # another worker
    [(message, delay_ms)] = enqueued.messages
    assert (message.queue_name, message.actor_name, delay_ms) == (POLL_QUEUE, POLL_SILENT_TASKS, 0)
    assert next_id(client) == message.message_id


def test_each_run_schedules_its_successor_and_duplicates_do_nothing(client: redis.Redis) -> None:
    enqueued = Enqueued()
    chain = PollChain(client, enqueue=enqueued, period_s=5)
    chain.ensure_scheduled()
    [first] = enqueued.ids
    passes: list[str] = []
    # When the scheduled message runs
    assert chain.run(first, lambda: passes.append(first))
    # Then its successor is due after the period, and named as the one expected
    second = enqueued.ids[1]
    assert enqueued.messages[1][1] == 5000
    assert next_id(client) == second
    # And the first one again (redelivered, or retried) does nothing
    assert not chain.run(first, lambda: passes.append("again"))
    assert passes == [first]
    assert len(enqueued.messages) == 2
    assert client.get(keys.POLL_LOCK) is None


def test_one_pass_at_a_time(client: redis.Redis) -> None:
    enqueued = Enqueued()
    chain = PollChain(client, enqueue=enqueued, period_s=5)
    chain.ensure_scheduled()
    [first] = enqueued.ids
    inner: list[bool] = []
    # While a pass runs, the same message delivered twice finds the lock taken
    assert chain.run(first, lambda: inner.append(chain.run(first, lambda: None)))
    assert inner == [False]
    assert len(enqueued.messages) == 2  # one successor only


def test_a_failing_pass_keeps_the_chain_and_a_lapsed_name_accepts_any_message(client: redis.Redis) -> None:
    enqueued = Enqueued()
    chain = PollChain(client, enqueue=enqueued, period_s=5)

    def boom() -> None:
        raise RuntimeError("bug")

    # No message named (the key lapsed): a message runs, fails, and still schedules the next
    assert chain.run("orphan", boom)
    assert next_id(client) == enqueued.ids[0]


def test_the_next_name_lapses_a_little_after_its_message_is_due(client: redis.Redis) -> None:
    chain = PollChain(client, enqueue=Enqueued(), period_s=5, next_slack_s=10)
    chain.run("m", lambda: None)
    assert 5_000 < client.pttl(keys.POLL_NEXT) <= 15_000


# --- review findings of session 7 -----------------------------------------------------------------


def mock_provider(handle: Any, **options: Any) -> ProviderClient:
    """A provider answering through ``handle`` in process (httpx's MockTransport: no socket)."""
    return ProviderClient(
        "http://provider.invalid", "k", http=httpx.Client(transport=httpx.MockTransport(handle)), **options
    )


def silent_poller(
    client: redis.Redis, provider: ProviderClient, clock: FakeClock
) -> tuple[SilentTaskPoller, TaskStore]:
    tasks = TaskStore(client, ttl_s=86_400, clock=clock)
    broker = create_broker(Settings(redis_url="redis://unused"), client=client, middleware=[])
    poller = SilentTaskPoller(
        submitted=SubmittedTasks(client, tasks, ttl_s=86_400, clock=clock),
        tasks=tasks,
        poller=ResultPoller(provider=provider, tasks=tasks, broker=broker, clock=clock),
        starts=PollStarts(client, max_starts=3, ttl_s=86_400),
        grace_s=GRACE_S,
        interval_s=INTERVAL_S,
        give_up_s=GIVE_UP_S,
        clock=clock,
    )
    return poller, tasks


def test_a_task_whose_record_info_answers_generation_failed_gets_its_failure_queued(
    client: redis.Redis,
) -> None:
    """provider-api.md: any endpoint may answer body code 501, "generation failed". For
    record-info that is the task's outcome: its failure is queued like a failure callback (a
    manifest with the reason), and the pass goes on to the next task. It was taken for a refusal
    of the account: the pass stopped there, every pass, and the task stayed submitted for good."""
    done = {
        "taskId": "t-done",
        "successFlag": 1,
        "resultInfoJson": {"resultUrls": ["https://cdn.example/0.png"]},
    }

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.params["taskId"] == "t-501":
            return httpx.Response(200, json={"code": 501, "msg": "nsfw content", "data": None})
        return httpx.Response(200, json={"code": 200, "msg": "success", "data": done})

    clock = FakeClock(2_000_000.0)
    poller, tasks = silent_poller(client, mock_provider(handle), clock)
    submitted = SubmittedTasks(client, tasks, ttl_s=86_400, clock=clock)
    submitted.record("t-501", {})
    clock.now += 1
    submitted.record("t-done", {})
    clock.now += GRACE_S

    summary = poller.run_once()

    assert (summary.stopped, summary.polled, summary.queued) == ("", 2, 2)
    queued = [
        dramatiq.Message.decode(body).args[0]
        for body in client.hvals(keys.broker_messages(BROKER_NAMESPACE, CALLBACK_QUEUE))
    ]
    failure = next(message for message in queued if message["taskId"] == "t-501")
    assert (failure["code"], failure["msg"]) == (500, "nsfw content (polled from record-info)")
    assert tasks.get("t-501").state is TaskState.RECEIVED  # type: ignore[union-attr]


def test_a_submission_answered_2xx_unreadably_is_not_sent_again() -> None:
    """A 2xx answer reached the provider, which may have created the task: sending the request
    again could create a second one, and spend a second credit (docs/delivery.md)."""
    posts: list[bytes] = []

    def handle(request: httpx.Request) -> httpx.Response:
        posts.append(request.content)
        return httpx.Response(200, content=b'{"code": 200, "msg": "success", "data": {"taskId": "t')

    provider = mock_provider(handle, sleep=lambda _s: None)
    with pytest.raises(ProviderUnavailable, match="may have been taken"):
        provider.generate("a cat", callback_url="https://hooks.example/cb")
    assert len(posts) == 1


def test_a_404_page_that_is_not_the_providers_answer_stops_the_pass_instead_of_failing_tasks(
    client: redis.Redis,
) -> None:
    """A wrong MJHOOK_PROVIDER_URL answers every record-info with a web server's 404 page: that is
    no word from the provider about the task, so the pass stops (and says why) rather than count
    the task unknown, which would fail every task once its wait is over."""

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, content=b"<html>Not Found</html>")

    clock = FakeClock(2_000_000.0)
    poller, tasks = silent_poller(client, mock_provider(handle), clock)
    SubmittedTasks(client, tasks, ttl_s=86_400, clock=clock).record("t1", {})
    clock.now += GIVE_UP_S * 2

    summary = poller.run_once()

    assert "no such endpoint (check MJHOOK_PROVIDER_URL)" in summary.stopped
    assert tasks.get("t1").state is TaskState.SUBMITTED  # type: ignore[union-attr]


@pytest.mark.parametrize("status", [500, 502, 503, 504, 520, 524])
def test_a_submission_a_gateway_timed_out_is_not_sent_again(status: int) -> None:
    """A gateway's or CDN's 5xx (not the provider's body; a CDN's 520 and 524 were sent again, up
    to 5 tasks and 5 credits for one submit): the request may have reached the provider, which
    may have created the task. A read of record-info is retried as before."""
    calls: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(status, content=b"<html>gateway timeout</html>")

    provider = mock_provider(handle, sleep=lambda _s: None)
    with pytest.raises(ProviderUnavailable, match="may have been taken"):
        provider.generate("a cat", callback_url="https://hooks.example/cb")
    assert len(calls) == 1
    with pytest.raises(ProviderUnavailable):
        provider.record_info("t1")
    assert len(calls) == 1 + 5


def test_a_retry_after_longer_than_the_client_waits_is_not_cut_short() -> None:
    """Asked to come back in 120 s, retrying after 60 only uses up the attempts while the
    provider is still limiting: the call gives up at once (transient), the caller comes later."""
    waits: list[float] = []

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "120"}, json={"code": 429, "msg": "slow down"})

    provider = mock_provider(handle, sleep=waits.append)
    with pytest.raises(ProviderUnavailable):
        provider.record_info("t1")
    assert waits == []


def test_a_pass_the_provider_asked_to_wait_holds_every_pass_until_then(client: redis.Redis) -> None:
    """Given the provider answering a poll 429 with Retry-After 120
    When passes come every interval meanwhile
    Then they poll nothing until those 120 s are over: each asked again (once a pass, 4 times in
    the 120 s), and the provider went on limiting us."""
    calls: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(429, headers={"Retry-After": "120"}, json={"code": 429, "msg": "slow down"})

    clock = FakeClock(2_000_000.0)
    poller, tasks = silent_poller(client, mock_provider(handle, attempts=1), clock)
    SubmittedTasks(client, tasks, ttl_s=86_400, clock=clock).record("t1", {})
    clock.now += GRACE_S

    assert "429" in poller.run_once().stopped
    clock.now += INTERVAL_S + 1
    summary = poller.run_once()

    assert calls == ["/api/v1/mj/record-info"]
    assert summary.stopped.startswith("the provider asked to wait")
    assert 60_000 < client.pttl(keys.POLL_HOLD) <= 120_000


def polling_worker(
    sim: RunningSimulator, client: redis.Redis, app_env: dict[str, str], **settings: str
) -> WorkerParts:
    """A worker's parts as build_parts makes them, its provider the simulator, polling with no
    grace, the bucket made; ``settings`` add or override ``MJHOOK_*`` variables."""
    configured = Settings.from_env(
        {
            **app_env,
            "MJHOOK_PROVIDER_URL": sim.base_url,
            "MJHOOK_PROVIDER_API_KEY": sim.api_key,
            "MJHOOK_POLL_GRACE_S": "0",
            **settings,
        }
    )
    parts = build_parts(configured, broker=create_broker(configured, client=client, middleware=[]))
    ready_bucket(parts.store)
    return parts


def called_back(sim: RunningSimulator) -> Callback:
    """The success callback of a task generated by the simulator, as the provider sends it once
    the task is done (its result URLs those record-info lists)."""
    info = generated(sim, callback_url="http://127.0.0.1:9/cb")
    return Callback(info.task_id, 200, "success", None, info.result_urls, "2026-11-25T00:00:00.000Z")


def received_while_in_maintenance(
    sim: RunningSimulator, client: redis.Redis, app_env: dict[str, str], **settings: str
) -> tuple[Callback, WorkerParts]:
    """A task the simulator finished, its success callback received, and a polling worker making
    one attempt per provider call (``settings`` add to it); then the provider goes into
    maintenance."""
    callback = called_back(sim)
    parts = polling_worker(sim, client, app_env, MJHOOK_PROVIDER_RETRIES="0", **settings)
    parts.tasks.mark_received(callback.task_id, callback.received_at)
    sim.provider.config = dataclasses.replace(sim.provider.config, maintenance=True)
    return callback, parts


def test_the_workers_polling_gives_a_task_it_gives_up_on_a_manifest(
    start_simulator: StartSimulator, client: redis.Redis, app_env: dict[str, str]
) -> None:
    """The polling a worker builds from settings (workers.runtime.build_parts) writes the failure
    manifest of a task it gives up on, through the worker's own processor."""
    sim = start_simulator()
    parts = polling_worker(sim, client, app_env, MJHOOK_POLL_GIVE_UP_S="1")
    assert parts.polling is not None
    busy = generating(sim)

    def two_seconds_ago() -> float:
        return time.time() - 2

    tasks = TaskStore(client, ttl_s=86_400, clock=two_seconds_ago)
    SubmittedTasks(client, tasks, ttl_s=86_400, clock=two_seconds_ago).record(busy, {})

    summary = parts.polling.poller.run_once()
    assert summary.given_up == 1, summary

    assert parts.store.get_json(f"tasks/{busy}/manifest.json")["status"] == "failed"
    # Counted in the worker's metrics, where its processor counts the tasks' other ends.
    assert parts.metrics.registry.get_sample_value("mjhook_tasks_total", {"outcome": "failed"}) == 1


def test_a_success_listed_before_its_results_is_polled_again_not_queued_empty(client: redis.Redis) -> None:
    """record-info may say success (successFlag 1) before it lists the files: queued so, the task
    failed for good ("success but listed no URLs"), while the next poll lists all four."""
    urls = [f"https://tempfile.example/abc_0_{i}.jpeg" for i in range(4)]
    answers: list[dict[str, Any]] = [
        {"taskId": "t1", "successFlag": 1, "resultInfoJson": {"resultUrls": []}},
        {
            "taskId": "t1",
            "successFlag": 1,
            "resultInfoJson": {"resultUrls": [{"resultUrl": url} for url in urls]},
        },
    ]

    def handle(request: httpx.Request) -> httpx.Response:
        data = answers.pop(0) if len(answers) > 1 else answers[0]
        return httpx.Response(200, json={"code": 200, "msg": "success", "data": data})

    clock = FakeClock(2_000_000.0)
    poller, tasks = silent_poller(client, mock_provider(handle, attempts=1), clock)
    SubmittedTasks(client, tasks, ttl_s=86_400, clock=clock).record("t1", {})
    clock.now += GRACE_S

    poller.run_once()
    assert tasks.get("t1").state is TaskState.SUBMITTED  # type: ignore[union-attr]
    clock.now += INTERVAL_S + 1
    poller.run_once()

    queued = [
        dramatiq.Message.decode(body).args[0]
        for body in client.hvals(keys.broker_messages(BROKER_NAMESPACE, CALLBACK_QUEUE))
    ]
    assert [message["resultUrls"] for message in queued] == [urls]
    assert tasks.get("t1").state is TaskState.RECEIVED  # type: ignore[union-attr]


def test_a_result_the_provider_cannot_verify_on_the_last_attempt_is_left_to_polling(
    start_simulator: StartSimulator, client: redis.Redis, app_env: dict[str, str]
) -> None:
    """Given a genuine result called back, and the provider in maintenance through the message's
    last attempt (an outage longer than the queue's ~45 minutes of retries)
    When that attempt runs
    Then the task is not failed (nothing says its result is false): it waits for the polling
    fallback, which queues the result once the provider answers again. It ended failed, with a
    failed manifest, its result links still valid."""
    sim = start_simulator()
    callback, parts = received_while_in_maintenance(sim, client, app_env)
    task_id = callback.task_id
    assert parts.polling is not None

    with pytest.raises(ProviderUnavailable):
        parts.processor.process(callback)  # not the last attempt: retried as before
    assert parts.processor.process(callback, final_attempt=True) is TaskState.SUBMITTED
    assert parts.tasks.get(task_id).state is TaskState.SUBMITTED  # type: ignore[union-attr]

    sim.provider.config = dataclasses.replace(sim.provider.config, maintenance=False)
    assert parts.polling.poller.run_once().queued == 1
    assert parts.tasks.get(task_id).state is TaskState.RECEIVED  # type: ignore[union-attr]


def test_a_result_whose_links_the_provider_cannot_renew_on_the_last_attempt_is_left_to_polling(
    start_simulator: StartSimulator, client: redis.Redis, app_env: dict[str, str]
) -> None:
    """Given a result whose links expired before the download, and the provider in maintenance
    through the message's last attempt (no fresh link: an outage longer than the queue's retries)
    When that attempt runs
    Then the task is not recorded partial with those files failed: it waits for the polling
    fallback, which queues the result once the provider answers again, and the next attempt
    stores every file through fresh links."""
    sim = start_simulator(faults=FaultConfig(file_expired_share=1.0))
    callback, parts = received_while_in_maintenance(sim, client, app_env, MJHOOK_VERIFY_RESULTS="false")
    task_id = callback.task_id
    assert parts.polling is not None

    with pytest.raises(FreshLinkPending):
        parts.processor.process(callback)  # not the last attempt: retried as before
    assert parts.processor.process(callback, final_attempt=True) is TaskState.SUBMITTED
    assert parts.tasks.get(task_id).state is TaskState.SUBMITTED  # type: ignore[union-attr]

    sim.provider.config = dataclasses.replace(sim.provider.config, maintenance=False)
    assert parts.polling.poller.run_once().queued == 1
    (queued,) = [
        dramatiq.Message.decode(body).args[0]
        for body in client.hvals(keys.broker_messages(BROKER_NAMESPACE, CALLBACK_QUEUE))
    ]
    assert parts.processor.process(Callback.from_message(queued)) is TaskState.STORED


def test_links_the_provider_cannot_renew_after_the_last_hand_off_fail_their_files(
    start_simulator: StartSimulator, client: redis.Redis, app_env: dict[str, str]
) -> None:
    """Given a task already handed back to polling MAX_POLL_HANDOFFS times, its links expired and
    the provider in maintenance again through the last attempt, then the files are recorded
    failed with the reason, the task ends: it is not handed back once more."""
    sim = start_simulator(faults=FaultConfig(file_expired_share=1.0))
    callback, parts = received_while_in_maintenance(sim, client, app_env, MJHOOK_VERIFY_RESULTS="false")
    task_id = callback.task_id
    parts.tasks.move(task_id, TaskState.RECEIVED, **{HANDOFFS_FIELD: str(MAX_POLL_HANDOFFS)})

    assert parts.processor.process(callback, final_attempt=True) is TaskState.FAILED
    manifest = parts.store.get_json(manifest_key(task_id))
    assert all("no fresh link for now" in error["reason"] for error in manifest["errors"])
    assert len(manifest["errors"]) == len(callback.result_urls)


# --- a provider answering beyond reason, or failing for good ---------------------------------


def overdue(
    client: redis.Redis, provider: ProviderClient, *task_ids: str
) -> tuple[SilentTaskPoller, TaskStore, FakeClock]:
    """A poller of ``provider``, its tasks and its clock, once ``task_ids`` (submitted in that
    order) are overdue."""
    clock = FakeClock(2_000_000.0)
    poller, tasks = silent_poller(client, provider, clock)
    for task_id in task_ids:
        SubmittedTasks(client, tasks, ttl_s=86_400, clock=clock).record(task_id, {})
        clock.now += 1
    clock.now += GRACE_S
    return poller, tasks, clock


@pytest.mark.parametrize("value", ["inf", "1e9", "99999999999", "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_a_retry_after_beyond_reason_holds_the_polls_an_hour_at_most(client: redis.Redis, value: str) -> None:
    """Given the provider answering a poll 429 with a Retry-After of years, or of infinity
    When a pass runs
    Then it stops, holding the polls an hour at most. ``1e9`` held them ~31 years; ``inf``
    raised OverflowError out of every pass, which never polled again."""

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": value}, json={"code": 429, "msg": "slow down"})

    poller, _, _ = overdue(client, mock_provider(handle, attempts=1), "t1")

    assert "429" in poller.run_once().stopped
    assert client.pttl(keys.POLL_HOLD) <= MAX_POLL_HOLD_S * 1000


class UnavailableProvider:
    """A provider whose record-info is always unavailable, asking to come back after
    ``retry_after`` seconds (as another client than shared.provider's might)."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after

    def record_info(self, task_id: str) -> None:
        raise ProviderUnavailable("provider answered 429", code=429, retry_after=self.retry_after)


@pytest.mark.parametrize(
    ("retry_after", "held"), [(float("inf"), False), (float("nan"), False), (-1.0, False), (1e9, True)]
)
def test_a_hold_is_cut_to_an_hour_whatever_retry_after_the_error_carries(
    client: redis.Redis, retry_after: float, held: bool
) -> None:
    """Given a provider error asking to hold the polls for infinity, not a number, a negative
    time or ~31 years (shared.provider reads none of them, but the error may come from elsewhere)
    Then the polls are held an hour at most, or not at all: ``inf`` and ``nan`` raised out of
    every pass."""
    poller, _, _ = overdue(client, UnavailableProvider(retry_after), "t1")  # type: ignore[arg-type]

    assert "429" in poller.run_once().stopped

    assert (client.exists(keys.POLL_HOLD) == 1) is held
    assert client.pttl(keys.POLL_HOLD) <= MAX_POLL_HOLD_S * 1000


def finished_details(task_id: str, param_json: bytes = b'"{}"') -> bytes:
    return (
        b'{"code": 200, "msg": "success", "data": {"taskId": "%s", "successFlag": 1, "paramJson": %s,'
        b' "resultInfoJson": {"resultUrls": [{"resultUrl": "https://cdn.example/0.png"}]}}}'
        % (task_id.encode(), param_json)
    )


def test_one_tasks_unexpected_error_is_counted_and_the_pass_goes_on(client: redis.Redis) -> None:
    """Given two overdue tasks, the first one's poll failing with an error that is no provider
    error (a bug, a hostile answer no check foresaw)
    When a pass runs
    Then the second is polled and queued all the same; the first is counted an error, and given up
    once its wait is over. The error ended the pass before the second, every pass, and the
    first was polled for good."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.params["taskId"] == "t-bug":
            raise RuntimeError("a bug")
        return httpx.Response(200, content=finished_details("t-done"))

    poller, tasks, clock = overdue(client, mock_provider(handle, attempts=1), "t-bug", "t-done")

    summary = poller.run_once()

    assert (summary.polled, summary.queued, summary.errors, summary.stopped) == (1, 1, 1, "")
    assert tasks.get("t-done").state is TaskState.RECEIVED  # type: ignore[union-attr]
    assert tasks.get("t-bug").state is TaskState.SUBMITTED  # type: ignore[union-attr]
    clock.now += GIVE_UP_S
    assert poller.run_once().given_up == 1
    record = tasks.get("t-bug")
    assert record is not None
    assert record.state is TaskState.FAILED
    assert "poll failed: RuntimeError('a bug')" in record.fields["reason"]


def test_a_record_info_with_a_param_json_nested_too_deep_is_polled_like_any(client: redis.Redis) -> None:
    """A paramJson object 300 levels deep raised TypeError out of the pass, before the tasks after
    it and before the give-up check: the task was polled for good, its result never queued."""
    deep = b"[" * 300 + b"]" * 300

    def handle(request: httpx.Request) -> httpx.Response:
        task_id = request.url.params["taskId"]
        return httpx.Response(
            200, content=finished_details(task_id, deep if task_id == "t-deep" else b'"{}"')
        )

    poller, _, _ = overdue(client, mock_provider(handle, attempts=1), "t-deep", "t-plain")

    summary = poller.run_once()

    assert (summary.polled, summary.queued, summary.errors) == (2, 2, 0)


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json={"code": 500, "msg": "server error"}),
        httpx.Response(200, json={"code": 455, "msg": "maintenance"}),
        httpx.Response(200, json={"code": 505, "msg": "feature not available"}),
        httpx.Response(200, content=b"<html>proxy error</html>"),
        httpx.ConnectError("refused"),
    ],
    ids=["500", "455", "505", "unreadable", "unreachable"],
)
def test_a_task_whose_record_info_always_fails_is_given_up_after_its_wait(
    client: redis.Redis, answer: httpx.Response | Exception
) -> None:
    """Given a task whose record-info always answers an error (README: MJHOOK_POLL_GIVE_UP_S)
    When a pass polls it before its wait is over, and after
    Then it is left submitted, and then failed with the reason: the give-up check came only after
    a poll that succeeded, so the task was polled for good. A refusal of the account (401, a
    wrong URL's 404 page) still fails no task: see the tests above."""

    def handle(request: httpx.Request) -> httpx.Response:
        if isinstance(answer, Exception):
            raise answer
        return answer

    poller, tasks, clock = overdue(client, mock_provider(handle, attempts=1), "t1")
    assert poller.run_once().stopped
    assert tasks.get("t1").state is TaskState.SUBMITTED  # type: ignore[union-attr]

    clock.now += GIVE_UP_S
    summary = poller.run_once()

    assert (summary.given_up, bool(summary.stopped)) == (1, True)
    record = tasks.get("t1")
    assert record is not None
    assert record.state is TaskState.FAILED
    assert (
        "no result from the provider within 1000 s of submission (its last poll: " in record.fields["reason"]
    )


# --- review findings of session 16 ----------------------------------------------------------------


def queued_task_ids(client: redis.Redis) -> list[str]:
    bodies = client.hvals(keys.broker_messages(BROKER_NAMESPACE, CALLBACK_QUEUE))
    return [dramatiq.Message.decode(body).args[0]["taskId"] for body in bodies]


def test_a_gateway_s_501_page_queues_no_failure(client: redis.Redis) -> None:
    """A 501 page without the provider's body (a proxy's, a WAF's) says nothing of the task: the
    poll queued a failure for it, as if the provider had said its generation failed."""

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(501, text="<html><h1>501 Not Implemented</h1></html>")

    clock = FakeClock(2_000_000.0)
    poller, tasks = silent_poller(client, mock_provider(handle, sleep=lambda _s: None), clock)
    SubmittedTasks(client, tasks, ttl_s=86_400, clock=clock).record("t1", {})
    clock.now += GRACE_S

    summary = poller.run_once()

    assert queued_task_ids(client) == []
    assert summary.stopped  # the provider's availability, as any gateway's 5xx
    record = tasks.get("t1")
    assert record is not None
    assert record.state is TaskState.SUBMITTED


def test_a_record_this_version_cannot_read_is_neither_queued_each_pass_nor_ends_the_pass(
    client: redis.Redis,
) -> None:
    """Given a submitted task whose record another version wrote (a state this one does not know)
    When it is polled, finished, in five passes, and then past its give-up time
    Then its result is never queued (it was queued again at every pass: the record could not be
    marked received after it), and the pass past its give-up goes on to the next task (the
    give-up raised out of the pass)."""
    done = {"successFlag": 1, "resultInfoJson": {"resultUrls": ["https://cdn.example/0.png"]}}
    generating = {"successFlag": 0}

    def handle(request: httpx.Request) -> httpx.Response:
        data = done if request.url.params["taskId"] == "t-other-version" else generating
        return httpx.Response(200, json={"code": 200, "msg": "success", "data": data})

    clock = FakeClock(2_000_000.0)
    poller, tasks = silent_poller(client, mock_provider(handle), clock)
    submitted = SubmittedTasks(client, tasks, ttl_s=86_400, clock=clock)
    submitted.record("t-other-version", {})
    client.hset(keys.task("t-other-version"), "state", "verifying")
    clock.now += GRACE_S
    for _ in range(5):
        assert poller.run_once().errors == 1
        clock.now += INTERVAL_S + 1
    assert queued_task_ids(client) == []

    submitted.record("t-silent", {})
    clock.now += GIVE_UP_S + 1
    summary = poller.run_once()

    assert summary.given_up == 1  # t-silent, after the task it could not give up
    record = tasks.get("t-silent")
    assert record is not None
    assert record.state is TaskState.FAILED


class SlowPolls:
    """A poller each of whose polls takes ``took_s`` seconds by ``monotonic`` (a slow provider);
    every task is still generating."""

    def __init__(self, monotonic: FakeClock, took_s: float) -> None:
        self.polled: list[str] = []
        self._monotonic = monotonic
        self._took_s = took_s

    def poll(self, task_id: str) -> PollResult:
        self.polled.append(task_id)
        self._monotonic.sleep(self._took_s)
        return PollResult(task_id, PollOutcome.GENERATING, "successFlag 0")


def test_a_pass_starts_no_poll_once_its_budget_is_spent(client: redis.Redis) -> None:
    """Given three silent tasks past the grace and a provider taking 150 s per poll, with a pass
    budget of 120 s (the pass's lock lives only a minute longer)
    When a pass runs
    Then it polls the first only; the others wait for the next pass. A pass going on past its
    budget outlives its lock, and a second pass may start beside it."""
    clock, monotonic = FakeClock(2_000_000.0), FakeClock(0.0)
    tasks = TaskStore(client, ttl_s=86_400, clock=clock)
    submitted = SubmittedTasks(client, tasks, ttl_s=86_400, clock=clock)
    for task_id in ("t1", "t2", "t3"):
        submitted.record(task_id, {})
        clock.now += 1
    clock.now += GRACE_S
    polls = SlowPolls(monotonic, took_s=150)
    poller = SilentTaskPoller(
        submitted=submitted,
        tasks=tasks,
        poller=polls,  # type: ignore[arg-type]
        starts=PollStarts(client, max_starts=3, ttl_s=86_400),
        grace_s=GRACE_S,
        interval_s=INTERVAL_S,
        give_up_s=GIVE_UP_S,
        budget_s=120,
        clock=clock,
        monotonic=monotonic,
    )

    summary = poller.run_once()

    assert polls.polled == ["t1"]
    assert summary.polled == 1


# --- a worker killed during a poll's give-up ----------------------------------------------------


class Killed(BaseException):
    """The worker process dies here (SIGKILL): nothing after this point runs."""


class StillGenerating:
    """A provider whose every task is still generating: each overdue task is given up."""

    def poll(self, task_id: str) -> PollResult:
        return PollResult(task_id, PollOutcome.GENERATING, "still generating")


def giving_up(
    parts: WorkerParts,
    *,
    tasks: TaskStore | None = None,
    record_failure: Callable[[Callback, str], bool | None] | None = None,
) -> SilentTaskPoller:
    """A pass over ``parts``' Redis giving up on every submitted task at once, recording its
    second looks in ``parts.pending`` (as build_parts wires it); ``tasks`` moves the tasks."""
    tasks = tasks or parts.tasks
    return SilentTaskPoller(
        submitted=SubmittedTasks(parts.tasks.client, tasks, ttl_s=86_400),
        tasks=tasks,
        poller=StillGenerating(),  # type: ignore[arg-type]
        starts=PollStarts(parts.tasks.client, max_starts=3, ttl_s=86_400),
        grace_s=0,
        interval_s=0,
        give_up_s=0,
        record_failure=record_failure,
        metrics=parts.metrics,
        pending=parts.pending,
    )


def sweep_due_looks(runtime: WorkerRuntime) -> int:
    """One sweep of ``runtime``'s second looks, taken as if their wait had passed."""
    from workers.second_look import PendingGiveUps, SecondLookSweeper

    due = PendingGiveUps(runtime.parts().tasks.client, after_s=0, clock=lambda: time.time() + 3600)
    return SecondLookSweeper(due, runtime._look_again, interval_s=60, hold_s=60).sweep()


@pytest.fixture
def healthy_worker(app_env: dict[str, str]) -> WorkerRuntime:
    runtime = WorkerRuntime(Settings.from_env(app_env))
    ready_bucket(runtime.parts().store)
    return runtime


def assert_failed_with_its_manifest(parts: WorkerParts, task_id: str) -> None:
    assert parts.tasks.get(task_id).state is TaskState.FAILED  # type: ignore[union-attr]
    manifest = parts.store.get_json(f"tasks/{task_id}/manifest.json")
    assert manifest is not None, "a failed task without a manifest, and nothing left to write it"
    assert (manifest["status"], manifest["code"]) == ("failed", 500)
    assert "still generating" in manifest["msg"]


def test_a_poll_give_up_killed_after_the_move_leaves_a_look_that_writes_its_manifest(
    healthy_worker: WorkerRuntime,
) -> None:
    """Given a task the pass gives up on
    When the worker dies after the task moved to failed, before its manifest was written
    Then no later pass sees it (it is no longer submitted), but the second look recorded before
    the move writes the manifest."""
    parts = healthy_worker.parts()
    SubmittedTasks(parts.tasks.client, parts.tasks, ttl_s=86_400).record("task-p", {})

    def die(callback: Callback, reason: str) -> bool:
        raise Killed

    with pytest.raises(Killed):
        giving_up(parts, record_failure=die).run_once()
    assert parts.tasks.get("task-p").state is TaskState.FAILED  # type: ignore[union-attr]

    # The worker restarts: a later pass finds nothing to give up; the due look finishes the job.
    assert giving_up(parts, record_failure=parts.processor.record_failure).run_once().given_up == 0
    assert sweep_due_looks(healthy_worker) == 1

    assert_failed_with_its_manifest(parts, "task-p")
    assert parts.tasks.client.zcard(keys.GIVE_UPS_PENDING) == 0


def test_a_poll_give_up_killed_before_its_move_leaves_no_look_and_the_next_pass_ends_it(
    healthy_worker: WorkerRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a task the pass gives up on
    When the worker dies before the move's transaction ran
    Then no second look is left (the look goes in with the move), the task is still submitted,
    and the next pass gives it up: failed, with its manifest, counted once."""
    parts = healthy_worker.parts()
    SubmittedTasks(parts.tasks.client, parts.tasks, ttl_s=86_400).record("task-p", {})
    dying = TaskStore(parts.tasks.client, ttl_s=86_400)

    def die(*args: object, **kwargs: object) -> TaskState | None:
        raise Killed

    monkeypatch.setattr(dying, "fail_submitted", die)
    with pytest.raises(Killed):
        giving_up(parts, tasks=dying, record_failure=parts.processor.record_failure).run_once()
    assert parts.tasks.get("task-p").state is TaskState.SUBMITTED  # type: ignore[union-attr]
    assert parts.tasks.client.zcard(keys.GIVE_UPS_PENDING) == 0

    restarted = giving_up(parts, record_failure=parts.processor.record_failure)
    assert restarted.run_once().given_up == 1

    assert_failed_with_its_manifest(parts, "task-p")
    assert parts.tasks.client.zcard(keys.GIVE_UPS_PENDING) == 0
    assert parts.metrics.registry.get_sample_value("mjhook_tasks_total", {"outcome": "failed"}) == 1


def test_a_poll_give_up_look_leaves_a_task_handed_back_to_the_polling_since(
    healthy_worker: WorkerRuntime,
) -> None:
    """Given a task the pass gave up on, its worker killed before the manifest (its look pending)
    When a late callback of it is handed back to the polling fallback before the look runs
    Then the look leaves it submitted: the polling fallback's own give-up ends it, not this one's."""
    parts = healthy_worker.parts()
    submitted = SubmittedTasks(parts.tasks.client, parts.tasks, ttl_s=86_400)
    submitted.record("task-p", {})

    def die(callback: Callback, reason: str) -> bool:
        raise Killed

    with pytest.raises(Killed):
        giving_up(parts, record_failure=die).run_once()
    assert parts.tasks.client.zcard(keys.GIVE_UPS_PENDING) == 1
    parts.tasks.move("task-p", TaskState.RECEIVED)  # a late callback, not verifiable: handed back
    assert submitted.wait_again("task-p")

    assert sweep_due_looks(healthy_worker) == 1

    assert parts.tasks.get("task-p").state is TaskState.SUBMITTED  # type: ignore[union-attr]
    assert parts.store.get_json("tasks/task-p/manifest.json") is None


def test_a_poll_give_up_whose_manifest_storage_cannot_take_keeps_its_look_till_it_can(
    healthy_worker: WorkerRuntime, app_env: dict[str, str]
) -> None:
    """Given object storage down when the pass gives up on a task (record_failure says False)
    Then the give-up's second look stays, and writes the manifest once storage is back."""
    from tests.support.procs import free_port

    settings = Settings.from_env(app_env)
    down = WorkerRuntime(settings.model_copy(update={"s3_endpoint": f"http://127.0.0.1:{free_port()}"}))
    parts = down.parts()
    SubmittedTasks(parts.tasks.client, parts.tasks, ttl_s=86_400).record("task-p", {})

    assert giving_up(parts, record_failure=parts.processor.record_failure).run_once().given_up == 1
    assert parts.tasks.client.zcard(keys.GIVE_UPS_PENDING) == 1

    assert sweep_due_looks(healthy_worker) == 1
    assert_failed_with_its_manifest(healthy_worker.parts(), "task-p")
