"""When callbacks never come, and when result links expired: tasks submitted through mjhook to the
simulated provider end stored anyway, through real gunicorn and dramatiq processes and SeaweedFS."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from shared import keys
from shared.settings import Settings
from shared.submit import submit_task
from simulator import FaultConfig, RunningSimulator
from tests.support.pipeline import callback, post_callback, read_manifest, wait_for
from tests.support.provider import StartSimulator
from tests.support.servers import FileServer, png_bytes
from tests.support.stack import start_ingress, start_workers

pytestmark = pytest.mark.integration

DUPLICATE_IGNORED = "already stored: duplicate callback ignored"


def provider_env(app_env: dict[str, str], sim: RunningSimulator, **extra: str) -> dict[str, str]:
    return {
        **app_env,
        "MJHOOK_PROVIDER_URL": sim.base_url,
        "MJHOOK_PROVIDER_API_KEY": sim.api_key,
        **extra,
    }


def assert_stored_as_served(manifest: dict[str, Any], sim: RunningSimulator, task_id: str) -> None:
    assert manifest["status"] == "stored", manifest
    assert len(manifest["images"]) == 4
    for entry in manifest["images"]:
        served = sim.expected_file(task_id, entry["index"])
        assert entry["sha256"] == hashlib.sha256(served).hexdigest()
    assert [entry["sourceUrl"] for entry in manifest["images"]] == sim.task(task_id).result_urls


def test_a_task_whose_callbacks_are_all_dropped_is_stored_through_polling_and_a_late_callback_changes_nothing(
    app_env: dict[str, str],
    tmp_path: Path,
    s3_server: Any,
    s3_bucket: str,
    start_simulator: StartSimulator,
    file_server: FileServer,
) -> None:
    # Given a provider that never calls back, and workers polling silent tasks after 1 s
    sim = start_simulator(faults=FaultConfig(drop_share=1.0))
    env = provider_env(app_env, sim, MJHOOK_POLL_GRACE_S="1", MJHOOK_POLL_INTERVAL_S="1")
    ingress, ingress_url = start_ingress(env, tmp_path)
    workers = start_workers(env, tmp_path, processes=1, threads=2)
    s3 = s3_server.client()
    try:
        # When a task is submitted through mjhook
        task_id = submit_task(Settings.from_env({**env, "MJHOOK_PUBLIC_URL": ingress_url}), "a lighthouse")
        # Then it ends stored, with the files the provider made, though no callback was sent
        manifest = wait_for(
            lambda: read_manifest(s3, s3_bucket, task_id), timeout_s=30, what="polled task stored"
        )
        assert_stored_as_served(manifest, sim, task_id)
        assert "polled" in manifest["msg"]
        assert manifest["prompt"] == "a lighthouse"
        assert sim.attempts(task_id) == []
        client = redis.Redis.from_url(env["MJHOOK_REDIS_URL"])
        assert client.hget(keys.task(task_id), "state") == b"stored"
        assert client.zcard(keys.state_index("submitted")) == 0

        # When its callback comes after all (late), naming other URLs
        late_urls = [file_server.add(f"/late-{i}.png", png_bytes(i)) for i in range(4)]
        with httpx.Client(base_url=ingress_url, trust_env=False) as http:
            assert post_callback(http, callback(task_id, late_urls)).status_code == 200
        # Then it is acknowledged and ignored: nothing downloaded, the manifest unchanged
        wait_for(
            lambda: DUPLICATE_IGNORED in workers.log_since_start(), timeout_s=20, what="duplicate ignored"
        )
        assert sum(file_server.hits.values()) == 0
        assert read_manifest(s3, s3_bucket, task_id) == manifest
    finally:
        workers.terminate()
        ingress.terminate()


def test_a_task_whose_result_links_expired_before_download_is_stored_through_fresh_links(
    app_env: dict[str, str],
    tmp_path: Path,
    s3_server: Any,
    s3_bucket: str,
    start_simulator: StartSimulator,
) -> None:
    # Given a provider whose result links are all expired when they arrive (410)
    sim = start_simulator(faults=FaultConfig(file_expired_share=1.0))
    env = provider_env(app_env, sim)
    ingress, ingress_url = start_ingress(env, tmp_path)
    workers = start_workers(env, tmp_path, processes=1, threads=2)
    s3 = s3_server.client()
    try:
        # When a task is submitted and its callback comes
        task_id = submit_task(Settings.from_env({**env, "MJHOOK_PUBLIC_URL": ingress_url}), "a harbour")
        manifest = wait_for(lambda: read_manifest(s3, s3_bucket, task_id), timeout_s=30, what="task stored")
        # Then every file was fetched through a fresh link from download-url
        assert_stored_as_served(manifest, sim, task_id)
        assert manifest["errors"] == []
        assert [attempt.status for attempt in sim.attempts(task_id)] == [200]
    finally:
        workers.terminate()
        ingress.terminate()
