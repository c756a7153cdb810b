"""What the workers' middleware counts at a message's end, when each worker process serves the
metrics, and the taskId it binds for logging."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from shared.errors import DownloadRefused, TaskBusy
from shared.logs import TASK_ID
from shared.metrics import WorkerMetrics, create_worker_metrics
from shared.queue import CALLBACK_QUEUE, PROCESS_CALLBACK
from shared.settings import Settings
from workers.log_context import TaskLogContext
from workers.metrics import WorkerMetricsMiddleware, serve_worker_metrics
from workers.metrics_port import claim_port

BROKER = StubBroker()
WORKER = dramatiq.Worker(BROKER, worker_threads=1)
#: Stands for the dramatiq main process of another instance.
OTHER_INSTANCE = 1


def message(*args: Any, actor: str = PROCESS_CALLBACK) -> dramatiq.MessageProxy:
    return dramatiq.MessageProxy(
        dramatiq.Message(queue_name=CALLBACK_QUEUE, actor_name=actor, args=args, kwargs={}, options={})
    )


def count(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def middleware(metrics: WorkerMetrics) -> WorkerMetricsMiddleware:
    clock = iter(range(100))
    return WorkerMetricsMiddleware(metrics, directory=Path("unused"), timer=lambda: next(clock))


def test_a_failed_attempt_is_a_retry_until_the_queue_gives_up_and_no_task_is_counted_failed() -> None:
    """A message given up is counted given up; whether its task failed is the runtime's to count
    (workers/runtime.py): a give-up often leaves the task stored, partial, to the worker holding
    it, or to the polling fallback."""
    metrics = create_worker_metrics()
    counting = middleware(metrics)
    retried, given_up = message({"taskId": "a"}), message({"taskId": "b"})
    for proxy in (retried, given_up):
        counting.before_process_message(BROKER, proxy)
    assert count(metrics, "mjhook_messages_in_progress", actor=PROCESS_CALLBACK) == 2

    counting.after_process_message(BROKER, retried, exception=TaskBusy("held"))
    given_up.fail()
    counting.after_process_message(BROKER, given_up, exception=DownloadRefused("gone"))

    assert count(metrics, "mjhook_task_retries_total", reason="TaskBusy") == 1
    assert count(metrics, "mjhook_task_failures_total", reason="DownloadRefused") == 1
    assert count(metrics, "mjhook_tasks_total", outcome="failed") == 0
    assert count(metrics, "mjhook_messages_in_progress", actor=PROCESS_CALLBACK) == 0
    assert count(metrics, "mjhook_message_seconds_count", actor=PROCESS_CALLBACK) == 2


def test_other_actors_are_timed_but_not_counted_as_tasks() -> None:
    metrics = create_worker_metrics()
    counting = middleware(metrics)
    poll = message(actor="poll_silent_tasks")
    counting.before_process_message(BROKER, poll)
    poll.fail()
    counting.after_process_message(BROKER, poll, exception=RuntimeError("x"))
    assert count(metrics, "mjhook_tasks_total", outcome="failed") == 0
    assert count(metrics, "mjhook_message_seconds_count", actor="poll_silent_tasks") == 1


def test_a_skipped_message_never_started_leaves_the_gauge_alone() -> None:
    metrics = create_worker_metrics()
    middleware(metrics).after_skip_message(BROKER, message({"taskId": "a"}))
    assert count(metrics, "mjhook_messages_in_progress", actor=PROCESS_CALLBACK) == 0


class FakeServer:
    stopped = False

    def stop(self) -> None:
        self.stopped = True


def test_each_worker_process_serves_once_booted_until_shut_down_and_nothing_is_forked(
    tmp_path: Path,
) -> None:
    # Given the middleware of a worker process that serves the metrics
    served: list[FakeServer] = []

    def serve() -> FakeServer:
        served.append(FakeServer())
        return served[-1]

    counting = WorkerMetricsMiddleware(create_worker_metrics(), directory=tmp_path, serve=serve)
    assert counting.forks == []
    # When the worker boots, then it serves, once
    counting.after_worker_boot(BROKER, WORKER)
    assert len(served) == 1
    assert not served[0].stopped
    # And when it has shut down, it stops serving
    counting.after_worker_shutdown(BROKER, WORKER)
    assert served[0].stopped


def test_a_port_that_cannot_be_had_is_one_log_line_and_no_server(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given the port held by a socket that does not share it
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        settings = Settings.from_env(
            {"MJHOOK_WORKER_METRICS_PORT": str(port), "MJHOOK_BROKER_URL": "amqp://127.0.0.1:9"}
        )
        # When a worker process is to serve on it, then it logs why it does not, and serves nothing
        with caplog.at_level(logging.ERROR, logger="workers.metrics"):
            assert serve_worker_metrics(settings, tmp_path) is None
    assert [record.getMessage() for record in caplog.records] == [
        f"not serving the worker metrics on 127.0.0.1:{port}: [Errno 98] Address already in use"
    ]
    # And its claim on the port is let go
    claim_port(port, instance=OTHER_INSTANCE).release()


def test_the_task_id_is_bound_from_the_first_hook_to_the_last() -> None:
    context = TaskLogContext()
    proxy = message({"taskId": "mj_task_1", "resultUrls": []})
    context.before_process_message(BROKER, proxy)
    assert TASK_ID.get() == "mj_task_1"
    context.after_process_message(BROKER, proxy, exception=TaskBusy("held"))
    assert TASK_ID.get() is None


def test_messages_without_a_callback_bind_no_task_id() -> None:
    context = TaskLogContext()
    for proxy in (message(), message("not a dict"), message({"taskId": 7})):
        context.before_process_message(BROKER, proxy)
        assert TASK_ID.get() is None
        context.after_skip_message(BROKER, proxy)
