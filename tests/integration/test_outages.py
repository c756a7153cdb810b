"""Nothing lost while a service is away: Redis down at the ingress, Redis restarted with
persistence, object storage down. Every part is a real process."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.pipeline import callback, post_callback, read_manifest, wait_for
from tests.support.servers import FileServer, png_bytes
from tests.support.stack import start_ingress, start_workers

pytestmark = pytest.mark.integration

QUICK_RETRIES = {
    "MJHOOK_MIN_BACKOFF_MS": "200",
    "MJHOOK_MAX_BACKOFF_MS": "2000",
    "MJHOOK_SPOOL_DRAIN_INTERVAL_S": "0.5",
}


def serve(file_server: FileServer, names: list[str]) -> dict[str, tuple[str, bytes]]:
    files = {}
    for seed, name in enumerate(names):
        image = png_bytes(100 + seed)
        files[name] = (file_server.add(f"/{name}.png", image), image)
    return files


def assert_stored(
    s3: Any, bucket: str, files: dict[str, tuple[str, bytes]], *, timeout_s: float = 90
) -> None:
    for task_id, (_, image) in files.items():
        manifest = wait_for(
            lambda task_id=task_id: read_manifest(s3, bucket, task_id),  # type: ignore[misc]
            timeout_s=timeout_s,
            what=f"manifest of {task_id}",
        )
        assert manifest["status"] == "stored"
        assert manifest["images"][0]["sha256"] == hashlib.sha256(image).hexdigest()


def test_redis_down_at_the_ingress_spools_and_loses_nothing(
    app_env: dict[str, str],
    redis_server: Any,
    tmp_path: Path,
    file_server: FileServer,
    s3_server: Any,
    s3_bucket: str,
) -> None:
    env = {**app_env, **QUICK_RETRIES, "MJHOOK_SPOOL_DIR": str(tmp_path / "spool")}
    files = serve(file_server, [f"spooled-{i}" for i in range(5)])
    ingress, base_url = start_ingress(env, tmp_path, extra_args=["--workers", "2"])
    workers = start_workers(env, tmp_path)
    try:
        # Given Redis is down
        redis_server.stop()
        with httpx.Client(base_url=base_url, timeout=10) as http:
            # When the provider delivers callbacks, they are still acknowledged
            for task_id, (url, _) in files.items():
                response = post_callback(http, callback(task_id, [url]))
                assert response.status_code == 200, response.text
            assert http.get("/readyz").status_code == 503
        assert list((tmp_path / "spool").glob("spool-*.jsonl"))
        # And when the ingress restarts before Redis returns, its spool survives
        ingress.terminate()
        ingress, base_url = start_ingress(env, tmp_path, extra_args=["--workers", "2"])
        # Then once Redis is back, every callback ends stored
        redis_server.start()
        assert_stored(s3_server.client(), s3_bucket, files)
        assert not list((tmp_path / "spool").glob("spool-*.jsonl"))
    finally:
        workers.terminate()
        ingress.terminate()


def test_queued_callbacks_survive_a_redis_restart_with_appendonly(
    aof_app_env: dict[str, str],
    aof_redis_server: Any,
    s3_server: Any,
    s3_bucket: str,
    tmp_path: Path,
    file_server: FileServer,
) -> None:
    redis = aof_redis_server
    env = {**aof_app_env, **QUICK_RETRIES, "MJHOOK_SPOOL_DIR": ""}
    files = serve(file_server, [f"persisted-{i}" for i in range(3)])
    ingress, base_url = start_ingress(env, tmp_path, extra_args=["--workers", "1"])
    try:
        # Given callbacks queued while no worker runs
        with httpx.Client(base_url=base_url, timeout=10) as http:
            for task_id, (url, _) in files.items():
                assert post_callback(http, callback(task_id, [url])).status_code == 200
        # When Redis restarts (a clean shutdown writes the AOF; everysec loses at most ~1 s on a crash)
        redis.stop()
        redis.start()
        assert redis.client().llen("dramatiq:callbacks") == 3
        # Then the workers started afterwards store them all
        workers = start_workers(env, tmp_path)
        try:
            assert_stored(s3_server.client(), s3_bucket, files)
        finally:
            workers.terminate()
    finally:
        ingress.terminate()


def test_object_storage_down_backs_off_and_stores_when_it_returns(
    app_env: dict[str, str], tmp_path: Path, file_server: FileServer, s3_server: Any, s3_bucket: str
) -> None:
    env = {**app_env, **QUICK_RETRIES, "MJHOOK_SPOOL_DIR": ""}
    files = serve(file_server, [f"s3down-{i}" for i in range(3)])
    ingress, base_url = start_ingress(env, tmp_path, extra_args=["--workers", "1"])
    workers = start_workers(env, tmp_path)  # makes the bucket while S3 is up
    try:
        # Given object storage is down
        s3_server.kill()
        with httpx.Client(base_url=base_url, timeout=10) as http:
            for task_id, (url, _) in files.items():
                assert post_callback(http, callback(task_id, [url])).status_code == 200
        # And the workers have tried and failed
        wait_for(lambda: "StorageUnavailable" in workers.log_text(), timeout_s=30, what="a storage failure")
        # When it comes back, Then every task ends stored
        s3_server.start()
        assert_stored(s3_server.client(), s3_bucket, files)
    finally:
        workers.terminate()
        ingress.terminate()
        if not s3_server.is_running():  # the session's S3 serves the tests after this one
            s3_server.start()
