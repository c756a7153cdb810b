"""Edge-case requests the simulator answers with an internal error (body code 500, and for a
result file an HTTP 200 carrying a JSON error body) instead of the provider's 4xx codes."""

from __future__ import annotations

import httpx
import pytest

from simulator import RunningSimulator
from tests.simulator.support import api


@pytest.mark.parametrize("task_type", [["mj_txt2img"], {"a": 1}])
def test_an_unhashable_task_type_is_a_validation_error_not_a_server_error(
    sim: RunningSimulator, task_type: object
) -> None:
    with api(sim) as client:
        answer = client.post("/api/v1/mj/generate", json={"taskType": task_type, "prompt": "a cat"}).json()
    assert answer["code"] in (400, 422), answer


def test_a_malformed_url_given_to_download_url_is_a_validation_error(sim: RunningSimulator) -> None:
    with api(sim) as client:
        answer = client.post("/api/v1/common/download-url", json={"url": "http://[::1"}).json()
    assert answer["code"] == 422, answer


@pytest.mark.parametrize("exp", ["\u00b2", "9" * 5000])
def test_a_result_file_request_with_an_odd_expiry_is_refused_not_answered_200(
    sim: RunningSimulator, exp: str
) -> None:
    # "²".isdigit() is True but int("²") raises; so does a 5000-digit number (Python's 4300-digit
    # limit). The ValueError reaches the API's error handler, which answers HTTP 200 with a JSON
    # body: a downloader would store that JSON as the image.
    answer = httpx.get(
        f"{sim.base_url}/files/{sim.provider.task_id_prefix}000000/0.png",
        params={"exp": exp, "sig": "0" * 32},
        trust_env=False,
    )
    assert answer.status_code in (403, 404, 410), (answer.status_code, answer.text)
