"""A signed callback whose body was tampered with: the signature holds (it covers only the taskId
and a timestamp), so re-verification against the provider's record-info must catch it."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from simulator import FaultConfig
from simulator.callbacks import webhook_signature
from simulator.tasks import SuccessFlag
from tests.support.pipeline import callback, read_manifest, wait_for
from tests.support.provider import StartSimulator
from tests.support.servers import FileServer, png_bytes
from tests.support.stack import start_ingress, start_workers

pytestmark = pytest.mark.integration

HMAC_KEY = "provider-webhook-key"


def signed_post(http: httpx.Client, body: dict[str, Any], *, key: str) -> httpx.Response:
    timestamp = int(time.time())
    return http.post(
        "/callbacks/midjourney",
        content=orjson.dumps(body),
        headers={
            "Content-Type": "application/json",
            "X-Webhook-Timestamp": str(timestamp),
            "X-Webhook-Signature": webhook_signature(key, body["data"]["taskId"], timestamp),
        },
    )


def test_a_tampered_body_with_a_valid_signature_is_caught_by_re_verification(
    app_env: dict[str, str],
    tmp_path: Path,
    s3_server: Any,
    s3_bucket: str,
    file_server: FileServer,
    start_simulator: StartSimulator,
) -> None:
    # Given a finished task at the provider (whose own callbacks never reach us)
    sim = start_simulator(faults=FaultConfig(drop_share=1.0), hmac_key=HMAC_KEY)
    task = sim.provider.submit(
        task_type="mj_txt2img", params={"prompt": "a fox"}, prompt={"prompt": "a fox"},
        callback_url="http://127.0.0.1:9/unused", delay_s=0.0,
    )  # fmt: skip
    wait_for(
        lambda: sim.task(task.task_id).success_flag is SuccessFlag.SUCCESS, timeout_s=10, what="generated"
    )
    env = {
        **app_env,
        "MJHOOK_WEBHOOK_HMAC_KEY": HMAC_KEY,
        "MJHOOK_PROVIDER_URL": sim.base_url,
        "MJHOOK_PROVIDER_API_KEY": sim.api_key,
    }
    attacker_url = file_server.add("/planted.png", png_bytes(666))
    ingress, base_url = start_ingress(env, tmp_path, extra_args=["--workers", "1"])
    workers = start_workers(env, tmp_path, processes=1, threads=2)
    try:
        with httpx.Client(base_url=base_url, timeout=10) as http:
            # A wrong key is refused outright
            forged = signed_post(http, callback(task.task_id, [attacker_url]), key="not-the-key")
            assert forged.status_code == 401
            # When someone replays a validly signed delivery with its result URLs replaced
            tampered = signed_post(http, callback(task.task_id, [attacker_url]), key=HMAC_KEY)
            assert tampered.status_code == 200
        manifest = wait_for(
            lambda: read_manifest(s3_server.client(), s3_bucket, task.task_id), timeout_s=60, what="manifest"
        )
    finally:
        workers.terminate()
        ingress.terminate()
    # Then the files stored are the provider's, the planted URL was never fetched, and the
    # manifest says what happened
    assert manifest["status"] == "stored"
    assert [image["sourceUrl"] for image in manifest["images"]] == sim.task(task.task_id).result_urls
    for image in manifest["images"]:
        assert image["sha256"] == hashlib.sha256(sim.expected_file(task.task_id, image["index"])).hexdigest()
    assert file_server.hits["/planted.png"] == 0
    assert manifest["verification"]["mismatch"] is True
    assert manifest["verification"]["callbackUrls"] == [attacker_url]
