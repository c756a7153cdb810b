"""A callBackUrl whose host has a label longer than 63 characters passes the simulator's URL check
(deliverable_url) and is accepted, but sending to it raises UnicodeError (the idna codec, inside
socket.getaddrinfo, before any lookup). CallbackDelivery._attempt only catches httpx.HTTPError,
so the job dies in the scheduler: no attempt is recorded and no retry is ever scheduled."""

from __future__ import annotations

import ipaddress
import socket
import time

import pytest

from tests.simulator.support import SimFactory, api, wait_done

LONG_HOST = "a" * 64 + ".test"


@pytest.fixture
def no_name_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    """getaddrinfo as CPython's: the host is idna-encoded first (which is what fails here); then
    numeric addresses resolve and no name is ever looked up."""
    original = socket.getaddrinfo

    def guarded(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(host, str):
            try:
                ipaddress.ip_address(host)
            except ValueError:
                host.encode("idna")  # raises UnicodeError for a label of 64+ characters
                raise socket.gaierror(socket.EAI_NONAME, "name lookups are off in this test") from None
        return original(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)


@pytest.mark.usefixtures("no_name_lookups")
def test_a_callback_url_with_an_overlong_label_is_refused_or_its_attempts_recorded_and_retried(
    make_sim: SimFactory,
) -> None:
    sim = make_sim(time_scale=0.0001)
    with api(sim) as client:
        answer = client.post(
            "/api/v1/mj/generate",
            json={"taskType": "mj_txt2img", "prompt": "a cat", "callBackUrl": f"http://{LONG_HOST}/cb"},
        ).json()
        if answer["code"] == 422:
            return  # refused at submission: fine
        task_id = answer["data"]["taskId"]
        wait_done(client, task_id)
    assert sim.wait_idle(5.0)
    time.sleep(0.3)
    attempts = sim.attempts(task_id)
    assert [a.attempt for a in attempts] == [1, 2, 3, 4], attempts
