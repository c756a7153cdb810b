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
from shared.errors import ProviderRefused
from simulator.control import LOADS_PATH, run_load_in
from simulator.load import CallbackRun, bucket_listing, read_bucket
from tests.simulator.support import Receiver, SimFactory
from tests.simulator.test_load import FakeBucket


def test_a_load_run_in_a_running_simulator_fires_its_callbacks_and_reports_them(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    # Given a running simulator
    sim = make_sim()
    # When a load run of 5 tasks is started in it through its control route, and waited for
    run = run_load_in(sim.base_url, sim.api_key, tasks=5, rate_per_s=100.0, callback_url=receiver.url)
    # Then its callbacks came from that simulator's own tasks, and the report counts them
    sent = {body["data"]["taskId"] for body in receiver.bodies()}
    assert sent == run.task_ids == run.acknowledged
    assert all(sim.provider.task(task_id).callback_url == receiver.url for task_id in sent)
    assert (run.report.tasks, run.report.acknowledged, run.report.unacknowledged) == (5, 5, 0)
    assert run.report.settled
    assert run.report.result_files == 20
    assert run.listing == bucket_listing(sim)
    assert run.report.problems == []
    # And the bucket is read for those tasks as for a run of its own
    report = read_bucket(run, FakeBucket(receiver, partial=""), timeout_s=5.0)
    assert report.manifests == {"stored": 5, "partial": 0, "failed": 0, "missing": 0}


def test_the_run_as_the_simulator_described_it_is_the_run(make_sim: SimFactory, receiver: Receiver) -> None:
    run = run_load_in(
        make_sim().base_url, "sim-api-key", tasks=2, rate_per_s=100.0, callback_url=receiver.url
    )
    assert CallbackRun.from_dict(orjson.loads(orjson.dumps(run.to_dict()))) == run


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
    assert (second["code"], second["msg"]) == (429, "A load run is in progress; wait for it to end")
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
            *(
                "--tasks",
                "3",
                "--rate",
                "100",
                "--callback-url",
                receiver.url,
                "--store-timeout",
                "0",
                "--json",
            ),
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
