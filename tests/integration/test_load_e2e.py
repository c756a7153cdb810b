"""`mjhook simulate load` against the real stack, as a newcomer runs it beside `make demo`: the load
runs in the simulator the workers verify results with (`--simulator-url`), mjhook acknowledges,
verifies, downloads and stores every task, and the load reads that back from the bucket."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from cli.main import main
from simulator import RunningSimulator, SimulatorConfig, run_simulator
from tests.support.pipeline import CALLBACK_PATH, read_manifest
from tests.support.stack import start_ingress, start_workers

pytestmark = pytest.mark.integration


@pytest.fixture
def simulator() -> Iterator[RunningSimulator]:
    sim = run_simulator(
        SimulatorConfig(image_width=64, image_height=64, generation_delay_s=0.05, time_scale=0.001)
    )
    try:
        yield sim
    finally:
        sim.stop()


def test_a_load_in_the_simulator_the_workers_verify_with_ends_stored_and_is_read_back(
    app_env: dict[str, str], tmp_path: Path, s3_server: Any, s3_bucket: str, simulator: RunningSimulator
) -> None:
    # Given the stack, its workers verifying every result with a running simulator
    env = {**app_env, "MJHOOK_PROVIDER_URL": simulator.base_url, "MJHOOK_PROVIDER_API_KEY": simulator.api_key}
    ingress, ingress_url = start_ingress(env, tmp_path)
    workers = start_workers(env, tmp_path, processes=1, threads=4)
    try:
        # When `mjhook simulate load --simulator-url` fires 6 callbacks from that simulator at mjhook
        cli_env: dict[str, str | None] = {key: None for key in os.environ if key.startswith("MJHOOK_")}
        result = CliRunner().invoke(
            main,
            [
                *("simulate", "load", "--simulator-url", simulator.base_url, "--api-key", simulator.api_key),
                *("--tasks", "6", "--rate", "20", "--callback-url", ingress_url + CALLBACK_PATH),
                *("--store-timeout", "60", "--json"),
            ],
            env={**cli_env, **env},
        )
    finally:
        workers.terminate()
        ingress.terminate()
    # Then every callback was acknowledged and every task read back stored from the bucket
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.stdout)
    assert (report["acknowledged"], report["problems"]) == (6, [])
    assert report["manifests"] == {"stored": 6, "partial": 0, "failed": 0, "missing": 0}
    # And the result files mjhook downloaded meanwhile were counted by the simulator at the end
    assert report["result_files_served"] == report["result_files"] == 24
    assert "warning" not in result.stderr
    # And each was verified with that simulator, its files the bytes it served
    prefix = f"tasks/{simulator.provider.task_id_prefix}"
    keys = s3_server.client().list_objects(s3_bucket, prefix=prefix, recursive=True)
    task_ids = {obj.object_name.split("/")[1] for obj in keys}
    assert len(task_ids) == 6
    for task_id in task_ids:
        manifest = read_manifest(s3_server.client(), s3_bucket, task_id)
        assert manifest is not None
        assert manifest["status"] == "stored"
        assert "verification" in manifest
        assert [image["sha256"] for image in manifest["images"]] == [
            hashlib.sha256(simulator.expected_file(task_id, i)).hexdigest() for i in range(4)
        ]
