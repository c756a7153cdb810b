"""Callbacks: the exact format, the retry schedule, the signature."""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import threading
import time
from collections.abc import Callable

import httpx
import orjson
import pytest

from simulator import FaultConfig, RunningSimulator, SimulatorConfig
from simulator.callbacks import CallbackDelivery, callback_body, webhook_signature
from simulator.scheduler import Scheduler
from tests.simulator.support import (
    Receiver,
    SimFactory,
    TricklingReceiver,
    api,
    details,
    result_urls,
    submit,
    wait_done,
)


def test_a_finished_task_calls_back_in_the_providers_exact_format(
    sim: RunningSimulator, receiver: Receiver
) -> None:
    with api(sim) as client:
        task_id = submit(client, prompt="a beautiful landscape", callBackUrl=receiver.url)
        [request] = receiver.wait_for(1)
        urls = result_urls(details(client, task_id))

    assert request.path == "/callbacks/midjourney"
    assert request.headers["Content-Type"] == "application/json"
    assert "X-Webhook-Signature" not in request.headers
    body = request.json()
    assert body == {
        "code": 200,
        "msg": "success",
        "data": {"taskId": task_id, "promptJson": body["data"]["promptJson"], "resultUrls": urls},
    }
    assert list(body) == ["code", "msg", "data"]
    assert list(body["data"]) == ["taskId", "promptJson", "resultUrls"]
    prompt = orjson.loads(body["data"]["promptJson"])
    assert prompt["prompt"] == "a beautiful landscape"
    assert prompt["model"] == "midjourney"
    assert len(urls) == 4


def test_a_failed_generation_calls_back_with_code_500_and_no_urls(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    sim = make_sim(faults=FaultConfig(failure_share=1.0))
    with api(sim) as client:
        task_id = submit(client, callBackUrl=receiver.url)
        [request] = receiver.wait_for(1)
    body = request.json()
    assert body["code"] == 500
    assert body["msg"] == "Midjourney generation failed"
    assert body["data"]["taskId"] == task_id
    assert body["data"]["resultUrls"] == []
    assert orjson.loads(body["data"]["promptJson"])["prompt"] == "a cat"


def test_non_2xx_answers_are_retried_on_the_scaled_1_5_15_minute_schedule(
    sim: RunningSimulator, receiver: Receiver
) -> None:
    # Given a receiver that answers 500 twice, then 200
    receiver.script = [500, 500]
    with api(sim) as client:
        task_id = submit(client, callBackUrl=receiver.url)
        # Then the callback arrives three times, the same body each time
        requests = receiver.wait_for(3)
    assert sim.wait_idle(5.0)
    attempts = sim.attempts(task_id)

    assert [a.status for a in attempts] == [500, 500, 200]
    assert [a.attempt for a in attempts] == [1, 2, 3]
    assert len({r.body for r in requests}) == 1
    assert len(receiver.requests) == 3
    # And each retry was due its step of the schedule (1 min, then 5 min, at time_scale 0.001)
    # after the attempt before it ended (it is scheduled as that attempt is recorded: never sooner)
    first, second, third = attempts
    assert second.due_at >= first.started_at + first.duration_s + 0.06
    assert third.due_at >= second.started_at + second.duration_s + 0.3


class NotingScheduler(Scheduler):
    """A scheduler that notes the delay each job is asked for and runs it at once, on the calling
    thread: a schedule read, never waited out."""

    def __init__(self) -> None:
        super().__init__(threads=1, name="noting")
        self.delays_s: list[float] = []

    def call_later(self, delay_s: float, job: Callable[[], None]) -> None:
        self.delays_s.append(delay_s)
        job()


def test_callback_retries_are_asked_for_on_the_scaled_1_5_15_minute_schedule_exactly(
    receiver: Receiver,
) -> None:
    """Given deliveries on the schedule of a simulator at time_scale 0.001, and a receiver that
    answers every attempt 500
    When a callback is delivered
    Then the first attempt is asked for at once and the three retries exactly 60, 300 and 900
    seconds (scaled) after the attempt before each, then it gives up. Through a running simulator
    (the test above) a retry can be shown no sooner than its step, not on it."""
    receiver.default_status = 500
    scheduler = NotingScheduler()
    try:
        with httpx.Client(trust_env=False, timeout=5.0) as client:
            delivery = CallbackDelivery(
                scheduler=scheduler,
                client=client,
                retry_delays_s=SimulatorConfig(time_scale=0.001).scaled_retry_delays_s,
            )
            delivery.deliver(receiver.url, callback_body("t-1", "{}", []))
    finally:
        scheduler.stop()

    assert scheduler.delays_s == pytest.approx([0.0, 0.06, 0.3, 0.9])
    assert [a.status for a in delivery.attempts("t-1")] == [500, 500, 500, 500]
    assert len(receiver.requests) == 4
    assert delivery.outstanding("t-1") == 0


def test_the_provider_gives_up_after_three_retries(make_sim: SimFactory, receiver: Receiver) -> None:
    sim = make_sim(time_scale=0.0002)
    receiver.default_status = 503
    with api(sim) as client:
        task_id = submit(client, callBackUrl=receiver.url)
        wait_done(client, task_id)
    assert sim.wait_idle(5.0)
    time.sleep(0.3)  # longer than any further retry would take
    assert [a.status for a in sim.attempts(task_id)] == [503, 503, 503, 503]
    assert len(receiver.requests) == 4


def test_a_timeout_or_refused_connection_counts_as_a_failed_attempt(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    sim = make_sim(callback_timeout_s=0.2)
    receiver.delays_s = [0.6]  # the first answer comes too late
    with api(sim) as client:
        slow = submit(client, callBackUrl=receiver.url)
        refused = submit(client, callBackUrl="http://127.0.0.1:9/callbacks/midjourney")
        receiver.wait_for(2)
    assert sim.wait_idle(5.0)

    slow_attempts = sim.attempts(slow)
    assert [a.status for a in slow_attempts] == [None, 200]
    assert "Timeout" in (slow_attempts[0].error or "")
    assert [a.status for a in sim.attempts(refused)] == [None, None, None, None]


def test_an_error_outside_httpx_while_sending_is_a_failed_attempt_and_retried(make_sim: SimFactory) -> None:
    # Given a network that fails a send with a UnicodeError (what the idna codec raises for a
    # host label over 63 characters), not an httpx error
    def refuse(request: httpx.Request) -> httpx.Response:
        raise UnicodeError("encoding with 'idna' codec failed (UnicodeError: label empty or too long)")

    sim = make_sim(time_scale=0.0001, transport=httpx.MockTransport(refuse))
    with api(sim) as client:
        task_id = submit(client, callBackUrl="http://127.0.0.1:9/callbacks/midjourney")
        wait_done(client, task_id)
    assert sim.wait_idle(5.0)

    # Then every attempt is recorded as failed, and retried on the schedule until the provider gives up
    attempts = sim.attempts(task_id)
    assert [a.attempt for a in attempts] == [1, 2, 3, 4]
    assert all(a.status is None and "UnicodeError" in (a.error or "") for a in attempts)


def test_an_answer_trickling_past_the_timeout_is_a_timeout_and_retried(
    make_sim: SimFactory, trickling_receiver: TricklingReceiver
) -> None:
    # Given a receiver whose first answer is a 200 sent one byte every 0.1 s (about 6 s in all),
    # each byte well within the 1 s callback timeout
    sim = make_sim(callback_timeout_s=1.0)
    with api(sim) as client:
        task_id = submit(client, callBackUrl=trickling_receiver.url)
        wait_done(client, task_id)
    assert sim.wait_idle(10.0)

    # Then the provider stops reading after 1 s for the whole answer: a timeout while reading it
    # (not an answer read to its end and found late), retried
    first, retry = sim.attempts(task_id)
    assert (first.status, retry.status) == (None, 200)
    assert (first.error or "").startswith("ReadTimeout"), first.error
    assert first.duration_s >= 0.9
    assert (first.attempt, retry.attempt) == (1, 2)
    assert trickling_receiver.requests == 2


def test_callbacks_are_signed_when_a_webhook_key_is_set(make_sim: SimFactory, receiver: Receiver) -> None:
    sim = make_sim(hmac_key="shh-its-a-key")
    with api(sim) as client:
        task_id = submit(client, callBackUrl=receiver.url)
        [request] = receiver.wait_for(1)

    timestamp = request.headers["X-Webhook-Timestamp"]
    assert abs(int(timestamp) - time.time()) < 30
    expected = hmac.new(b"shh-its-a-key", f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
    signature = base64.b64decode(request.headers["X-Webhook-Signature"])
    assert hmac.compare_digest(signature, expected)
    assert request.headers["X-Webhook-Signature"] == webhook_signature(
        "shh-its-a-key", task_id, int(timestamp)
    )


def test_tasks_without_a_callback_url_are_only_polled(sim: RunningSimulator, receiver: Receiver) -> None:
    with api(sim) as client:
        task_id = submit(client)
        done = wait_done(client, task_id)
    assert done["successFlag"] == 1
    assert sim.attempts(task_id) == []


def test_a_slow_callback_receiver_does_not_hold_back_other_tasks_generation(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    # Given one delivery thread, busy with a callback the receiver holds unanswered
    sim = make_sim(delivery_threads=1, callback_timeout_s=60.0)
    receiver.released.clear()
    try:
        with api(sim) as client:
            held = submit(client, callBackUrl=receiver.url)
            receiver.wait_for(1)
            # When another task is submitted
            other = submit(client)
            # Then it finishes generating while that callback is still unanswered
            done = wait_done(client, other, timeout_s=5.0)
            unanswered = sim.attempts(held)
    finally:
        receiver.released.set()
    assert done["successFlag"] == 1
    assert unanswered == []


def test_a_callback_can_spell_the_id_task_id_signed_for_the_same_id(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    # Given a provider whose callbacks all spell the id task_id, signing them
    sim = make_sim(hmac_key="shh-its-a-key", faults=FaultConfig(task_id_spelling_share=1.0))
    with api(sim) as client:
        # When a task is submitted (the API's answer names it taskId: submit() checks so)
        task_id = submit(client, callBackUrl=receiver.url)
        [request] = receiver.wait_for(1)
        record = details(client, task_id)
    assert sim.wait_idle(5.0)

    # Then its callback names the id task_id, in taskId's place, and taskId not at all
    body = request.json()
    assert body == {
        "code": 200,
        "msg": "success",
        "data": {
            "task_id": task_id,
            "promptJson": body["data"]["promptJson"],
            "resultUrls": result_urls(record),
        },
    }
    assert list(body["data"]) == ["task_id", "promptJson", "resultUrls"]
    # And the signature covers that same id
    timestamp = int(request.headers["X-Webhook-Timestamp"])
    assert request.headers["X-Webhook-Signature"] == webhook_signature("shh-its-a-key", task_id, timestamp)
    # And the API keeps taskId; the delivery is recorded under the task's id
    assert record["taskId"] == task_id
    assert [a.status for a in sim.attempts(task_id)] == [200]


def test_a_callback_can_carry_a_malformed_prompt_json_while_the_task_keeps_it_whole(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    # Given a provider whose callbacks all carry a malformed promptJson
    sim = make_sim(faults=FaultConfig(malformed_prompt_share=1.0))
    with api(sim) as client:
        # When a task is submitted and calls back
        task_id = submit(client, prompt="a lighthouse", callBackUrl=receiver.url)
        [request] = receiver.wait_for(1)
        record = wait_done(client, task_id)
        # (an upscale starts from the task's own promptJson)
        upscale = client.post("/api/v1/mj/generateUpscale", json={"taskId": task_id, "imageIndex": 0}).json()

    # Then the callback's promptJson is no JSON: the task's cut in half
    body = request.json()
    sent = body["data"]["promptJson"]
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(sent)
    whole = sim.provider.task(task_id).prompt_json
    assert sent == whole[: len(whole) // 2]
    # And the rest of the callback is as ever
    assert body["code"] == 200
    assert body["data"]["taskId"] == task_id
    assert body["data"]["resultUrls"] == result_urls(record)
    # And the task keeps the well-formed one: record-info's paramJson parses, and an upscale
    # takes its prompt from it
    assert orjson.loads(whole)["prompt"] == "a lighthouse"
    assert orjson.loads(record["paramJson"])["prompt"] == "a lighthouse"
    assert upscale["code"] == 200, upscale
    upscaled = sim.provider.task(upscale["data"]["taskId"]).prompt_json
    assert orjson.loads(upscaled)["prompt"] == "a lighthouse"


def test_at_the_default_shares_callbacks_name_the_id_taskId_and_carry_the_tasks_prompt_json(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    # Given the task_id spelling and malformed promptJson shares at their default, 0.0
    faults = FaultConfig(seed=5, failure_share=0.5)
    assert (faults.task_id_spelling_share, faults.malformed_prompt_share) == (0.0, 0.0)
    sim = make_sim(faults=faults)
    # When tasks, some failing, call back
    with api(sim) as client:
        task_ids = [submit(client, prompt="a lighthouse", callBackUrl=receiver.url) for _ in range(8)]
        receiver.wait_for(8)
    # Then every callback names the id taskId and carries its task's well-formed promptJson, as
    # before the switches existed
    bodies = receiver.bodies()
    assert sorted(body["data"]["taskId"] for body in bodies) == sorted(task_ids)
    assert all(list(body["data"]) == ["taskId", "promptJson", "resultUrls"] for body in bodies)
    for body in bodies:
        sent = body["data"]["promptJson"]
        assert sent == sim.provider.task(body["data"]["taskId"]).prompt_json
        assert orjson.loads(sent)["prompt"] == "a lighthouse"
    assert {body["code"] for body in bodies} == {200, 500}


#: A receiver's answer too long to keep: 64 MiB of body after a 200.
HUGE_ANSWER_BYTES = 64 * 1024 * 1024
HUGE_ANSWER_PIECE = b"x" * 65536


def test_a_huge_answer_to_a_callback_is_taken_by_its_status_and_not_read_whole(make_sim: SimFactory) -> None:
    # Given a receiver that answers 200 followed by a 64 MiB body, counting what it could send
    # until the simulator hung up
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10.0)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/callbacks/midjourney"
    request_heads: list[bytes] = []
    sent: list[int] = []

    def answer_hugely() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10.0)
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            request_heads.append(head)
            total = 0
            try:
                conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {HUGE_ANSWER_BYTES}\r\n\r\n".encode())
                while total < HUGE_ANSWER_BYTES:
                    conn.sendall(HUGE_ANSWER_PIECE)
                    total += len(HUGE_ANSWER_PIECE)
            except OSError:
                pass  # the simulator hung up: what the test wants to see
            sent.append(total)

    thread = threading.Thread(target=answer_hugely, daemon=True)
    thread.start()
    try:
        sim = make_sim()
        with api(sim) as client:
            # When a task calls it back
            task_id = submit(client, callBackUrl=url)
            wait_done(client, task_id)
        thread.join(15.0)
        assert sim.wait_idle(10.0)
    finally:
        listener.close()
    # Then the callback counts as acknowledged on the answer's status
    [attempt] = sim.attempts(task_id)
    assert attempt.status == 200, attempt.error
    # And the simulator read a few KiB of the body and closed the connection: the receiver could
    # not send it whole (what it sent beyond sits in the kernel's socket buffers, a few MiB)
    [total] = sent
    assert total < HUGE_ANSWER_BYTES // 2
    # And it asked for the answer as it is, not compressed
    [head] = request_heads
    assert b"\r\naccept-encoding: identity\r\n" in head.lower()
