"""A worker killed mid-task: its message comes back and the task completes; a live worker busy
with a long task is never mistaken for a dead one."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared import keys
from shared.callback import Callback
from shared.queue import CALLBACK_QUEUE, create_broker
from shared.redis_client import connect_redis
from shared.settings import Settings
from shared.taskstate import TaskState, TaskStore
from tests.support.pipeline import callback, post_callback, read_manifest, wait_for
from tests.support.servers import FileServer, png_bytes
from tests.support.stack import start_ingress, start_workers
from workers.heartbeat import beat
from workers.second_look import PendingGiveUps

pytestmark = pytest.mark.integration

#: Short clocks so the test runs in seconds; production defaults are 20 s each.
FAST_REDELIVERY = {
    "MJHOOK_REDELIVERY_S": "3",
    "MJHOOK_LEASE_TTL_S": "2",
    "MJHOOK_MIN_BACKOFF_MS": "200",
    "MJHOOK_MAX_BACKOFF_MS": "2000",
}


@contextmanager
def a_worker_killed_mid_download(
    env: dict[str, str],
    tmp_path: Path,
    file_server: FileServer,
    *,
    task_id: str,
    path: str,
    before_rescue: Callable[[], object] = lambda: None,
) -> Iterator[None]:
    """Given the ingress and a worker, when a callback of ``task_id`` naming the file at ``path``
    of ``file_server`` is acknowledged and the worker is SIGKILLed once that file's download has
    started, then ``before_rescue`` runs and another worker is started; all of them stop when
    the block ends."""
    ingress, base_url = start_ingress(env, tmp_path, extra_args=["--workers", "1"])
    doomed = start_workers(env, tmp_path / "doomed", processes=1, threads=2)
    rescuer = None
    try:
        with httpx.Client(base_url=base_url, timeout=10) as http:
            assert post_callback(http, callback(task_id, [file_server.url(path)])).status_code == 200
        wait_for(lambda: file_server.hits[path] >= 1, timeout_s=30, what="download started")
        doomed.kill()
        before_rescue()
        rescuer = start_workers(env, tmp_path / "rescuer", processes=1, threads=2)
        yield
    finally:
        if rescuer is not None:
            rescuer.terminate()
        doomed.kill()
        ingress.terminate()


def test_a_worker_killed_mid_download_is_redelivered_and_completes(
    app_env: dict[str, str], tmp_path: Path, file_server: FileServer, s3_server: Any, s3_bucket: str
) -> None:
    env = {**app_env, **FAST_REDELIVERY}
    image = png_bytes(7, 512, 512)
    # Given a file that takes ~8 s to download
    file_server.add("/slow.png", image, chunk_size=8192, chunk_delay_s=0.08)
    # When the worker is SIGKILLed while the download is under way (the file then served fast)
    with a_worker_killed_mid_download(
        env,
        tmp_path,
        file_server,
        task_id="crash-1",
        path="/slow.png",
        before_rescue=lambda: file_server.add("/slow.png", image),
    ):
        # Then another worker gets the message back and stores the task
        manifest = wait_for(
            lambda: read_manifest(s3_server.client(), s3_bucket, "crash-1"), timeout_s=90, what="manifest"
        )
    assert manifest["status"] == "stored"
    assert manifest["images"][0]["sha256"] == hashlib.sha256(image).hexdigest()
    assert file_server.hits["/slow.png"] == 2


def test_a_message_whose_worker_keeps_dying_is_given_up_with_the_reason(
    app_env: dict[str, str], tmp_path: Path, file_server: FileServer, s3_server: Any, s3_bucket: str
) -> None:
    # Given workers that start an attempt at a message once at most (the default allows three)
    env = {**app_env, **FAST_REDELIVERY, "MJHOOK_MAX_ATTEMPT_STARTS": "1"}
    file_server.add("/poison.png", png_bytes(8, 512, 512), chunk_size=8192, chunk_delay_s=0.08)
    tasks = TaskStore(connect_redis(Settings.from_env(env).redis_url), ttl_s=3600)
    # When the worker dies during the message's attempt and the message is redelivered
    with a_worker_killed_mid_download(env, tmp_path, file_server, task_id="poison-1", path="/poison.png"):
        record = wait_for(
            lambda: (r := tasks.get("poison-1")) is not None and r.state is TaskState.FAILED and r,
            timeout_s=90,
            what="the task failed",
        )
        manifest = wait_for(
            lambda: read_manifest(s3_server.client(), s3_bucket, "poison-1"), timeout_s=30, what="manifest"
        )
    # Then the attempt is not started again: the task fails, saying why, and the file was not
    # fetched a second time
    assert "AttemptNeverEnds: attempt 1 at this message was started 2 times" in record.fields["reason"]
    assert manifest["status"] == "failed"
    assert "never ended" in str(manifest["errors"])
    assert file_server.hits["/poison.png"] == 1


def test_a_long_task_is_not_mistaken_for_a_dead_worker(
    app_env: dict[str, str], tmp_path: Path, file_server: FileServer, s3_server: Any, s3_bucket: str
) -> None:
    env = {**app_env, **FAST_REDELIVERY}
    # Given two downloads lasting about two redelivery timeouts each, and a one-thread worker that
    # takes both at once (one running, one prefetched), so its main consumer stops talking
    # to Redis (dramatiq #692). (Its idle delay-queue consumer still beats in dramatiq 2; the
    # heartbeat thread that also covers a busy delay queue is proven in tests/workers/test_heartbeat.py.)
    images = {f"long-{i}": png_bytes(10 + i, 512, 512) for i in range(2)}
    urls = {
        task_id: file_server.add(f"/{task_id}.png", image, chunk_size=8192, chunk_delay_s=0.05)
        for task_id, image in images.items()
    }
    ingress, base_url = start_ingress(env, tmp_path, extra_args=["--workers", "1"])
    busy = start_workers(env, tmp_path / "busy", processes=1, threads=1)
    # And another broker running queue maintenance all the time, as other workers do
    maintainer = Maintainer(Settings.from_env(env))
    try:
        with httpx.Client(base_url=base_url, timeout=10) as http:
            for task_id, url in urls.items():
                assert post_callback(http, callback(task_id, [url])).status_code == 200
        for task_id in images:
            wait_for(
                lambda task_id=task_id: read_manifest(s3_server.client(), s3_bucket, task_id),  # type: ignore[misc]
                timeout_s=90,
                what=f"manifest of {task_id}",
            )
        logs = busy.log_text(tail_chars=None)
    finally:
        maintainer.stop()
        busy.terminate()
        ingress.terminate()
    # Then no message was taken away from the busy worker and handed out again
    assert "being processed by another worker" not in logs
    assert all(file_server.hits[f"/{task_id}.png"] == 1 for task_id in images)


class Maintainer:
    """Forces dramatiq's queue maintenance every 0.3 s from a broker of its own."""

    def __init__(self, settings: Settings) -> None:
        self._broker = create_broker(settings, middleware=[])
        self._broker.declare_queue(CALLBACK_QUEUE)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            beat(self._broker)  # type: ignore[arg-type]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def test_sigterm_lets_the_task_in_flight_finish(
    app_env: dict[str, str], tmp_path: Path, file_server: FileServer, s3_server: Any, s3_bucket: str
) -> None:
    image = png_bytes(9, 512, 512)
    url = file_server.add("/inflight.png", image, chunk_size=8192, chunk_delay_s=0.03)
    ingress, base_url = start_ingress(app_env, tmp_path, extra_args=["--workers", "1"])
    workers = start_workers(app_env, tmp_path, processes=1, threads=2)
    try:
        with httpx.Client(base_url=base_url, timeout=10) as http:
            assert post_callback(http, callback("graceful-1", [url])).status_code == 200
        wait_for(lambda: file_server.hits["/inflight.png"] >= 1, timeout_s=30, what="download started")
        # When the worker is asked to stop while the download is under way (SIGTERM to the main
        # process only, as `docker stop` does; it tells its worker processes itself)
        os.kill(workers.pid, signal.SIGTERM)
        exit_code = wait_for(lambda: workers.returncode is not None and (workers.returncode,), timeout_s=60)[
            0
        ]
    finally:
        workers.kill()
        ingress.terminate()
    # Then it finished the task first, and exited cleanly
    assert exit_code == 0
    manifest = read_manifest(s3_server.client(), s3_bucket, "graceful-1")
    assert manifest is not None
    assert manifest["status"] == "stored"
    assert file_server.hits["/inflight.png"] == 1


def test_a_running_worker_takes_a_second_look_another_worker_left_in_redis(
    app_env: dict[str, str], tmp_path: Path
) -> None:
    """Given a give-up left for a second look by a worker that is gone, at a task still
    processing under no lease
    When a real worker process runs
    Then it takes the look and fails the task with the reason."""
    settings = Settings.from_env(app_env)
    client = connect_redis(settings.redis_url)
    tasks = TaskStore(client, ttl_s=3600)
    tasks.move("orphan-1", TaskState.PROCESSING)
    PendingGiveUps(client, after_s=0).add(
        Callback("orphan-1", 200, "success", None, (), "2026-11-25T00:00:00.000Z"),
        "gave up: DownloadFailed: reset",
    )
    workers = start_workers({**app_env, **FAST_REDELIVERY}, tmp_path, processes=1, threads=1)
    try:
        wait_for(lambda: tasks.get("orphan-1").state is TaskState.FAILED, timeout_s=30, what="the failure")  # type: ignore[union-attr]
        wait_for(lambda: client.zcard(keys.GIVE_UPS_PENDING) == 0, timeout_s=10, what="the look done")
    finally:
        workers.terminate()
    assert tasks.get("orphan-1").fields["reason"] == "gave up: DownloadFailed: reset"  # type: ignore[union-attr]
