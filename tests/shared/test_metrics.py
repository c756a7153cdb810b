"""The metrics module: declaring, serving, and adding up several processes' values."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from shared.metrics import (
    MULTIPROC_ENV,
    ScrapeGauges,
    create_ingress_metrics,
    create_worker_metrics,
    default_multiprocess_dir,
    exposition_registry,
    mark_process_dead,
    multiprocess_dir,
    remove_stale_dirs,
    render,
    serve_registry,
)
from tests.support.metrics import Samples, parse_metrics

if TYPE_CHECKING:
    # Only for annotations: prometheus_client picks its mode when first imported.
    from prometheus_client import CollectorRegistry

REPO_ROOT = Path(__file__).resolve().parents[2]


def samples(text: bytes) -> Samples:
    return parse_metrics(text.decode())


def test_every_metric_is_served_with_the_mjhook_prefix_and_known_labels_start_at_zero() -> None:
    ingress, worker = create_ingress_metrics(), create_worker_metrics()
    names = {
        name for registry in (ingress.registry, worker.registry) for name, _ in samples(render(registry)[0])
    }
    assert all(name.startswith("mjhook_") for name in names), names
    served = samples(render(worker.registry)[0])
    assert served[("mjhook_tasks_total", frozenset({("outcome", "duplicate")}))] == 0
    assert (
        samples(render(ingress.registry)[0])[
            ("mjhook_callbacks_rejected_total", frozenset({("status", "413")}))
        ]
        == 0
    )


def test_scrape_gauges_are_read_when_scraped_and_a_failing_one_leaves_the_others() -> None:
    depth = [3]

    def broken() -> list[tuple[tuple[str, ...], float]]:
        raise ConnectionError("redis is down")

    registry = exposition_registry(
        None,
        multiprocess_dir=None,
        collectors=[
            ScrapeGauges("mjhook_test_depth", "Depth.", lambda: [((), depth[0])]),
            ScrapeGauges("mjhook_test_broken", "Broken.", broken),
        ],
    )
    assert samples(render(registry)[0]) == {("mjhook_test_depth", frozenset()): 3}
    depth[0] = 5
    assert samples(render(registry)[0]) == {("mjhook_test_depth", frozenset()): 5}


def test_the_operator_directory_wins_but_not_a_default_one_inherited_from_another_instance(
    tmp_path: Path,
) -> None:
    own = default_multiprocess_dir("ingress", 42)
    assert multiprocess_dir({}, role="ingress", owner_pid=42) == own
    assert multiprocess_dir({MULTIPROC_ENV: str(tmp_path)}, role="ingress", owner_pid=42) == tmp_path
    inherited = str(default_multiprocess_dir("ingress", 41))
    assert multiprocess_dir({MULTIPROC_ENV: inherited}, role="ingress", owner_pid=42) == own


def test_default_directories_of_stopped_instances_are_removed() -> None:
    role = f"test{uuid.uuid4().hex[:8]}"
    gone, running = default_multiprocess_dir(role, 1001), default_multiprocess_dir(role, 1002)
    for directory in (gone, running):
        directory.mkdir()
        (directory / "counter_7.db").write_bytes(b"")
    try:
        assert remove_stale_dirs(role, alive=lambda pid: pid == 1002) == [gone]
        assert not gone.exists()
        assert running.exists()
    finally:
        for directory in (gone, running):
            if directory.exists():
                (directory / "counter_7.db").unlink()
                directory.rmdir()


COUNT_IN_ANOTHER_PROCESS = textwrap.dedent(
    """
    from shared.metrics import create_worker_metrics
    metrics = create_worker_metrics()
    metrics.files_stored.inc(2)
    metrics.messages_in_progress.labels("process_callback").inc()
    print(__import__("os").getpid())
    """
)


def test_values_of_several_processes_add_up_and_a_dead_ones_live_gauges_drop_out(tmp_path: Path) -> None:
    processes = 2
    # Given processes counting in one directory
    env = {**os.environ, MULTIPROC_ENV: str(tmp_path), "PYTHONPATH": str(REPO_ROOT)}
    pids = [
        int(
            subprocess.run(
                [sys.executable, "-c", COUNT_IN_ANOTHER_PROCESS],
                env=env,
                capture_output=True,
                check=True,
                text=True,
            ).stdout
        )
        for _ in range(processes)
    ]
    # When it is served, then their counts are summed
    registry = exposition_registry(None, multiprocess_dir=str(tmp_path))
    served = samples(render(registry)[0])
    assert served[("mjhook_files_stored_total", frozenset())] == 2 * processes
    in_progress = ("mjhook_messages_in_progress", frozenset({("actor", "process_callback")}))
    assert served[in_progress] == processes
    # And once one is marked dead, its live gauge no longer counts (its counters still do)
    mark_process_dead(pids[0], tmp_path)
    served = samples(render(registry)[0])
    assert served[in_progress] == processes - 1
    assert served[("mjhook_files_stored_total", frozenset())] == 2 * processes


def scrape_value(port: int, name: str) -> float:
    """One scrape on a connection of its own (so the kernel picks a listener each time)."""
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Connection": "close"}, timeout=5)
    assert response.status_code == 200
    return parse_metrics(response.text)[(name, frozenset())]


def test_servers_sharing_a_port_each_answer_and_the_last_one_answers_alone() -> None:
    # Given two servers on one port, each serving a registry of its own
    def registry(value: float) -> CollectorRegistry:
        gauge = ScrapeGauges("mjhook_test_server", "Which server answered.", lambda: [((), value)])
        return exposition_registry(None, multiprocess_dir=None, collectors=[gauge])

    first = serve_registry(registry(1), host="127.0.0.1", port=0)
    second = serve_registry(registry(2), host="127.0.0.1", port=first.port)
    try:
        # When scraped on fresh connections, then the kernel hands scrapes to both
        assert {scrape_value(first.port, "mjhook_test_server") for _ in range(40)} == {1, 2}
        # And once one stops, the other answers every scrape
        first.stop()
        assert {scrape_value(second.port, "mjhook_test_server") for _ in range(10)} == {2}
    finally:
        first.stop()  # stopping twice is harmless
        second.stop()
    with pytest.raises(httpx.ConnectError):
        scrape_value(second.port, "mjhook_test_server")


@pytest.mark.parametrize(
    "accept",
    ["text/plain; version=abc", "application/openmetrics-text; version=abc", "text/plain; version=0.0.4"],
)
def test_a_scrape_with_any_accept_header_gets_the_metrics(accept: str) -> None:
    """An Accept header prometheus_client cannot read ("version=abc") raised a TypeError: a 500
    and a traceback per request, from anyone who can reach the endpoint."""
    gauge = ScrapeGauges("mjhook_test_accept", "A gauge.", lambda: [((), 7)])
    registry = exposition_registry(None, multiprocess_dir=None, collectors=[gauge])
    body, content_type = render(registry, accept)
    assert samples(body) == {("mjhook_test_accept", frozenset()): 7}
    server = serve_registry(registry, host="127.0.0.1", port=0)
    try:
        answer = httpx.get(f"http://127.0.0.1:{server.port}/metrics", headers={"Accept": accept}, timeout=10)
    finally:
        server.stop()
    assert answer.status_code == 200
    assert answer.headers["content-type"] == content_type
    assert samples(answer.content) == {("mjhook_test_accept", frozenset()): 7}


def test_a_port_held_by_a_socket_that_does_not_share_it_is_refused() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        with pytest.raises(OSError, match="in use"):
            serve_registry(
                exposition_registry(None, multiprocess_dir=None), host="127.0.0.1", port=held.getsockname()[1]
            )


def test_binding_never_asks_dns_for_a_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """http.server's bind looks the host's name up (socket.getfqdn), which can hang a worker's boot
    where no resolver answers; ours must not."""

    def no_dns(*args: object) -> str:
        raise AssertionError("socket.getfqdn was called")

    monkeypatch.setattr(socket, "getfqdn", no_dns)
    gauge = ScrapeGauges("mjhook_test_server", "Which server answered.", lambda: [((), 7)])
    server = serve_registry(
        exposition_registry(None, multiprocess_dir=None, collectors=[gauge]), host="127.0.0.1", port=0
    )
    try:
        assert scrape_value(server.port, "mjhook_test_server") == 7
    finally:
        server.stop()
