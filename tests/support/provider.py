"""The simulated provider for tests of mjhook's side of its API: small, fast simulators and clients."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from shared.provider import ProviderClient, TaskRecordInfo
from simulator import RunningSimulator, SimulatorConfig, run_simulator

#: Small images, a short generation, callback retries after milliseconds.
FAST_SIMULATOR: dict[str, Any] = {
    "image_width": 64,
    "image_height": 64,
    "video_bytes": 4096,
    "generation_delay_s": 0.05,
    "time_scale": 0.001,
    "callback_timeout_s": 5.0,
    "delivery_threads": 4,
}

StartSimulator = Callable[..., RunningSimulator]


class RecordingSleep:
    """A ``sleep`` that really waits (capped by ``cap_s``) and remembers each wait asked for."""

    def __init__(self, *, cap_s: float = 0.0) -> None:
        self.calls: list[float] = []
        self._cap_s = cap_s

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        time.sleep(min(seconds, self._cap_s))


@contextmanager
def simulators() -> Iterator[StartSimulator]:
    """``with simulators() as start``: ``start(**config)`` runs a simulator with
    :data:`FAST_SIMULATOR` plus ``config`` (``faults`` as a FaultConfig); all stop at the end.
    Test modules wrap it in a ``start_simulator`` fixture."""
    started: list[RunningSimulator] = []

    def start(**fields: Any) -> RunningSimulator:
        sim = run_simulator(SimulatorConfig(**{**FAST_SIMULATOR, **fields}))
        started.append(sim)
        return sim

    try:
        yield start
    finally:
        for sim in started:
            sim.stop()


def client_for(
    sim: RunningSimulator,
    *,
    api_key: str | None = None,
    sleep: Callable[[float], None] | None = None,
    **options: Any,
) -> ProviderClient:
    """A :class:`ProviderClient` of ``sim`` (its own key unless ``api_key``)."""
    http = httpx.Client(timeout=5.0, trust_env=False)
    return ProviderClient(
        sim.base_url,
        sim.api_key if api_key is None else api_key,
        http=http,
        sleep=sleep or RecordingSleep(),
        **options,
    )


def generated(sim: RunningSimulator, *, callback_url: str, **options: Any) -> TaskRecordInfo:
    """A task generated through ``sim``'s API (``options``: generate's, e.g. ``aspect_ratio``),
    once the simulator has finished it: its record-info."""
    with client_for(sim) as provider:
        task_id = provider.generate("a quiet harbour", callback_url=callback_url, **options)
        deadline = time.monotonic() + 10
        while not (info := provider.record_info(task_id)).finished:
            assert time.monotonic() < deadline, "the simulator did not finish the task"
            time.sleep(0.02)
    return info
