"""Polling one task's result from the simulated provider into the real queue (Redis)."""

from __future__ import annotations

from typing import Any

import dramatiq
import orjson
import pytest
import redis

from shared import keys
from shared.callback import Callback, CallbackLimits
from shared.errors import ProviderRefused
from shared.polling import PollOutcome, ResultPoller, callback_from_record
from shared.provider import TaskRecordInfo, TaskStatus
from shared.queue import BROKER_NAMESPACE, CALLBACK_QUEUE, create_broker
from shared.settings import Settings
from shared.taskstate import TaskState, TaskStore
from simulator import FaultConfig, RunningSimulator
from tests.support.provider import StartSimulator, client_for, generated

CALLBACK = "http://127.0.0.1:9/callbacks/midjourney?token=secret"


def queued(client: redis.Redis) -> list[Callback]:
    raw = client.hvals(keys.broker_messages(BROKER_NAMESPACE, CALLBACK_QUEUE))
    return [Callback.from_message(dramatiq.Message.decode(body).args[0]) for body in raw]


def poller_for(
    sim: RunningSimulator, client: redis.Redis, **client_options: Any
) -> tuple[ResultPoller, TaskStore]:
    tasks = TaskStore(client, ttl_s=3600)
    broker = create_broker(Settings(redis_url="redis://unused"), client=client, middleware=[])
    return ResultPoller(provider=client_for(sim, **client_options), tasks=tasks, broker=broker), tasks


def finished_task(sim: RunningSimulator) -> str:
    return generated(sim, callback_url=CALLBACK, aspect_ratio="3:2").task_id


def test_a_finished_task_is_queued_like_its_callback_and_marked_received(
    start_simulator: StartSimulator, client: redis.Redis
) -> None:
    # Given a task mjhook submitted, finished at the provider, whose callback never came
    sim = start_simulator(faults=FaultConfig(drop_share=1.0))
    task_id = finished_task(sim)
    poller, tasks = poller_for(sim, client)
    tasks.mark_submitted(task_id)
    # When it is polled
    result = poller.poll(task_id)
    # Then its result is queued as a code-200 callback with the provider's URLs
    assert result.outcome is PollOutcome.QUEUED
    assert result.succeeded
    [callback] = queued(client)
    assert callback.task_id == task_id
    assert callback.code == 200
    assert callback.result_urls == tuple(sim.task(task_id).result_urls)
    assert callback.msg.startswith("success")
    # promptJson holds the request, without the callback URL and its token
    params = orjson.loads(callback.prompt_json or "")
    assert params["prompt"] == "a quiet harbour"
    assert params["aspectRatio"] == "3:2"
    assert "callBackUrl" not in params
    assert tasks.get(task_id).state is TaskState.RECEIVED  # type: ignore[union-attr]


def test_a_failed_generation_is_queued_as_a_failure_callback(
    start_simulator: StartSimulator, client: redis.Redis
) -> None:
    sim = start_simulator(faults=FaultConfig(drop_share=1.0, failure_share=1.0))
    task_id = finished_task(sim)
    poller, _ = poller_for(sim, client)
    assert poller.poll(task_id).outcome is PollOutcome.QUEUED
    [callback] = queued(client)
    assert callback.code == 500
    assert callback.msg.startswith("Midjourney generation failed")
    assert callback.result_urls == ()


def test_a_task_still_generating_or_unknown_is_not_queued(
    start_simulator: StartSimulator, client: redis.Redis
) -> None:
    sim = start_simulator()
    slow = sim.provider.submit(task_type="mj_txt2img", params={}, prompt={}, callback_url="", delay_s=60)
    poller, tasks = poller_for(sim, client)
    tasks.mark_submitted(slow.task_id)
    assert poller.poll(slow.task_id).outcome is PollOutcome.GENERATING
    assert poller.poll("never-submitted").outcome is PollOutcome.UNKNOWN
    assert queued(client) == []
    assert tasks.get(slow.task_id).state is TaskState.SUBMITTED  # type: ignore[union-attr]


def test_a_refusal_of_the_account_is_raised_not_taken_for_the_tasks(
    start_simulator: StartSimulator, client: redis.Redis
) -> None:
    sim = start_simulator()
    poller, _ = poller_for(sim, client, api_key="revoked")
    with pytest.raises(ProviderRefused) as caught:
        poller.poll("any")
    assert caught.value.code == 401


def test_a_callback_from_a_record_keeps_malformed_params_raw() -> None:
    info = TaskRecordInfo(
        task_id="t-1",
        task_type="mj_txt2img",
        status=TaskStatus.SUCCESS,
        success_flag=1,
        result_urls=("https://cdn.example/0.png",),
        error_code=None,
        error_message=None,
        param_json="{not json",
        create_time=None,
        complete_time=None,
    )
    callback = callback_from_record(info, received_at="2026-01-01T00:00:00.000Z", limits=CallbackLimits())
    assert callback.prompt_json == "{not json"
    assert callback.received_at == "2026-01-01T00:00:00.000Z"
