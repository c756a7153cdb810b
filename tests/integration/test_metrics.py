"""Metrics and logs of the real processes: gunicorn (2 worker processes) and dramatiq (2 worker
processes, each serving the workers' ``/metrics`` on one shared port), real traffic, then
``/metrics`` of both scraped and their log files read."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from shared.metrics import default_multiprocess_dir, exposition_registry, render
from tests.support.metrics import Samples, parse_metrics, sample
from tests.support.pipeline import CALLBACK_PATH, callback, post_callback, read_manifest, wait_for
from tests.support.procs import free_port, process_tree
from tests.support.servers import FileServer, S3Server, png_bytes
from tests.support.sockets import get_from_whichever_process, listening_pids
from tests.support.stack import start_ingress, start_workers

pytestmark = pytest.mark.integration

#: Valid callbacks, files in each, and malformed callbacks sent.
CALLBACKS = 6
FILES_PER_CALLBACK = 2
MALFORMED = 3
#: Each file is this slow to download, so that one worker process (at most 2 threads x 2
#: prefetched messages) cannot take every callback before the other one polls the queue (<= 1 s).
FILE_DELAY_S = 2.0
#: Scrapes of the workers' port, each on a connection of its own, to hear from both processes.
WORKER_SCRAPES = 40


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse_metrics(response.text)


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``: its children, theirs, and so on."""
    return set(process_tree(pid)) - {pid}


def own_samples(directory: Path, pid: int, scratch: Path) -> Samples:
    """What process ``pid`` alone counted in the multiprocess ``directory``."""
    scratch.mkdir()
    for own in directory.glob(f"*_{pid}.db"):
        shutil.copy(own, scratch / own.name)
    return parse_metrics(render(exposition_registry(None, multiprocess_dir=str(scratch)))[0].decode())


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
            file_server.add(f"/m{n}-{i}.png", images[n, i], delay_s=FILE_DELAY_S)
            for i in range(FILES_PER_CALLBACK)
        ]
        for n in range(CALLBACKS)
    }
    ingress, base_url = start_ingress(ingress_env, tmp_path, extra_args=["--workers", "2"])
    workers = start_workers(worker_env, tmp_path, processes=2, threads=2)
    worker_metrics_dir = default_multiprocess_dir("worker", workers.pid)
    try:
        # Then below the dramatiq main process run its two worker processes and nothing else (no
        # process forked to serve the metrics), and both of them listen on the metrics port
        worker_pids = descendants(workers.pid)
        assert len(worker_pids) == 2, worker_pids
        assert listening_pids(metrics_port, [workers.pid, *worker_pids]) == worker_pids

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
            samples = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
            return samples if sample(samples, "mjhook_tasks_total", outcome="duplicate") else None

        wait_for(duplicate_counted, timeout_s=30, what="the duplicate counted")
        # Then whichever gunicorn process answers, it counts the requests of both
        ingress_scrapes = [scrape(f"{base_url}/metrics") for _ in range(4)]
        # And whichever dramatiq worker process the kernel hands a scrape to, it answers
        worker_answers: dict[int, list[Samples]] = {pid: [] for pid in worker_pids}
        for _ in range(WORKER_SCRAPES):
            pid, text = get_from_whichever_process("127.0.0.1", metrics_port, "/metrics", worker_pids)
            worker_answers[pid].append(parse_metrics(text))
        own = {pid: own_samples(worker_metrics_dir, pid, tmp_path / f"own-{pid}") for pid in worker_pids}
        worker_log = workers.log_text(tail_chars=None)
        ingress_log = ingress.log_text(tail_chars=None)
    finally:
        workers.terminate()
        ingress.terminate()
        # A stopped instance's default directory is otherwise removed when the next one starts.
        shutil.rmtree(worker_metrics_dir, ignore_errors=True)

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

    # And each worker process answered some scrapes, every time with the same sums over both
    # processes (each did some of the work), plus the queue's depths read from Redis
    assert all(worker_answers.values()), {pid: len(answers) for pid, answers in worker_answers.items()}
    worker_scrapes = [answer for answers in worker_answers.values() for answer in answers]
    assert all(answer == worker_scrapes[0] for answer in worker_scrapes)
    worker_samples = worker_scrapes[0]
    per_process = [sample(own[pid], "mjhook_message_seconds_count", actor="process_callback") for pid in own]
    assert all(per_process), f"a worker process processed no message: {per_process}"
    for name, labels in [
        ("mjhook_message_seconds_count", {"actor": "process_callback"}),
        ("mjhook_tasks_total", {"outcome": "stored"}),
        ("mjhook_files_stored_total", {}),
        ("mjhook_bytes_stored_total", {}),
    ]:
        assert sample(worker_samples, name, **labels) == sum(sample(own[pid], name, **labels) for pid in own)
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
        depth = ("mjhook_queue_messages", frozenset({("queue", "callbacks"), ("state", state)}))
        assert worker_samples.get(depth) == 0, f"no {state} depth served"

    # And every worker line about a task carries its taskId; no line is httpx's, which logged
    # each download's URL, signature and all (the download threads' context: tests/shared/test_logs.py)
    lines = json_lines(worker_log)
    assert {line["message"] for line in lines} >= {"Worker process is ready for action."}
    for task_id, urls in files.items():
        about = [
            line for line in lines if task_id in line["message"] or any(u in line["message"] for u in urls)
        ]
        assert {line.get("taskId") for line in about} == {task_id}, about
        assert "workers.pipeline" in {line["logger"] for line in about}
    assert not [line for line in lines if line["logger"].startswith(("httpx", "httpcore"))]
    assert json_lines(ingress_log), "the ingress logged no JSON line"


def test_a_second_instance_given_the_same_port_says_so_and_runs_on_without_serving(
    app_env: dict[str, str], tmp_path: Path
) -> None:
    # Given a dramatiq instance serving the workers' metrics on a port
    metrics_port = free_port()
    env = {**app_env, "MJHOOK_WORKER_METRICS_PORT": str(metrics_port), "MJHOOK_LOG_FORMAT": "json"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    started = [start_workers(env, tmp_path / "first", processes=2, threads=1)]
    try:
        # When a second instance is given the same port
        started.append(start_workers(env, tmp_path / "second", processes=2, threads=1))
        first, second = started
        # Then each of its worker processes logs that it does not serve, and which instance does
        refusals = [
            line["message"]
            for line in json_lines(second.log_since_start())
            if line["logger"] == "workers.metrics" and line["level"] == "ERROR"
        ]
        expected = (
            f"not serving the worker metrics on 127.0.0.1:{metrics_port}: port {metrics_port} is "
            f"served by another dramatiq instance (main process {first.pid}): give each instance on a "
            "host its own port"
        )
        assert refusals == [expected] * 2
        # And only the first instance's worker processes listen on the port
        first_workers, second_workers = descendants(first.pid), descendants(second.pid)
        assert len(second_workers) == 2, second_workers
        assert listening_pids(metrics_port, first_workers | second_workers) == first_workers
        # And the second instance runs on
        assert second.is_running()
        assert descendants(second.pid) == second_workers
    finally:
        for workers in started:
            workers.terminate()
            shutil.rmtree(default_multiprocess_dir("worker", workers.pid), ignore_errors=True)
