"""The simulated provider against the real pipeline: tasks submitted to the simulator's API call
back a gunicorn ingress, dramatiq workers download the simulator's files into SeaweedFS."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from simulator import RunningSimulator, SimulatorConfig, run_simulator
from tests.support.pipeline import CALLBACK_PATH, read_manifest, wait_for
from tests.support.stack import start_ingress, start_workers

pytestmark = pytest.mark.integration


@pytest.fixture
def simulator() -> Iterator[RunningSimulator]:
    sim = run_simulator(
        SimulatorConfig(image_width=256, image_height=256, generation_delay_s=0.2, time_scale=0.001)
    )
    try:
        yield sim
    finally:
        sim.stop()


def test_tasks_of_the_simulated_provider_end_stored_with_the_served_bytes(
    app_env: dict[str, str], tmp_path: Path, s3_server: Any, s3_bucket: str, simulator: RunningSimulator
) -> None:
    ingress, ingress_url = start_ingress(app_env, tmp_path)
    workers = start_workers(app_env, tmp_path, processes=1, threads=4)
    callback_url = ingress_url + CALLBACK_PATH
    s3 = s3_server.client()
    try:
        with httpx.Client(
            base_url=simulator.base_url,
            headers={"Authorization": f"Bearer {simulator.api_key}"},
            trust_env=False,
            timeout=10,
        ) as api:

            def submit(path: str, body: dict[str, Any]) -> str:
                answer = api.post(path, json={**body, "callBackUrl": callback_url}).json()
                assert answer["code"] == 200, answer
                return str(answer["data"]["taskId"])

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
        expected_files = {grid: 4, video: 1, upscale: 1}
        for task_id, manifest in manifests.items():
            assert manifest["status"] == "stored", manifest
            assert manifest["prompt"] in ("a lighthouse", "waves")
            assert len(manifest["images"]) == expected_files[task_id]
            for entry in manifest["images"]:
                served = simulator.expected_file(task_id, entry["index"])
                assert entry["sha256"] == hashlib.sha256(served).hexdigest()
                assert entry["size"] == len(served)
        assert manifests[video]["images"][0]["key"] == f"tasks/{video}/0.mp4"
        assert all(a.status == 200 for a in simulator.attempts())
    finally:
        workers.terminate()
        ingress.terminate()
