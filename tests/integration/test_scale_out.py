"""Scale-out: the queue on RabbitMQ instead of Redis, and two worker pools (standing in for two
hosts) sharing one Redis and one S3 store."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.pipeline import callback, post_callback, read_manifest, wait_for
from tests.support.servers import FileServer, png_bytes
from tests.support.stack import start_ingress, start_workers

pytestmark = pytest.mark.integration

RABBITMQ = ("127.0.0.1", 5672)
#: How long a RabbitMQ just started by `make test` gets to answer, seconds.
RABBITMQ_WAIT_S = 60


def rabbitmq_answers() -> bool:
    try:
        with socket.create_connection(RABBITMQ, timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def rabbitmq_vhost() -> Iterator[str]:
    """A vhost of its own on the machine's RabbitMQ, so no other run shares our queues."""
    # Never skipped: `make test` installs and starts RabbitMQ where it is missing (it may still
    # be starting).
    deadline = time.monotonic() + RABBITMQ_WAIT_S
    while not rabbitmq_answers() and time.monotonic() < deadline:
        time.sleep(0.5)
    ctl = rabbitmqctl()
    if not rabbitmq_answers() or ctl is None:
        pytest.fail("RabbitMQ must run on 127.0.0.1:5672, with rabbitmqctl (`make test` starts it)")
    vhost = f"mjhook-test-{uuid.uuid4().hex[:8]}"
    subprocess.run([*ctl, "-q", "add_vhost", vhost], check=True, timeout=60)
    subprocess.run(
        [*ctl, "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True, timeout=60
    )
    try:
        yield vhost
    finally:
        subprocess.run([*ctl, "-q", "delete_vhost", vhost], check=False, timeout=60)


def rabbitmqctl() -> list[str] | None:
    """The command that runs rabbitmqctl: Debian puts it in /usr/sbin (not on a user's PATH), and
    it runs only as root or rabbitmq: through ``sudo -n`` for anyone else (README: ``make test``
    as root or with sudo). None when it is not installed."""
    found = shutil.which("rabbitmqctl") or shutil.which("rabbitmqctl", path="/usr/sbin:/usr/lib/rabbitmq/bin")
    if found is None:
        return None
    return [found] if os.geteuid() == 0 else ["sudo", "-n", found]


def serve(file_server: FileServer, task_ids: list[str]) -> dict[str, tuple[str, bytes]]:
    return {
        task_id: (file_server.add(f"/{task_id}.png", image := png_bytes(200 + n)), image)
        for n, task_id in enumerate(task_ids)
    }


def test_the_pipeline_runs_with_the_queue_on_rabbitmq(
    app_env: dict[str, str],
    rabbitmq_vhost: str,
    tmp_path: Path,
    file_server: FileServer,
    s3_server: Any,
    s3_bucket: str,
    redis_server: Any,
) -> None:
    env = {**app_env, "MJHOOK_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{rabbitmq_vhost}"}
    files = serve(file_server, [f"rabbit-{i}" for i in range(3)])
    ingress, base_url = start_ingress(env, tmp_path, extra_args=["--workers", "1"])
    workers = start_workers(env, tmp_path)
    try:
        with httpx.Client(base_url=base_url, timeout=10) as http:
            for task_id, (url, _) in files.items():
                assert post_callback(http, callback(task_id, [url])).status_code == 200
        for task_id, (_, image) in files.items():
            manifest = wait_for(
                lambda task_id=task_id: read_manifest(s3_server.client(), s3_bucket, task_id),  # type: ignore[misc]
                timeout_s=60,
                what=f"manifest of {task_id}",
            )
            assert manifest["images"][0]["sha256"] == hashlib.sha256(image).hexdigest()
    finally:
        workers.terminate()
        ingress.terminate()
    # The queue was RabbitMQ: nothing went through Redis's dramatiq keys; task state stayed in Redis.
    client = redis_server.client()
    assert client.keys("dramatiq:*") == []
    assert client.hget("mjhook:task:rabbit-0", "state") == b"stored"


def test_two_worker_pools_share_the_work_and_process_each_task_once(
    app_env: dict[str, str], tmp_path: Path, file_server: FileServer, s3_server: Any, s3_bucket: str
) -> None:
    task_ids = [f"pool-{i}" for i in range(16)]
    # Each download takes ~0.3 s, so one pool alone cannot drain the queue before the other starts.
    files = {
        task_id: (file_server.add(f"/{task_id}.png", image := png_bytes(300 + n), chunk_delay_s=0.1), image)
        for n, task_id in enumerate(task_ids)
    }
    ingress, base_url = start_ingress(app_env, tmp_path, extra_args=["--workers", "1"])
    pool_a = start_workers(app_env, tmp_path / "host-a", processes=1, threads=2)
    pool_b = start_workers(app_env, tmp_path / "host-b", processes=1, threads=2)
    try:
        with httpx.Client(base_url=base_url, timeout=10) as http:
            for task_id, (url, _) in files.items():
                assert post_callback(http, callback(task_id, [url])).status_code == 200
        for task_id in task_ids:
            wait_for(
                lambda task_id=task_id: read_manifest(s3_server.client(), s3_bucket, task_id),  # type: ignore[misc]
                timeout_s=90,
                what=f"manifest of {task_id}",
            )
        logs = {"a": pool_a.log_text(tail_chars=None), "b": pool_b.log_text(tail_chars=None)}
    finally:
        pool_a.terminate()
        pool_b.terminate()
        ingress.terminate()
    # Each task was downloaded once, and each pool stored some of them.
    assert all(file_server.hits[f"/{task_id}.png"] == 1 for task_id in task_ids)
    stored_by = {pool: {t for t in task_ids if f"task {t} stored" in text} for pool, text in logs.items()}
    assert stored_by["a"]
    assert stored_by["b"]
    assert stored_by["a"].isdisjoint(stored_by["b"])
    assert stored_by["a"] | stored_by["b"] == set(task_ids)
