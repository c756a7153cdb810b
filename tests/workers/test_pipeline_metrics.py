"""What the processor counts, against real Redis, SeaweedFS and a file server."""

from __future__ import annotations

import redis

from shared.metrics import WorkerMetrics, create_worker_metrics
from shared.settings import Settings
from shared.taskstate import TaskState
from tests.support.servers import FileServer
from tests.workers.test_pipeline import callback, serve_pngs
from workers.runtime import build_parts, wait_for_bucket


def count(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_files_are_counted_when_stored_and_refusals_and_outcomes_each_time_a_task_ends(
    redis_server, s3_server, s3_bucket: str, file_server: FileServer
) -> None:
    # Given a processor counting in its own metrics
    redis.Redis.from_url(redis_server.url).flushdb()
    settings = Settings(
        redis_url=redis_server.url,
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        s3_bucket=s3_bucket,
        fetch_allow=("127.0.0.1",),
    )
    metrics = create_worker_metrics()
    parts = build_parts(settings, metrics=metrics)
    wait_for_bucket(parts.store, timeout_s=30)
    urls, images = serve_pngs(file_server, 2)
    urls.append(file_server.add("/error.html", b"<html>Forbidden</html>", content_type="text/html"))

    # When a task with two images and a page is processed, and then again
    assert parts.processor.process(callback(urls)) is TaskState.PARTIAL
    assert parts.processor.process(callback(urls)) is TaskState.PARTIAL

    # Then the files stored are counted once (the second time stores nothing), the refused page
    # and the outcome each time
    assert count(metrics, "mjhook_files_stored_total") == 2
    assert count(metrics, "mjhook_bytes_stored_total") == sum(len(image) for image in images)
    assert count(metrics, "mjhook_download_seconds_count") == 2
    assert count(metrics, "mjhook_upload_seconds_count") == 2
    assert count(metrics, "mjhook_files_failed_total", reason="DownloadRefused") == 2
    assert count(metrics, "mjhook_tasks_total", outcome="partial") == 2
    assert count(metrics, "mjhook_tasks_total", outcome="stored") == 0
