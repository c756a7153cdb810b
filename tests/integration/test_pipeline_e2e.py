"""The whole pipeline on real processes: gunicorn ingress -> Redis -> dramatiq workers ->
SeaweedFS, with result files served by a local HTTP server."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support.pipeline import PROMPT, callback, object_bytes, post_callback, read_manifest, wait_for
from tests.support.servers import FileServer, png_bytes
from tests.support.stack import start_ingress, start_workers

pytestmark = pytest.mark.integration


@contextmanager
def running_stack(env: dict[str, str], tmp_path: Path, *, threads: int = 4) -> Iterator[str]:
    """The ingress and one worker process of ``threads`` threads, on ``env``; the ingress's base
    URL. Both stop when the block ends."""
    ingress, base_url = start_ingress(env, tmp_path)
    workers = start_workers(env, tmp_path, processes=1, threads=threads)
    try:
        yield base_url
    finally:
        workers.terminate()
        ingress.terminate()


@pytest.fixture
def stack(app_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    with running_stack(app_env, tmp_path) as base_url:
        yield base_url


def test_callbacks_in_the_providers_format_end_stored(
    stack: str, file_server: FileServer, s3_server: Any, s3_bucket: str, redis_server: Any
) -> None:
    images = [png_bytes(seed, 512, 512) for seed in range(4)]
    urls = [file_server.add(f"/r/{i}.png", image) for i, image in enumerate(images)]
    single = png_bytes(99)
    single_url = file_server.add("/r/single.png", single)
    s3 = s3_server.client()

    with httpx.Client(base_url=stack, timeout=10) as http:

        def post(body: dict[str, Any] | bytes) -> httpx.Response:
            return post_callback(http, body)

        # A success with 4 URLs, a failure, a malformed promptJson, and a bad body.
        ok = post(callback("mj-success-1", urls))
        assert ok.status_code == 200
        assert ok.json() == {"status": "received", "taskId": "mj-success-1"}
        assert post(callback("mj-failed-1", [], code=500)).status_code == 200
        assert post(callback("mj-badprompt-1", [single_url], prompt="{not json")).status_code == 200
        bad = post(b'{"code": 200, "data": {"taskId": "../../etc"}}')
        assert bad.status_code == 400
        assert "taskId" in bad.json()["error"]

        manifest = wait_for(lambda: read_manifest(s3, s3_bucket, "mj-success-1"))
        assert manifest["status"] == "stored"
        assert manifest["params"] == orjson.loads(PROMPT)
        assert len(manifest["images"]) == 4
        for entry, image in zip(manifest["images"], images, strict=True):
            assert entry["sha256"] == hashlib.sha256(image).hexdigest()
            assert object_bytes(s3, s3_bucket, entry["key"]) == image

        failed = wait_for(lambda: read_manifest(s3, s3_bucket, "mj-failed-1"))
        assert failed["status"] == "failed"
        assert failed["msg"] == "Midjourney generation failed"
        assert failed["images"] == []

        malformed = wait_for(lambda: read_manifest(s3, s3_bucket, "mj-badprompt-1"))
        assert malformed["status"] == "stored"
        assert malformed["promptJson"] == "{not json"
        assert malformed["params"] is None
        assert object_bytes(s3, s3_bucket, "tasks/mj-badprompt-1/0.png") == single

        # A duplicate of the stored task: acknowledged, processed, and nothing downloaded again.
        hits_before = file_server.hits
        assert post(callback("mj-success-1", urls)).status_code == 200
        redis = redis_server.client()
        # Processed: off the queue, acknowledged, and no retry waiting in the delay queue.
        wait_for(
            lambda: (
                redis.llen("dramatiq:callbacks") == 0
                and redis.llen("dramatiq:callbacks.DQ") == 0
                and not redis.keys("dramatiq:__acks__.*")
            )
        )
        assert file_server.hits == hits_before
        assert read_manifest(s3, s3_bucket, "mj-success-1") == manifest
        assert redis.hget("mjhook:task:mj-success-1", "state") == b"stored"
        assert redis.hget("mjhook:task:mj-failed-1", "state") == b"failed"

        # The rejected body was kept for inspection.
        [kept] = [orjson.loads(entry) for entry in redis.lrange("mjhook:rejected", 0, -1)]
        assert kept["status"] == 400
        assert "../../etc" in kept["body"]


def test_a_real_workers_last_attempt_records_a_failing_file_and_keeps_the_stored_one(
    app_env: dict[str, str],
    tmp_path: Path,
    file_server: FileServer,
    s3_server: Any,
    s3_bucket: str,
    redis_server: Any,
) -> None:
    # Given workers that retry a callback once, soon, and a task whose second file always
    # answers 503
    env = {
        **app_env,
        "MJHOOK_MAX_RETRIES": "1",
        "MJHOOK_MIN_BACKOFF_MS": "100",
        "MJHOOK_MAX_BACKOFF_MS": "200",
    }
    image = png_bytes(3)
    urls = [file_server.add("/ok.png", image), file_server.add("/busy.png", b"busy", status=503)]
    s3 = s3_server.client()
    with running_stack(env, tmp_path, threads=2) as base_url:
        # When its callback is received
        with httpx.Client(base_url=base_url, timeout=10) as http:
            assert post_callback(http, callback("last-1", urls)).status_code == 200
        manifest = wait_for(lambda: read_manifest(s3, s3_bucket, "last-1"))
    # Then its second attempt, the last, records the failing file and keeps the one stored by the
    # first: the task is partial, not failed
    assert manifest["status"] == "partial", manifest
    assert [entry["key"] for entry in manifest["images"]] == ["tasks/last-1/0.png"]
    [error] = manifest["errors"]
    assert (error["index"], error["reason"]) == (1, "gave up after retries: HTTP 503")
    assert object_bytes(s3, s3_bucket, "tasks/last-1/0.png") == image
    assert (file_server.hits["/ok.png"], file_server.hits["/busy.png"]) == (1, 2)
    assert redis_server.client().hget("mjhook:task:last-1", "state") == b"partial"


def test_a_workers_log_even_at_debug_holds_no_callback_token_nor_url_signature(
    app_env: dict[str, str], tmp_path: Path, file_server: FileServer, s3_server: Any, s3_bucket: str
) -> None:
    """dramatiq logs a failed message with its arguments, and its actor each call's arguments at
    DEBUG: the callback whole, with the token its promptJson echoes and its URLs' signatures."""
    # Given workers logging at DEBUG that retry once, and a callback echoing our callback URL
    # whose second file always answers 503 (dramatiq logs the first attempt's failure)
    env = {
        **app_env,
        "MJHOOK_LOG_LEVEL": "DEBUG",
        "MJHOOK_MAX_RETRIES": "1",
        "MJHOOK_MIN_BACKOFF_MS": "100",
        "MJHOOK_MAX_BACKOFF_MS": "200",
    }
    urls = [
        file_server.add("/ok.png", png_bytes(5)) + "?sig=sig-s3cret",
        file_server.add("/busy.png", b"busy", status=503, content_type="text/plain") + "?sig=sig-s3cret",
    ]
    prompt = orjson.dumps(
        {"prompt": "a cat", "callBackUrl": "https://me.example/cb?token=tok-s3cret"}
    ).decode()
    s3 = s3_server.client()
    with running_stack(env, tmp_path, threads=2) as base_url:
        # When it is received, fails its first attempt and ends with its second
        with httpx.Client(base_url=base_url, timeout=10) as http:
            assert post_callback(http, callback("debug-1", urls, prompt=prompt)).status_code == 200
        manifest = wait_for(lambda: read_manifest(s3, s3_bucket, "debug-1"))
    # Then the workers' log names the failure, and holds neither secret
    assert manifest["status"] == "partial"
    log = (tmp_path / "workers.log").read_text()
    assert "Failed to process message process_callback[" in log
    assert "tok-s3cret" not in log
    assert "sig-s3cret" not in log
