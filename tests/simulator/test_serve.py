"""``mjhook simulate serve``: how many callbacks it has in flight (``--concurrency``), for its
API's tasks and for load runs started in it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from simulator.config import DEFAULT_CALLBACK_RATE_PER_S, DEFAULT_CALLBACK_TIMEOUT_S
from simulator.control import run_load_in
from simulator.load import delivery_threads_for
from tests.simulator.support import Receiver, TricklingReceiver, submit
from tests.support.procs import ManagedProcess, free_port, venv_bin, wait_for_port

API_KEY = "sim-api-key"
#: ``serve(*options)``: the base URL of a ``mjhook simulate serve`` started with them.
ServeFactory = Callable[..., str]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeFactory]:
    """Start ``mjhook simulate serve`` with the given options (tiny images, no generation delay,
    retries at 1/1000 of the schedule); each stops at teardown."""
    started: list[ManagedProcess] = []

    def start(*options: str) -> str:
        port = free_port()
        argv = [
            venv_bin("mjhook"), "simulate", "serve", "--port", str(port), "--generation-delay", "0",
            "--width", "8", "--height", "8", "--time-scale", "0.001", *options,
        ]  # fmt: skip
        proc = ManagedProcess(argv, log_path=tmp_path / f"serve-{port}.log")
        started.append(proc)
        wait_for_port("127.0.0.1", port, 30.0, proc=proc)
        return f"http://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for proc in started:
            proc.terminate()


def _api(base_url: str) -> httpx.Client:
    return httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {API_KEY}"}, trust_env=False, timeout=10.0
    )


def _wait_for_requests(receiver: TricklingReceiver, count: int, timeout_s: float = 10.0) -> int:
    deadline = time.monotonic() + timeout_s
    while receiver.requests < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return receiver.requests


def test_a_slow_receiver_does_not_hold_back_the_callbacks_to_another(
    serve: ServeFactory, receiver: Receiver, trickling_receiver: TricklingReceiver
) -> None:
    # Given a serve with its default concurrency, and a receiver holding every callback unanswered
    base_url = serve()
    trickling_receiver.slow_answers = 0  # this one answers at once
    receiver.released.clear()
    try:
        with _api(base_url) as client:
            # When 20 tasks call the slow receiver back (more than the 16 serve used to send at once)
            for _ in range(20):
                submit(client, callBackUrl=receiver.url)
            # Then all 20 callbacks are in flight together
            held = len(receiver.wait_for(20))
            # And a task calling back another receiver reaches it while they are still held
            submit(client, callBackUrl=trickling_receiver.url)
            reached = _wait_for_requests(trickling_receiver, 1)
            still_held = not receiver.released.is_set()
    finally:
        receiver.released.set()
    assert held == 20
    assert (reached, still_held) == (1, True)
    # And a load run started in it reports the same concurrency: by default enough for 20
    # callbacks a second, each answered only at the callback timeout
    report = run_load_in(base_url, API_KEY, tasks=1, rate_per_s=100.0, callback_url=receiver.url)
    assert report.acknowledged == 1
    assert report.delivery_threads == delivery_threads_for(
        DEFAULT_CALLBACK_RATE_PER_S, DEFAULT_CALLBACK_TIMEOUT_S
    )


def test_serve_concurrency_bounds_the_callbacks_of_a_load_run_started_in_it(
    serve: ServeFactory, receiver: Receiver
) -> None:
    # Given a serve told to have at most 3 callbacks in flight
    base_url = serve("--concurrency", "3")
    # When a load run is started in it (`mjhook simulate load --simulator-url`)
    report = run_load_in(base_url, API_KEY, tasks=2, rate_per_s=100.0, callback_url=receiver.url)
    # Then the run's report says at most 3 of its callbacks could be in flight (serve's own)
    assert (report.acknowledged, report.delivery_threads) == (2, 3)
