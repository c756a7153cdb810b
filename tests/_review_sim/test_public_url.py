"""--public-url with a path (a simulator behind a reverse proxy at /sim): download-url refuses
the simulator's own result URLs, because LinkSigner.parse expects exactly /files/{id}/{name}."""

from __future__ import annotations

from simulator import RunningSimulator
from tests.simulator.support import SimFactory, api, result_urls, submit, wait_done


def test_download_url_accepts_its_own_result_urls_under_a_public_url_with_a_path(
    make_sim: SimFactory,
) -> None:
    sim: RunningSimulator = make_sim(public_url="http://127.0.0.1:9/sim")
    with api(sim) as client:
        # the API itself is reached directly; only the result URLs name the public base
        client.base_url = f"http://127.0.0.1:{sim.port}"
        task_id = submit(client)
        url = result_urls(wait_done(client, task_id))[0]
        assert url.startswith("http://127.0.0.1:9/sim/files/")
        answer = client.post("/api/v1/common/download-url", json={"url": url}).json()
    assert answer["code"] == 200, answer
