"""Metrics and logs of the real processes: gunicorn (2 worker processes) and dramatiq (2 worker
processes), real traffic, then ``/metrics`` of both scraped and their log files read."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from shared.metrics import default_multiprocess_dir
from tests.support.metrics import Samples, parse_metrics, sample
from tests.support.pipeline import CALLBACK_PATH, callback, post_callback, read_manifest, wait_for
from tests.support.procs import free_port
from tests.support.servers import FileServer, S3Server, png_bytes
from tests.support.stack import start_ingress, start_workers

pytestmark = pytest.mark.integration

#: Valid callbacks, files in each, and malformed callbacks sent.
CALLBACKS = 6
FILES_PER_CALLBACK = 2
MALFORMED = 3


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse_metrics(response.text)


def json_lines(log: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in log.splitlines() if line.startswith("{")]


def post_fresh_connection(base_url: str, body: dict[str, Any] | bytes) -> httpx.Response:
    """One request on a connection of its own, so gunicorn's processes share the requests."""
    with httpx.Client(base_url=base_url, timeout=10, headers={"Connection": "close"}) as http:
        return post_callback(http, body)


def test_counters_add_up_over_every_process_and_every_task_line_has_its_task_id(
    app_env: dict[str, str], file_server: FileServer, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    # Given an ingress with two processes counting in a directory of our choice, and a dramatiq
    # instance with two processes counting in its default directory, serving on a free port
    ingress_metrics_dir = tmp_path / "ingress-metrics"
    ingress_env = {**app_env, "PROMETHEUS_MULTIPROC_DIR": str(ingress_metrics_dir)}
    metrics_port = free_port()
    worker_env = {
        **app_env,
        "MJHOOK_WORKER_METRICS_PORT": str(metrics_port),
        "MJHOOK_WORKER_METRICS_HOST": "127.0.0.1",
        "MJHOOK_LOG_FORMAT": "json",
    }
    worker_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    images = {
        (n, i): png_bytes(10 * n + i, width=64 + 16 * i)
        for n in range(CALLBACKS)
        for i in range(FILES_PER_CALLBACK)
    }
    files = {
        f"mj_metrics_{n}": [
            file_server.add(f"/m{n}-{i}.png", images[n, i]) for i in range(FILES_PER_CALLBACK)
        ]
        for n in range(CALLBACKS)
    }
    ingress, base_url = start_ingress(ingress_env, tmp_path, extra_args=["--workers", "2"])
    workers = start_workers(worker_env, tmp_path, processes=2, threads=2)
    worker_metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        # When valid and malformed callbacks arrive, on connections of their own, in parallel
        with ThreadPoolExecutor(max_workers=4) as pool:
            valid = list(
                pool.map(lambda item: post_fresh_connection(base_url, callback(*item)), files.items())
            )
            malformed = list(
                pool.map(lambda _: post_fresh_connection(base_url, b"{not json"), range(MALFORMED))
            )
        assert [r.status_code for r in valid] == [200] * CALLBACKS
        assert [r.status_code for r in malformed] == [400] * MALFORMED
        for task_id in files:
            wait_for(
                lambda t=task_id: read_manifest(s3_server.client(), s3_bucket, t), what=f"{task_id} stored"
            )
        # And one of them again, once it is stored
        first = next(iter(files))
        assert post_fresh_connection(base_url, callback(first, files[first])).status_code == 200

        def duplicate_counted() -> Samples | None:
            samples = scrape(worker_metrics_url)
            return samples if sample(samples, "mjhook_tasks_total", outcome="duplicate") else None

        worker_samples = wait_for(duplicate_counted, timeout_s=30, what="the duplicate counted")
        # Then whichever gunicorn process answers, it counts the requests of both
        ingress_scrapes = [scrape(f"{base_url}/metrics") for _ in range(4)]
        worker_log = workers.log_text(tail_chars=None)
        ingress_log = ingress.log_text(tail_chars=None)
    finally:
        workers.terminate()
        ingress.terminate()
        # A stopped instance's default directory is otherwise removed when the next one starts.
        shutil.rmtree(default_multiprocess_dir("worker", workers.pid), ignore_errors=True)

    for samples in ingress_scrapes:
        requests = "mjhook_http_requests_total"
        assert sample(samples, requests, endpoint=CALLBACK_PATH, method="POST", status="200") == CALLBACKS + 1
        assert sample(samples, requests, endpoint=CALLBACK_PATH, method="POST", status="400") == MALFORMED
        assert sample(samples, "mjhook_callback_ack_seconds_count") == CALLBACKS + 1 + MALFORMED
        assert sample(samples, "mjhook_callback_ack_seconds_bucket", le="1.0") == CALLBACKS + 1 + MALFORMED
        assert sample(samples, "mjhook_callbacks_rejected_total", status="400") == MALFORMED
        assert sample(samples, "mjhook_callbacks_spooled_total") == 0
        assert sample(samples, "mjhook_enqueue_failures_total") == 0
        assert sample(samples, "mjhook_spool_callbacks") == 0
    assert list(ingress_metrics_dir.glob("counter_*.db")), "the ingress did not count in the given directory"

    # And the workers count every task, file and byte once, over both processes
    assert sample(worker_samples, "mjhook_tasks_total", outcome="stored") == CALLBACKS
    assert sample(worker_samples, "mjhook_tasks_total", outcome="duplicate") == 1
    assert sample(worker_samples, "mjhook_tasks_total", outcome="failed") == 0
    assert sample(worker_samples, "mjhook_files_stored_total") == CALLBACKS * FILES_PER_CALLBACK
    assert sample(worker_samples, "mjhook_bytes_stored_total") == sum(len(image) for image in images.values())
    assert sample(worker_samples, "mjhook_download_seconds_count") == CALLBACKS * FILES_PER_CALLBACK
    assert sample(worker_samples, "mjhook_upload_seconds_count") == CALLBACKS * FILES_PER_CALLBACK
    assert sample(worker_samples, "mjhook_message_seconds_count", actor="process_callback") == CALLBACKS + 1
    assert sample(worker_samples, "mjhook_messages_in_progress", actor="process_callback") == 0
    for state in ("ready", "delayed", "in_flight", "dead"):
        assert sample(worker_samples, "mjhook_queue_messages", queue="callbacks", state=state) == 0

    # And every worker line about a task carries its taskId, also those logged by the download
    # threads (httpx logs each request)
    lines = json_lines(worker_log)
    assert {line["message"] for line in lines} >= {"Worker process is ready for action."}
    for task_id, urls in files.items():
        about = [
            line for line in lines if task_id in line["message"] or any(u in line["message"] for u in urls)
        ]
        assert {line.get("taskId") for line in about} == {task_id}, about
        assert {line["logger"] for line in about} >= {"workers.pipeline", "httpx"}
    assert json_lines(ingress_log), "the ingress logged no JSON line"
