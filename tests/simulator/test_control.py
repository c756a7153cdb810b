"""Load runs started in a running simulator through its control routes (``/sim/v1/loads``), as
``mjhook simulate load --simulator-url`` does: the tasks are that simulator's, so workers that
verify results with it know them."""

from __future__ import annotations

import os
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner

from cli.main import main
from shared.errors import ProviderRefused, ProviderUnavailable
from simulator import RunningSimulator
from simulator.control import LOADS_PATH, run_load_in
from simulator.load import CallbackRun, LoadReport, bucket_listing, read_bucket
from tests.simulator.support import Receiver, SimFactory, api, submit
from tests.simulator.test_load import FakeBucket
from tests.support.clock import FakeClock
from tests.support.procs import free_port


def test_a_load_run_in_a_running_simulator_fires_its_callbacks_and_reports_them(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    # Given a running simulator
    sim = make_sim()
    runs: list[CallbackRun] = []

    def read(run: CallbackRun) -> LoadReport:
        runs.append(run)
        return read_bucket(run, FakeBucket(receiver, partial=""), timeout_s=5.0)

    # When a load run of 5 tasks is started in it through its control route, and waited for
    report = run_load_in(
        sim.base_url, sim.api_key, tasks=5, rate_per_s=100.0, callback_url=receiver.url, read_bucket=read
    )
    # Then its callbacks came from that simulator's own tasks, and the report counts them
    [run] = runs
    sent = {body["data"]["taskId"] for body in receiver.bodies()}
    assert sent == run.task_ids == run.acknowledged
    assert all(sim.provider.task(task_id).callback_url == receiver.url for task_id in sent)
    assert (report.tasks, report.acknowledged, report.unacknowledged) == (5, 5, 0)
    assert report.settled
    assert report.result_files == 20
    assert run.listing == bucket_listing(sim)
    assert report.problems == []
    # And the bucket is read for those tasks as for a run of its own
    assert report.manifests == {"stored": 5, "partial": 0, "failed": 0, "missing": 0}
    # And the run, as the simulator described it, is the run
    assert CallbackRun.from_json(orjson.dumps(run.to_dict())) == run


def test_another_clients_task_still_calling_back_does_not_hold_the_load_run(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    # Given a simulator (the provider's real retry schedule) with another client's task whose
    # callback goes where nothing listens: its retries are due 1, 5 and 15 minutes later
    sim = make_sim(time_scale=1.0)
    with api(sim) as client:
        submit(client, callBackUrl=f"http://127.0.0.1:{free_port()}/cb")
    # When a load run is made there, allowed to settle 5 s after its last callback is due
    report = run_load_in(
        sim.base_url, sim.api_key, tasks=3, rate_per_s=100.0, callback_url=receiver.url, settle_timeout_s=5.0
    )
    # Then it settled on its own callbacks, not waiting for the other task's retries
    assert (report.acknowledged, report.settled, report.problems) == (3, True, [])


def test_the_result_files_downloaded_are_counted_when_the_run_is_reported(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    # Given a load run whose result files are downloaded only after the callbacks were answered
    # (as mjhook acknowledges first), here while the bucket is read
    sim = make_sim()

    def download_then_read(run: CallbackRun) -> LoadReport:
        with httpx.Client(trust_env=False) as client:
            for body in receiver.bodies():
                for url in body["data"]["resultUrls"]:
                    assert client.get(url).status_code == 200
        # (the simulator counts a file once its last byte went out, a moment after the client has it)
        sim.provider.wait_served(sim.provider.result_files(run.acknowledged), 5.0)
        return run.report

    report = _two_tasks(sim, receiver, read_bucket=download_then_read)
    # Then the report counts them downloaded, not what was downloaded when the callbacks ended
    assert (report.result_files, report.result_files_served) == (8, 8)


def test_the_control_routes_want_the_api_key(make_sim: SimFactory, receiver: Receiver) -> None:
    sim = make_sim()
    with pytest.raises(ProviderRefused, match="code 401") as refused:
        run_load_in(sim.base_url, "wrong-key", tasks=1, rate_per_s=1.0, callback_url=receiver.url)
    assert refused.value.code == 401
    assert sim.provider.tasks() == []


@pytest.mark.parametrize(
    ("body", "msg"),
    [
        ({"tasks": 0, "rate": 1, "callbackUrl": "http://127.0.0.1:9/cb"}, "tasks must be a whole number"),
        ({"tasks": True, "rate": 1, "callbackUrl": "http://127.0.0.1:9/cb"}, "tasks must be a whole number"),
        ({"tasks": 1, "rate": "fast", "callbackUrl": "http://127.0.0.1:9/cb"}, "rate must be a number"),
        ({"tasks": 1, "rate": 0, "callbackUrl": "http://127.0.0.1:9/cb"}, "rate must be from"),
        ({"tasks": 1, "rate": 1, "callbackUrl": "ftp://127.0.0.1/cb"}, "callbackUrl must be an http"),
        (
            {"tasks": 1, "rate": 1, "callbackUrl": "http://127.0.0.1:9/cb", "taskType": "x"},
            "taskType must be",
        ),
        (
            {"tasks": 1, "rate": 1, "callbackUrl": "http://127.0.0.1:9/cb", "taskType": ["mj_txt2img"]},
            "taskType must be",
        ),
        (
            {"tasks": 1, "rate": 1, "callbackUrl": "http://127.0.0.1:9/cb", "taskType": {"a": 1}},
            "taskType must be",
        ),
        (
            {"tasks": 1, "rate": 1, "callbackUrl": "http://127.0.0.1:9/cb", "settleTimeout": -1},
            "settleTimeout must be from",
        ),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_a_load_request_with_unusable_values_is_code_422_and_starts_nothing(
    make_sim: SimFactory, body: Any, msg: str
) -> None:
    sim = make_sim()
    with httpx.Client(base_url=sim.base_url, trust_env=False) as client:
        answer = client.post(LOADS_PATH, json=body, headers={"Authorization": f"Bearer {sim.api_key}"}).json()
    assert answer["code"] == 422
    assert msg in answer["msg"]
    assert sim.provider.tasks() == []


def test_one_load_run_at_a_time_and_an_unknown_one_is_404(make_sim: SimFactory, receiver: Receiver) -> None:
    # Given a load run in progress (its receiver holds the first callback)
    sim = make_sim()
    receiver.released.clear()
    headers = {"Authorization": f"Bearer {sim.api_key}"}
    body = {"tasks": 1, "rate": 100, "callbackUrl": receiver.url}
    with httpx.Client(base_url=sim.base_url, trust_env=False, headers=headers) as client:
        first = client.post(LOADS_PATH, json=body).json()
        receiver.wait_for(1)
        # When another is asked for, Then it is refused while the first runs
        second = client.post(LOADS_PATH, json=body).json()
        running = client.get(f"{LOADS_PATH}/{first['data']['loadId']}").json()
        unknown = client.get(f"{LOADS_PATH}/no-such-run").json()
        receiver.released.set()
    assert first["code"] == 200
    assert second["code"] == 429
    assert second["msg"] == f"A load run is in progress ({first['data']['loadId']}); wait for it to end"
    assert running == {"code": 200, "msg": "success", "data": {"done": False}}
    assert unknown["code"] == 404


def test_the_cli_runs_the_load_in_the_simulator_the_workers_verify_with(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    # Given a running simulator that mjhook's workers verify results with (as make demo sets up)
    sim = make_sim()
    env: dict[str, str | None] = {key: None for key in os.environ if key.startswith("MJHOOK_")}
    env |= {"MJHOOK_PROVIDER_URL": sim.base_url, "MJHOOK_PROVIDER_API_KEY": sim.api_key}
    # When `mjhook simulate load --simulator-url` runs against it
    result = CliRunner().invoke(
        main,
        [
            *("simulate", "load", "--simulator-url", sim.base_url, "--api-key", sim.api_key),
            *("--tasks", "3", "--rate", "100", "--callback-url", receiver.url, "--json"),
            # no bucket, and no wait for downloads (nothing downloads here)
            *("--store-timeout", "0", "--download-grace", "0"),
        ],
        env=env,
    )
    # Then the callbacks are that simulator's tasks, reported, with no warning about another provider
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.stdout)
    assert (report["tasks"], report["acknowledged"], report["problems"]) == (3, 3, [])
    sent = [body["data"]["taskId"] for body in receiver.bodies()]
    assert len(sent) == 3
    assert all(sim.provider.task(task_id) for task_id in sent)
    assert f"this run's provider API is {sim.base_url}" in result.stderr
    assert "warning" not in result.stderr


def test_the_cli_says_when_the_simulator_refuses_the_key(make_sim: SimFactory, receiver: Receiver) -> None:
    sim = make_sim()
    result = CliRunner().invoke(
        main,
        [
            *("simulate", "load", "--simulator-url", sim.base_url, "--api-key", "wrong"),
            *("--callback-url", receiver.url, "--store-timeout", "0"),
        ],
        env={key: None for key in os.environ if key.startswith("MJHOOK_")},
    )
    assert result.exit_code == 1
    assert "answered code 401" in result.output


def _scripted(answers: dict[str, Any]) -> httpx.MockTransport:
    """A simulator answering POST and GET with the provider-shaped bodies (or HTTP errors) given."""

    def handle(request: httpx.Request) -> httpx.Response:
        answer = answers[request.method]
        if isinstance(answer, list):
            answer = answer.pop(0) if len(answer) > 1 else answer[0]
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(200, json=answer)

    return httpx.MockTransport(handle)


def _ok(data: Any) -> dict[str, Any]:
    return {"code": 200, "msg": "success", "data": data}


STARTED = _ok({"loadId": "x", "settleTimeout": 1})


@pytest.mark.parametrize(
    ("answers", "match"),
    [
        ({"POST": _ok({})}, "started no load run"),
        (
            {"POST": _ok({"loadId": "x", "settleTimeout": 1}), "GET": _ok({"done": True, "run": {}})},
            "unreadable",
        ),
        (
            {
                "POST": _ok({"loadId": "x", "settleTimeout": 1}),
                "GET": _ok({"done": True, "run": {"report": 1}}),
            },
            "unreadable",
        ),
        (
            {"POST": _ok({"loadId": "x", "settleTimeout": 1}), "GET": _ok({"done": False})},
            "did not end in time",
        ),
        ({"POST": {"title": "404 Not Found"}}, "without the provider's body"),
        ({"POST": {"code": 500, "msg": "Server error", "data": None}}, "answered code 500"),
    ],
    ids=["no load id", "empty run", "hostile run", "never ends", "not the simulator", "code 500"],
)
def test_answers_that_are_no_load_run_are_said_not_tracebacks(answers: dict[str, Any], match: str) -> None:
    time = FakeClock(0.0)
    with pytest.raises(ProviderUnavailable, match=match):
        run_load_in(
            "http://127.0.0.1:9",
            "k",
            tasks=1,
            rate_per_s=1.0,
            callback_url="http://127.0.0.1:9/cb",
            transport=_scripted(answers),
            sleep=time.sleep,
            monotonic=time,
        )


def test_a_poll_without_an_answer_is_asked_again(make_sim: SimFactory, receiver: Receiver) -> None:
    # Given a simulator whose first answer to a poll is lost
    sim = make_sim()
    real = httpx.HTTPTransport()
    lost = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and not lost:
            lost.append(request)
            raise httpx.ReadTimeout("lost", request=request)
        return real.handle_request(request)

    # When a load run is waited for, Then the poll is asked again and the run reported
    report = _two_tasks(sim, receiver, transport=httpx.MockTransport(handle))
    assert len(lost) == 1
    assert report.acknowledged == 2


def _two_tasks(sim: RunningSimulator, receiver: Receiver, **options: Any) -> LoadReport:
    """A load run of 2 tasks at 100/s in ``sim``, calling back ``receiver``."""
    return run_load_in(
        sim.base_url, sim.api_key, tasks=2, rate_per_s=100.0, callback_url=receiver.url, **options
    )
