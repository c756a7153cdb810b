"""The provider client against the simulated provider (and, for what the simulator never does, a
scripted transport): submissions, task details, fresh links, error codes, retries."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import orjson
import pytest

from shared.errors import PermanentError, ProviderRefused, ProviderUnavailable, TransientError
from shared.provider import ProviderClient, TaskStatus, parse_record_info
from simulator import FaultConfig
from tests.support.provider import RecordingSleep, StartSimulator, client_for

CALLBACK = "http://127.0.0.1:9/callbacks/midjourney?token=t1"


def wait_finished(client: ProviderClient, task_id: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not client.record_info(task_id).finished:
        assert time.monotonic() < deadline, f"task {task_id} did not finish"
        time.sleep(0.02)


def test_a_generation_is_submitted_with_its_options_and_callback_url(start_simulator: StartSimulator) -> None:
    sim = start_simulator()
    with client_for(sim) as client:
        task_id = client.generate("a red fox", "mj_txt2img", "16:9", "7", "fast", callback_url=CALLBACK)
    task = sim.task(task_id)
    assert task.callback_url == CALLBACK
    params = orjson.loads(task.param_json)
    assert params == {
        "taskType": "mj_txt2img",
        "prompt": "a red fox",
        "aspectRatio": "16:9",
        "version": "7",
        "speed": "fast",
        "callBackUrl": CALLBACK,
    }


def test_record_info_is_normalised_while_generating_and_when_done(start_simulator: StartSimulator) -> None:
    # Given a task still generating and one finished
    sim = start_simulator()
    slow = sim.provider.submit(
        task_type="mj_txt2img", params={"prompt": "p"}, prompt={}, callback_url="", delay_s=60
    )
    with client_for(sim) as client:
        done_id = client.generate("a lighthouse", callback_url=CALLBACK)
        wait_finished(client, done_id)
        generating = client.record_info(slow.task_id)
        done = client.record_info(done_id)

    # Then the result URLs come as plain strings, and the flags as a status
    assert generating.status is TaskStatus.GENERATING
    assert not generating.finished
    assert generating.result_urls == ()
    assert done.status is TaskStatus.SUCCESS
    assert done.succeeded
    assert done.success_flag == 1
    assert done.result_urls == tuple(sim.task(done_id).result_urls)
    assert len(done.result_urls) == 4
    assert done.task_type == "mj_txt2img"
    assert orjson.loads(done.param_json or "")["prompt"] == "a lighthouse"
    assert done.error_message is None
    assert done.complete_time


def test_a_failed_generation_reads_as_failed_with_its_message(start_simulator: StartSimulator) -> None:
    sim = start_simulator(faults=FaultConfig(failure_share=1.0))
    with client_for(sim) as client:
        task_id = client.generate("x", callback_url=CALLBACK)
        wait_finished(client, task_id)
        info = client.record_info(task_id)
    assert info.status is TaskStatus.FAILED
    assert info.error_message == "Midjourney generation failed"
    assert info.error_code == 501
    assert info.result_urls == ()


def test_upscale_and_vary_make_new_tasks_from_a_grid(start_simulator: StartSimulator) -> None:
    sim = start_simulator()
    with client_for(sim) as client:
        grid = client.generate("a grid", callback_url=CALLBACK)
        wait_finished(client, grid)
        upscaled = client.upscale(grid, 2, CALLBACK)
        varied = client.vary(grid, 0, CALLBACK)
    assert sim.task(upscaled).task_type == "mj_upscale"
    assert orjson.loads(sim.task(upscaled).prompt_json)["imageIndex"] == 2
    assert sim.task(varied).task_type == "mj_vary"


@pytest.mark.parametrize("mirror", [False, True], ids=["code-in-body", "code-as-http-status"])
@pytest.mark.parametrize(
    ("config", "call", "code", "words"),
    [
        ({}, lambda c: c.generate("x", callback_url=CALLBACK), 401, "MJHOOK_PROVIDER_API_KEY"),
        ({"credits": 0}, lambda c: c.generate("x", callback_url=CALLBACK), 402, "no credits"),
        ({}, lambda c: c.generate("x" * 2001, callback_url=CALLBACK), 422, "longer than 2000"),
        ({}, lambda c: c.generate("x", "mj_nope", callback_url=CALLBACK), 422, "taskType"),
        ({}, lambda c: c.record_info("no-such-task"), 404, "does not exist"),
        ({}, lambda c: c.upscale("no-such-task", 1, CALLBACK), 404, "does not exist"),
    ],
    ids=["bad-key", "no-credits", "prompt-too-long", "bad-task-type", "unknown-task", "upscale-unknown"],
)
def test_refusals_are_permanent_errors_saying_why_and_are_not_retried(
    start_simulator: StartSimulator,
    config: dict[str, object],
    call: Callable[[ProviderClient], object],
    code: int,
    words: str,
    mirror: bool,
) -> None:
    sim = start_simulator(http_status_mirrors_code=mirror, **config)
    sleep = RecordingSleep()
    with (
        client_for(sim, api_key="wrong" if code == 401 else None, sleep=sleep) as client,
        pytest.raises(ProviderRefused, match=words) as caught,
    ):
        call(client)
    assert caught.value.code == code
    assert isinstance(caught.value, PermanentError)
    assert sleep.calls == []


@pytest.mark.parametrize("mirror", [False, True], ids=["code-in-body", "code-as-http-status"])
def test_maintenance_is_retried_with_exponential_backoff_then_transient(
    start_simulator: StartSimulator, mirror: bool
) -> None:
    sim = start_simulator(maintenance=True, http_status_mirrors_code=mirror)
    sleep = RecordingSleep()
    with (
        client_for(sim, sleep=sleep, attempts=4, backoff_s=0.5, max_backoff_s=1.5) as client,
        pytest.raises(ProviderUnavailable, match="455") as caught,
    ):
        client.generate("x", callback_url=CALLBACK)
    assert caught.value.code == 455
    assert isinstance(caught.value, TransientError)
    assert sleep.calls == [0.5, 1.0, 1.5]


def test_a_rate_limited_submission_backs_off_and_then_succeeds(start_simulator: StartSimulator) -> None:
    # Given a provider taking one submission per 0.5 s window
    sim = start_simulator(rate_limit=1, rate_window_s=0.5)
    sleep = RecordingSleep(cap_s=1.0)
    with client_for(sim, sleep=sleep, backoff_s=0.3) as client:
        first = client.generate("one", callback_url=CALLBACK)
        # When a second comes at once
        second = client.generate("two", callback_url=CALLBACK)
    # Then the client waited after each 429 and was taken on a retry
    assert first != second
    assert sleep.calls[:1] == [0.3]
    assert sim.provider.admission.rate_limited == len(sleep.calls)
    assert sim.task(second).task_type == "mj_txt2img"


def test_a_rate_limit_that_outlasts_the_retries_is_transient(start_simulator: StartSimulator) -> None:
    sim = start_simulator(rate_limit=1, rate_window_s=60)
    with client_for(sim, attempts=2, backoff_s=0.01) as client:
        client.generate("one", callback_url=CALLBACK)
        with pytest.raises(ProviderUnavailable, match="429") as caught:
            client.generate("two", callback_url=CALLBACK)
    assert caught.value.code == 429


def test_download_url_gives_a_working_link_for_an_expired_one(start_simulator: StartSimulator) -> None:
    sim = start_simulator(faults=FaultConfig(file_expired_share=1.0))
    with client_for(sim) as client, httpx.Client(trust_env=False) as http:
        task_id = client.generate("x", callback_url=CALLBACK)
        wait_finished(client, task_id)
        expired = client.record_info(task_id).result_urls[0]
        fresh = client.download_url(expired)
        assert http.get(expired).status_code == 410
        answer = http.get(fresh)
    assert answer.status_code == 200
    assert answer.content == sim.expected_file(task_id, 0)


def test_download_url_refuses_a_url_not_of_the_provider(start_simulator: StartSimulator) -> None:
    sim = start_simulator()
    with client_for(sim) as client, pytest.raises(ProviderRefused) as caught:
        client.download_url("http://127.0.0.1:9/elsewhere.png")
    assert caught.value.code == 422


# --- what the simulator never does: Retry-After, transport failures, odd shapes ---------------


def scripted(
    answers: list[httpx.Response | Exception], sleep: RecordingSleep, **options: object
) -> ProviderClient:
    """A client whose requests get ``answers`` in order."""
    remaining = list(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        answer = remaining.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    http = httpx.Client(transport=httpx.MockTransport(handle))
    return ProviderClient("http://provider.test", "k", http=http, sleep=sleep, **options)  # type: ignore[arg-type]


def ok(data: object) -> httpx.Response:
    return httpx.Response(200, json={"code": 200, "msg": "success", "data": data})


def test_retry_after_is_honoured_instead_of_the_backoff() -> None:
    sleep = RecordingSleep()
    limited = httpx.Response(429, headers={"Retry-After": "3"}, json={"code": 429, "msg": "slow down"})
    client = scripted([limited, ok({"taskId": "t-1"})], sleep, backoff_s=0.1)
    assert client.generate("x", callback_url=CALLBACK) == "t-1"
    assert sleep.calls == [3.0]


def test_a_submission_that_may_have_arrived_is_not_sent_twice() -> None:
    # A read timeout after sending: the provider may have created the task already.
    sleep = RecordingSleep()
    client = scripted([httpx.ReadTimeout("slow"), ok({"taskId": "t-2"})], sleep)
    with pytest.raises(ProviderUnavailable, match="ReadTimeout"):
        client.generate("x", callback_url=CALLBACK)
    assert sleep.calls == []


def test_a_read_or_a_refused_connection_is_retried() -> None:
    sleep = RecordingSleep()
    details = {"taskId": "t-3", "successFlag": 0}
    client = scripted([httpx.ReadTimeout("slow"), ok(details)], sleep, backoff_s=0.1)
    assert client.record_info("t-3").status is TaskStatus.GENERATING
    client = scripted([httpx.ConnectError("refused"), ok({"taskId": "t-4"})], sleep, backoff_s=0.1)
    assert client.generate("x", callback_url=CALLBACK) == "t-4"
    assert sleep.calls == [0.1, 0.1]


def test_an_answer_not_in_the_providers_shape_is_transient() -> None:
    sleep = RecordingSleep()
    page = httpx.Response(200, text="<html>proxy error</html>")
    client = scripted([page, page], sleep, attempts=2, backoff_s=0.1)
    with pytest.raises(ProviderUnavailable, match="unreadable"):
        client.record_info("t")


def test_record_info_accepts_the_variants_of_the_providers_samples() -> None:
    info = parse_record_info(
        {
            "taskId": "t-5",
            "successFlag": "1",
            "paramJson": {"prompt": "p"},
            "resultInfoJson": orjson.dumps(
                {"resultUrls": [{"resultUrl": "https://a/0.png"}, "https://a/1.png"]}
            ).decode(),
        },
        task_id="t-5",
    )
    assert info.status is TaskStatus.SUCCESS
    assert info.result_urls == ("https://a/0.png", "https://a/1.png")
    assert orjson.loads(info.param_json or "") == {"prompt": "p"}
    assert parse_record_info({"successFlag": 3}, task_id="t-6").status is TaskStatus.FAILED
    assert parse_record_info({}, task_id="t-7").status is TaskStatus.GENERATING


@pytest.mark.parametrize("status", [501, 505])
def test_a_gateway_page_with_a_final_status_is_transient_not_the_provider_s_answer(status: int) -> None:
    """A 501 or 505 page without the provider's body (nginx, a WAF, a proxy) says nothing of the
    task: it was read as the provider's "generation failed", and the polling fallback queued a
    failure the provider never reported."""
    sleep = RecordingSleep()
    page = httpx.Response(status, text="<html><h1>Not Implemented</h1></html>")
    client = scripted([page, page], sleep, attempts=2, backoff_s=0.1)

    with pytest.raises(ProviderUnavailable, match=str(status)):
        client.record_info("t")

    assert sleep.calls == [0.1]  # tried again, as any gateway's 5xx of an idempotent call


def test_the_provider_s_own_generation_failed_is_final() -> None:
    answer = httpx.Response(200, json={"code": 501, "msg": "banned prompt", "data": None})
    client = scripted([answer], RecordingSleep())

    with pytest.raises(ProviderRefused) as refused:
        client.record_info("t")

    assert (refused.value.code, refused.value.provider_msg) == (501, "banned prompt")


@pytest.mark.parametrize(
    "body",
    [
        b'{"code": "\\u001c200", "msg": "success", "data": {"successFlag": 1}}',
        b'{"code": 200, "msg": "success", "data": {"successFlag": "\\u001f1", "resultInfoJson": {}}}',
    ],
    ids=["code", "successFlag"],
)
def test_a_number_spelled_with_control_characters_around_it_is_read(body: bytes) -> None:
    """str.strip() takes U+001C-U+001F off, int() does not: the number was checked stripped and
    read whole, a bare ValueError out of the client (outside the error tree: a verifier let it
    through as no transient error)."""
    client = scripted([httpx.Response(200, content=body)], RecordingSleep())

    assert client.record_info("t").status is TaskStatus.SUCCESS


def test_an_answer_quoting_our_api_key_does_not_carry_it_into_the_error() -> None:
    """A provider or a proxy quoting our Authorization header back: the error's text and msg go
    into logs, task reasons and manifests."""
    sleep = RecordingSleep()
    quoting = httpx.Response(
        200, json={"code": 422, "msg": "url not found for token Bearer k3y-s3cret", "data": None}
    )
    http = httpx.Client(transport=httpx.MockTransport(lambda request: quoting))
    client = ProviderClient("http://provider.test", "k3y-s3cret", http=http, sleep=sleep)
    with pytest.raises(ProviderRefused) as refused:
        client.download_url("http://provider.test/files/0.png")
    assert "k3y-s3cret" not in str(refused.value)
    assert refused.value.provider_msg == "url not found for token Bearer [MJHOOK_PROVIDER_API_KEY]"


def test_a_key_quoted_past_the_cut_or_in_an_error_message_is_replaced_too() -> None:
    """The key is replaced in the answer before anything cuts its msg short (a cut through the
    key kept its start) or reads record-info's errorMessage (which becomes a task's reason)."""
    key = "k3y-s3cret-0123456789"
    sleep = RecordingSleep()
    long_msg = "x" * 990 + " Bearer " + key
    details = {
        "taskId": "t1",
        "successFlag": 2,
        "errorCode": 400,
        "errorMessage": f"refused for token {key}",
        "resultInfoJson": {"resultUrls": []},
    }
    answers = [
        httpx.Response(200, json={"code": 422, "msg": long_msg, "data": None}),
        httpx.Response(200, json={"code": 200, "msg": "success", "data": details}),
    ]
    http = httpx.Client(transport=httpx.MockTransport(lambda request: answers.pop(0)))
    client = ProviderClient("http://provider.test", key, http=http, sleep=sleep)
    with pytest.raises(ProviderRefused) as refused:
        client.download_url("http://provider.test/files/0.png")
    assert "k3y-s3c" not in str(refused.value)
    assert "k3y-s3c" not in refused.value.provider_msg
    info = client.record_info("t1")
    assert info.error_message == "refused for token [MJHOOK_PROVIDER_API_KEY]"


@pytest.mark.parametrize("key", ["sk/AbCdEf+123/xyz", 'sk"quote\\slash', "sk&amp<gt>0123"])
def test_a_key_the_answer_quotes_json_escaped_is_replaced_and_no_data_is_touched(key: str) -> None:
    """An encoder escaping the key's / (PHP), " and \\ (every one) or & < > (Go) put it in the
    answer's bytes in another spelling; and a taskId or URL holding the same characters must come
    back as it was."""
    sleep = RecordingSleep()
    escaped = orjson.dumps(f"invalid Authorization: Bearer {key}").decode()
    escaped = escaped.replace("/", "\\/").replace("&", "\\u0026").replace("<", "\\u003c")
    refused = f'{{"code": 401, "msg": {escaped}, "data": null}}'.encode()
    task = orjson.dumps({"code": 200, "msg": "success", "data": {"taskId": f"task-{len(key)}"}})
    answers = [httpx.Response(200, content=refused), httpx.Response(200, content=task)]
    http = httpx.Client(transport=httpx.MockTransport(lambda request: answers.pop(0)))
    client = ProviderClient("http://provider.test", key, http=http, sleep=sleep)
    with pytest.raises(ProviderRefused) as raised:
        client.generate("x", callback_url=CALLBACK)
    assert key not in str(raised.value)
    assert raised.value.provider_msg == "invalid Authorization: Bearer [MJHOOK_PROVIDER_API_KEY]"
    assert client.generate("x", callback_url=CALLBACK) == f"task-{len(key)}"


def test_a_taskid_or_url_holding_the_key_comes_back_as_it_was() -> None:
    key = "12345678"
    sleep = RecordingSleep()
    answers = [ok({"taskId": "task-1234567890"}), ok({"downloadUrl": "https://cdn.example/f.png?k=12345678"})]
    http = httpx.Client(transport=httpx.MockTransport(lambda request: answers.pop(0)))
    client = ProviderClient("http://provider.test", key, http=http, sleep=sleep)
    assert client.generate("x", callback_url=CALLBACK) == "task-1234567890"
    assert client.download_url("https://cdn.example/f.png") == "https://cdn.example/f.png?k=12345678"
