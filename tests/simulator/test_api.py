"""The provider's API: auth, body codes, task details in the provider's shape."""

from __future__ import annotations

import re
import socket
from typing import Any

import httpx
import orjson
import pytest

from cli.submit import SPEEDS as SUBMIT_SPEEDS
from simulator import FaultConfig, RunningSimulator
from simulator.faults import FaultPlan
from tests.simulator.support import SimFactory, api, details, result_urls, submit, wait_done

ISO_SECONDS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@pytest.mark.parametrize("key", ["", "wrong-key"])
def test_a_missing_or_wrong_key_is_code_401(sim: RunningSimulator, key: str) -> None:
    with api(sim, key=key) as client:
        answer = client.post("/api/v1/mj/generate", json={"taskType": "mj_txt2img", "prompt": "x"})
        info = client.get("/api/v1/mj/record-info", params={"taskId": "x"})
    assert answer.status_code == 200
    assert answer.json() == {"code": 401, "msg": "You do not have access permissions", "data": None}
    assert info.json()["code"] == 401


def test_details_follow_the_providers_shape_while_generating_and_when_done(sim: RunningSimulator) -> None:
    # Given a submitted txt2img task
    with api(sim) as client:
        task_id = submit(client, prompt="a red fox", aspectRatio="16:9", callBackUrl="http://127.0.0.1:9/cb")
        # Then at first it is generating, without results
        generating = details(client, task_id)
        # And later it has four result URLs, as objects
        done = wait_done(client, task_id)

    assert generating["successFlag"] == 0
    assert generating["completeTime"] is None
    assert generating["resultInfoJson"] == {"resultUrls": []}
    assert set(done) == {
        "taskId",
        "taskType",
        "paramJson",
        "successFlag",
        "errorCode",
        "errorMessage",
        "createTime",
        "completeTime",
        "resultInfoJson",
    }
    assert done["taskId"] == task_id
    assert done["taskType"] == "mj_txt2img"
    assert done["successFlag"] == 1
    assert done["errorCode"] is None
    assert done["errorMessage"] is None
    assert ISO_SECONDS.fullmatch(done["createTime"])
    assert ISO_SECONDS.fullmatch(done["completeTime"])
    assert isinstance(done["paramJson"], str)
    assert orjson.loads(done["paramJson"])["prompt"] == "a red fox"
    urls = result_urls(done)
    assert len(urls) == 4
    assert all(url.startswith(f"{sim.base_url}/files/{task_id}/") for url in urls)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", 400),
        (b"[1, 2]", 400),
        (b'{"prompt": "x"}', 400),
        (b'{"taskType": "mj_txt2img"}', 400),
        (b'{"taskType": "mj_txt2img", "prompt": "   "}', 400),
        (b'{"taskType": "mj_paint", "prompt": "x"}', 422),
        # A taskType that is no string (not hashable, so no set lookup may see it)
        (b'{"taskType": ["mj_txt2img"], "prompt": "x"}', 422),
        (b'{"taskType": {"a": 1}, "prompt": "x"}', 422),
        (orjson.dumps({"taskType": "mj_txt2img", "prompt": "x" * 2001}), 422),
        (b'{"taskType": "mj_txt2img", "prompt": "x", "speed": "warp"}', 422),
        # Only the documented spellings: relaxed, fast, turbo
        (b'{"taskType": "mj_txt2img", "prompt": "x", "speed": "relax"}', 422),
        (b'{"taskType": "mj_txt2img", "prompt": "x", "speed": "FAST"}', 422),
        (b'{"taskType": "mj_txt2img", "prompt": "x", "speed": 1}', 422),
        (b'{"taskType": "mj_img2img", "prompt": "x"}', 422),
        (b'{"taskType": "mj_txt2img", "prompt": "x", "callBackUrl": "ftp://h/cb"}', 422),
        # A callBackUrl no callback could reach: unparsable, without a host, or a bad port
        (b'{"taskType": "mj_txt2img", "prompt": "x", "callBackUrl": "http://[::1"}', 422),
        (b'{"taskType": "mj_txt2img", "prompt": "x", "callBackUrl": "http://"}', 422),
        (b'{"taskType": "mj_txt2img", "prompt": "x", "callBackUrl": "https:///cb"}', 422),
        (b'{"taskType": "mj_txt2img", "prompt": "x", "callBackUrl": "http://:8080/cb"}', 422),
        (b'{"taskType": "mj_txt2img", "prompt": "x", "callBackUrl": "http://127.0.0.1:99999/cb"}', 422),
        (b'{"taskType": "mj_txt2img", "prompt": "x", "callBackUrl": "http://xn--a.example/cb"}', 422),
        (b'{"taskType": "mj_txt2img", "prompt": "x", "callBackUrl": "http://127.0.0.1:port/cb"}', 422),
        # A host label over 63 characters: the idna codec refuses it before any lookup
        (
            orjson.dumps(
                {"taskType": "mj_txt2img", "prompt": "x", "callBackUrl": f"http://{'a' * 64}.test/cb"}
            ),
            422,
        ),
    ],
)
def test_bad_requests_are_400_and_invalid_values_422(sim: RunningSimulator, body: bytes, code: int) -> None:
    with api(sim) as client:
        answer = client.post(
            "/api/v1/mj/generate", content=body, headers={"Content-Type": "application/json"}
        )
    assert answer.json()["code"] == code
    assert answer.json()["data"] is None


@pytest.mark.parametrize("speed", SUBMIT_SPEEDS)
def test_every_speed_mjhook_submit_offers_is_accepted(sim: RunningSimulator, speed: str) -> None:
    # Given a speed `mjhook submit --speed` sends (the provider documents relaxed, fast, turbo)
    with api(sim) as client:
        # When a task is submitted with it, Then it is accepted, the speed kept in its paramJson
        task_id = submit(client, speed=speed)
        prompt = orjson.loads(details(client, task_id)["paramJson"])
    assert prompt["speed"] == speed


def test_a_request_body_over_a_megabyte_is_refused_as_invalid(sim: RunningSimulator) -> None:
    # Given a generate request whose prompt alone is a little over 1 MiB
    body = orjson.dumps({"taskType": "mj_txt2img", "prompt": "x" * (1024 * 1024)})
    # When it is sent
    with api(sim) as client:
        answer = client.post(
            "/api/v1/mj/generate", content=body, headers={"Content-Type": "application/json"}
        )
    # Then it is refused as too large (code 422), not read whole and judged on its prompt
    assert answer.json() == {
        "code": 422,
        "msg": "The request body is larger than 1048576 bytes",
        "data": None,
    }


def test_unknown_tasks_are_404(sim: RunningSimulator) -> None:
    with api(sim) as client:
        info = client.get("/api/v1/mj/record-info", params={"taskId": "no-such-task"}).json()
        upscale = client.post("/api/v1/mj/generateUpscale", json={"taskId": "no-such-task", "imageIndex": 0})
    assert info["code"] == 404
    assert upscale.json()["code"] == 404


def test_upscale_and_vary_make_one_image_tasks_of_a_finished_grid(sim: RunningSimulator) -> None:
    with api(sim) as client:
        grid = submit(client)
        # Given the grid is still generating, a derived task is refused
        early = client.post("/api/v1/mj/generateUpscale", json={"taskId": grid, "imageIndex": 1}).json()
        wait_done(client, grid)
        bad_index = client.post("/api/v1/mj/generateVary", json={"taskId": grid, "imageIndex": 4}).json()
        no_index = client.post("/api/v1/mj/generateVary", json={"taskId": grid}).json()
        upscale = client.post("/api/v1/mj/generateUpscale", json={"taskId": grid, "imageIndex": 1}).json()
        vary = client.post("/api/v1/mj/generateVary", json={"taskId": grid, "imageIndex": 3}).json()
        upscaled = wait_done(client, upscale["data"]["taskId"])
        varied = wait_done(client, vary["data"]["taskId"])

    assert early["code"] == 422
    assert bad_index["code"] == 422
    assert no_index["code"] == 400
    assert upscaled["taskType"] == "mj_upscale"
    assert varied["taskType"] == "mj_vary"
    assert len(result_urls(upscaled)) == 1
    assert len(result_urls(varied)) == 1
    assert upscale["data"]["taskId"] not in (grid, vary["data"]["taskId"])


def test_deriving_from_a_failed_generation_is_code_501(make_sim: SimFactory) -> None:
    sim = make_sim(faults=FaultConfig(failure_share=1.0))
    with api(sim) as client:
        grid = submit(client)
        failed = wait_done(client, grid)
        answer = client.post("/api/v1/mj/generateUpscale", json={"taskId": grid, "imageIndex": 0}).json()
    assert failed["successFlag"] == 2
    assert failed["errorCode"] == 501
    assert failed["errorMessage"]
    assert result_urls(failed) == []
    assert answer["code"] == 501


def test_an_api_error_answers_submit_calls_with_500_501_or_505_and_makes_no_task(
    make_sim: SimFactory,
) -> None:
    # Given a provider with 3 credits whose every submit call fails, and a finished grid to derive
    # from (made directly: the API makes none)
    sim = make_sim(credits=3, faults=FaultConfig(api_error_share=1.0))
    grid = sim.provider.submit(task_type="mj_txt2img", params={}, prompt={"prompt": "x"}, callback_url="")
    with api(sim) as client:
        wait_done(client, grid.task_id)
        # When a generation, an upscale and a variation are submitted
        answers = [
            client.post("/api/v1/mj/generate", json=_txt2img()),
            client.post("/api/v1/mj/generateUpscale", json={"taskId": grid.task_id, "imageIndex": 0}),
            client.post("/api/v1/mj/generateVary", json={"taskId": grid.task_id, "imageIndex": 1}),
        ]
        # And the task's details are asked for (no submit call)
        info = details(client, grid.task_id)
    # Then each is answered in the provider's shape, HTTP 200, with the code seed 0 draws for its
    # call number, and no task made nor credit spent
    plan = FaultPlan(sim.config.faults)
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert [answer.json()["code"] for answer in answers] == [plan.for_submit_call(n) for n in range(3)]
    assert all(answer.json()["data"] is None and answer.json()["msg"] for answer in answers)
    assert {answer.json()["code"] for answer in answers} <= {500, 501, 505}
    assert [task.task_id for task in sim.provider.tasks()] == [grid.task_id]
    assert sim.provider.admission.credits == 3
    assert info["successFlag"] == 1


def test_the_same_seed_fails_the_same_submit_calls(make_sim: SimFactory) -> None:
    # Given two providers with the same seed and half the submit calls failing
    faults = FaultConfig(seed=3, api_error_share=0.5)
    codes = []
    for sim in (make_sim(faults=faults), make_sim(faults=faults)):
        with api(sim) as client:
            # When each is sent 12 generations
            codes.append(
                [client.post("/api/v1/mj/generate", json=_txt2img()).json()["code"] for _ in range(12)]
            )
    # Then the same calls fail with the same codes, and the others make tasks
    assert codes[0] == codes[1]
    assert {200, 500, 501, 505} >= set(codes[0]) > {200}
    assert codes[0] == [plan or 200 for plan in map(FaultPlan(faults).for_submit_call, range(12))]


def test_submissions_beyond_the_rate_limit_are_code_429(make_sim: SimFactory) -> None:
    sim = make_sim(rate_limit=3, rate_window_s=60.0)
    with api(sim) as client:
        codes = [client.post("/api/v1/mj/generate", json=_txt2img()).json()["code"] for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]


def test_every_api_call_counts_toward_the_rate_limit_and_may_be_code_429(make_sim: SimFactory) -> None:
    # Given a rate limit of 3 calls a minute
    sim = make_sim(rate_limit=3, rate_window_s=60.0)
    with api(sim) as client:
        # When task details and a fresh link are asked for, then a task submitted
        under = [
            client.get("/api/v1/mj/record-info", params={"taskId": "x"}).json()["code"],
            client.post("/api/v1/common/download-url", json={"url": "https://example.com/a.png"}).json()[
                "code"
            ],
            client.post("/api/v1/mj/generate", json=_txt2img()).json()["code"],
        ]
        # And every endpoint once more
        beyond = [
            client.get("/api/v1/mj/record-info", params={"taskId": "x"}).json()["code"],
            client.post("/api/v1/common/download-url", json={"url": "https://example.com/a.png"}).json()[
                "code"
            ],
            client.post("/api/v1/mj/generate", json=_txt2img()).json()["code"],
            client.post("/api/v1/mj/generateUpscale", json={"taskId": "x", "imageIndex": 0}).json()["code"],
        ]
    # Then the first three are answered, and every call after is code 429, as the provider may
    assert under == [404, 422, 200]
    assert beyond == [429, 429, 429, 429]


@pytest.mark.parametrize("mirror", [False, True], ids=["status 200", "status mirrors code"])
@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("GET", "/api/v1/mj/nothing-here", 404),
        ("POST", "/api/v2/mj/generate", 404),
        ("GET", "/api/v1/mj/generate", 405),
        ("DELETE", "/api/v1/mj/record-info", 405),
    ],
)
def test_an_unknown_api_path_or_method_answers_in_the_providers_shape(
    make_sim: SimFactory, mirror: bool, method: str, path: str, code: int
) -> None:
    # Given a simulator answering with HTTP 200, or with the body code as HTTP status
    sim = make_sim(http_status_mirrors_code=mirror)
    with api(sim) as client:
        # When a path it has no route for, or a method the route has not, is asked for
        answer = client.request(method, path)
    # Then the answer is the provider's shape, its code the HTTP error's
    assert answer.json() == {"code": code, "msg": answer.json()["msg"], "data": None}
    assert answer.json()["msg"]
    assert answer.status_code == (code if mirror else 200)


def test_an_unknown_path_outside_the_api_keeps_falcons_404(sim: RunningSimulator) -> None:
    with api(sim) as client:
        answer = client.get("/nothing-here")
    assert answer.status_code == 404
    assert "code" not in answer.json()


def test_no_credits_left_is_code_402(make_sim: SimFactory) -> None:
    sim = make_sim(credits=1)
    with api(sim) as client:
        codes = [client.post("/api/v1/mj/generate", json=_txt2img()).json()["code"] for _ in range(2)]
    assert codes == [200, 402]


@pytest.mark.parametrize("depth", [300, 1100], ids=["orjson reads it", "orjson refuses it"])
def test_a_body_nested_too_deeply_is_code_422_and_costs_no_credit_nor_task(
    make_sim: SimFactory, depth: int
) -> None:
    # Given a provider with one credit, and a generate request with a field nested 300 deep (orjson
    # reads that, but could not write it into the task's paramJson) or 1100 (orjson refuses it)
    sim = make_sim(credits=1)
    deep = b'{"taskType": "mj_txt2img", "prompt": "x", "extra": ' + b"[" * depth + b"]" * depth + b"}"
    with api(sim) as client:
        # When it is sent, and then a good request
        refused = client.post(
            "/api/v1/mj/generate", content=deep, headers={"Content-Type": "application/json"}
        )
        accepted = client.post("/api/v1/mj/generate", json=_txt2img()).json()
    # Then the deep one is refused as invalid (not code 500), and the credit and the first task
    # number went to the good one
    assert refused.json() == {
        "code": 422,
        "msg": "The request body nests deeper than 64 levels",
        "data": None,
    }
    assert accepted["code"] == 200
    assert sim.provider.task(accepted["data"]["taskId"]).number == 0


@pytest.mark.parametrize(
    "chunks",
    [
        [b'{"taskType": "mj_txt2img", "prompt": "a cat"}'],
        [b'{"taskType": "mj_txt', b'2img", "prompt": "a cat"}'],
    ],
    ids=["one chunk", "two chunks"],
)
def test_a_chunked_body_is_read(sim: RunningSimulator, chunks: list[bytes]) -> None:
    # Given a generate request whose body is sent in chunks (a client streaming it: no Content-Length)
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"
    # When it is sent, Then the task is created
    answer = _raw_post(sim, "/api/v1/mj/generate", b"Transfer-Encoding: chunked\r\n", body)
    assert answer["code"] == 200, answer
    assert sim.provider.task(answer["data"]["taskId"]).task_type == "mj_txt2img"


@pytest.mark.parametrize(
    ("body", "code", "msg"),
    [
        (b"zz\r\n{}\r\n0\r\n\r\n", 400, "The request body's chunks are malformed"),
        (b"10\r\n{}", 400, "The request body ended inside a chunk"),
        (b"2\r\n{}XX0\r\n\r\n", 400, "The request body's chunks are malformed"),
        (
            b"100001\r\n" + b" " * 0x100001 + b"\r\n0\r\n\r\n",
            422,
            "The request body is larger than 1048576 bytes",
        ),
    ],
    ids=["size not hex", "cut inside a chunk", "no CRLF after a chunk", "over a megabyte"],
)
def test_a_malformed_or_oversized_chunked_body_is_refused_with_a_code(
    sim: RunningSimulator, body: bytes, code: int, msg: str
) -> None:
    answer = _raw_post(sim, "/api/v1/mj/generate", b"Transfer-Encoding: chunked\r\n", body)
    assert answer == {"code": code, "msg": msg, "data": None}


def test_maintenance_is_code_455_and_can_mirror_into_the_http_status(make_sim: SimFactory) -> None:
    sim = make_sim(maintenance=True, http_status_mirrors_code=True)
    with api(sim) as client:
        answer = client.post("/api/v1/mj/generate", json=_txt2img())
    assert answer.status_code == 455
    assert answer.json()["code"] == 455


def test_download_url_gives_a_fresh_link_for_our_urls_only(sim: RunningSimulator) -> None:
    with api(sim) as client:
        task_id = submit(client)
        url = result_urls(wait_done(client, task_id))[2]
        fresh = client.post("/api/v1/common/download-url", json={"url": url}).json()
        foreign = client.post("/api/v1/common/download-url", json={"url": "https://example.com/a.png"}).json()
        missing = client.post("/api/v1/common/download-url", json={}).json()
        file = client.get(fresh["data"])
    assert fresh["code"] == 200
    assert fresh["data"].startswith(f"{sim.base_url}/files/{task_id}/2.png?")
    assert foreign["code"] == 422
    assert missing["code"] == 400
    assert file.content == sim.expected_file(task_id, 2)


def test_download_url_refuses_a_malformed_url_as_invalid(sim: RunningSimulator) -> None:
    # Given a URL urlsplit cannot parse (an unclosed IPv6 bracket)
    with api(sim) as client:
        # When download-url is asked for a fresh link to it
        answer = client.post("/api/v1/common/download-url", json={"url": "http://[::1"}).json()
    # Then it is not one of ours: code 422, not a server error
    assert answer["code"] == 422, answer


def test_download_url_accepts_its_own_urls_under_a_public_url_with_a_path(make_sim: SimFactory) -> None:
    # Given a simulator behind a reverse proxy at /sim: its result URLs name the public base
    sim = make_sim(public_url="http://127.0.0.1:9/sim")
    with api(sim) as client:
        client.base_url = httpx.URL(f"http://127.0.0.1:{sim.port}")  # the API itself, reached directly
        task_id = submit(client)
        url = result_urls(wait_done(client, task_id))[0]
        # When download-url is asked for a fresh link to one of them
        answer = client.post("/api/v1/common/download-url", json={"url": url}).json()
    # Then it is one of ours, and the fresh link is under the public base too
    assert url.startswith(f"http://127.0.0.1:9/sim/files/{task_id}/0.png?")
    assert answer["code"] == 200, answer
    assert answer["data"].startswith(f"http://127.0.0.1:9/sim/files/{task_id}/0.png?")


def _raw_post(sim: RunningSimulator, path: str, headers: bytes, body: bytes) -> Any:
    """POST ``body`` as it is (httpx would frame it itself), with the API key; the answer's JSON."""
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {sim.provider.config.api_key}\r\n"
        "Content-Type: application/json\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", sim.port), timeout=10) as connection:
        connection.sendall(request + headers + b"\r\n" + body)
        connection.shutdown(socket.SHUT_WR)
        answer = b"".join(iter(lambda: connection.recv(65536), b""))
    head, _, payload = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    assert re.match(rb"HTTP/1\.[01] 200 ", status_line), head
    return orjson.loads(payload)


def _txt2img() -> dict[str, Any]:
    return {"taskType": "mj_txt2img", "prompt": "a cat"}
