"""The simulated provider against the real pipeline: tasks submitted to the simulator's API call
back a gunicorn ingress, dramatiq workers download the simulator's files into SeaweedFS."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from simulator import FaultConfig, RunningSimulator, SimulatorConfig, run_simulator
from tests.simulator.support import api
from tests.support.pipeline import CALLBACK_PATH, read_manifest, wait_for
from tests.support.stack import start_ingress, start_workers

pytestmark = pytest.mark.integration


def _start(faults: FaultConfig | None = None) -> RunningSimulator:
    return run_simulator(
        SimulatorConfig(
            image_width=256,
            image_height=256,
            generation_delay_s=0.2,
            time_scale=0.001,
            faults=faults or FaultConfig(),
        )
    )


@pytest.fixture
def simulator() -> Iterator[RunningSimulator]:
    sim = _start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def odd_simulators() -> Iterator[dict[str, RunningSimulator]]:
    """Providers whose callbacks do what the provider's docs warn of: one spells the id
    ``task_id``, one sends a ``promptJson`` that is not valid JSON (both in-process, no stack)."""
    sims = {
        "spelled": _start(FaultConfig(task_id_spelling_share=1.0)),
        "malformed": _start(FaultConfig(malformed_prompt_share=1.0)),
    }
    try:
        yield sims
    finally:
        for sim in sims.values():
            sim.stop()


def test_tasks_of_the_simulated_provider_end_stored_with_the_served_bytes(
    app_env: dict[str, str],
    tmp_path: Path,
    s3_server: Any,
    s3_bucket: str,
    simulator: RunningSimulator,
    odd_simulators: dict[str, RunningSimulator],
) -> None:
    """Also, on the same stack, callbacks spelling the id ``task_id`` and carrying a malformed
    ``promptJson``, as the provider's docs warn: their tasks end stored too."""
    ingress, ingress_url = start_ingress(app_env, tmp_path)
    workers = start_workers(app_env, tmp_path, processes=1, threads=4)
    callback_url = ingress_url + CALLBACK_PATH
    s3 = s3_server.client()
    try:
        with api(simulator) as provider:

            def submit(path: str, body: dict[str, Any], client: httpx.Client = provider) -> str:
                answer = client.post(path, json={**body, "callBackUrl": callback_url}).json()
                assert answer["code"] == 200, answer
                return str(answer["data"]["taskId"])

            # Given also a task of a provider spelling the id task_id in its callbacks, and one of
            # a provider sending a malformed promptJson
            odd: dict[str, str] = {}
            for name, sim in odd_simulators.items():
                with api(sim) as odd_api:
                    odd[name] = submit(
                        "/api/v1/mj/generate", {"taskType": "mj_txt2img", "prompt": name}, odd_api
                    )

            # Given a grid, a video and an upscale of the grid, submitted to the provider
            grid = submit("/api/v1/mj/generate", {"taskType": "mj_txt2img", "prompt": "a lighthouse"})
            video = submit(
                "/api/v1/mj/generate",
                {"taskType": "mj_video", "prompt": "waves", "fileUrls": ["http://127.0.0.1:9/in.png"]},
            )
            grid_manifest = wait_for(lambda: read_manifest(s3, s3_bucket, grid), what="grid stored")
            upscale = submit("/api/v1/mj/generateUpscale", {"taskId": grid, "imageIndex": 2})

            # Then each ends stored, every file with the bytes the provider served
            manifests = {
                grid: grid_manifest,
                video: wait_for(lambda: read_manifest(s3, s3_bucket, video), what="video stored"),
                upscale: wait_for(lambda: read_manifest(s3, s3_bucket, upscale), what="upscale stored"),
            }
        expected_files = {grid: 4, video: 4, upscale: 1}
        for task_id, manifest in manifests.items():
            assert manifest["status"] == "stored", manifest
            assert manifest["prompt"] in ("a lighthouse", "waves")
            assert len(manifest["images"]) == expected_files[task_id]
            for entry in manifest["images"]:
                served = simulator.expected_file(task_id, entry["index"])
                assert entry["sha256"] == hashlib.sha256(served).hexdigest()
                assert entry["size"] == len(served)
        assert [entry["key"] for entry in manifests[video]["images"]] == [
            f"tasks/{video}/{index}.mp4" for index in range(4)
        ]
        assert all(a.status == 200 for a in simulator.attempts())

        # And the odd callbacks' tasks end stored too, with the bytes served: the id spelled
        # task_id read as the id, the malformed promptJson kept raw (parsed into nothing)
        odd_manifests = {
            name: wait_for(partial(read_manifest, s3, s3_bucket, task_id), what=f"{name} stored")
            for name, task_id in odd.items()
        }
        for name, manifest in odd_manifests.items():
            sim, task_id = odd_simulators[name], odd[name]
            assert manifest["status"] == "stored", manifest
            assert manifest["taskId"] == task_id
            assert len(manifest["images"]) == 4
            for entry in manifest["images"]:
                served = sim.expected_file(task_id, entry["index"])
                assert entry["sha256"] == hashlib.sha256(served).hexdigest()
            assert [a.status for a in sim.attempts(task_id)] == [200]
        spelled = odd_simulators["spelled"].provider.task(odd["spelled"])
        assert spelled.faults.task_id_spelling
        assert odd_manifests["spelled"]["prompt"] == "spelled"
        malformed = odd_simulators["malformed"].provider.task(odd["malformed"])
        assert malformed.faults.malformed_prompt
        cut = malformed.prompt_json[: len(malformed.prompt_json) // 2]
        assert odd_manifests["malformed"]["promptJson"] == cut
        assert (odd_manifests["malformed"]["params"], odd_manifests["malformed"]["prompt"]) == (None, None)
    finally:
        workers.terminate()
        ingress.terminate()
