"""Helpers of the simulator's tests: a recording callback receiver and API shortcuts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from simulator import RunningSimulator

#: The longest a :class:`Receiver` holds a request while ``released`` is clear, seconds.
HOLD_LIMIT_S = 30.0


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return orjson.loads(self.body)


def _opened() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


@dataclass
class Receiver:
    """A callback endpoint on 127.0.0.1 that records every request. It answers the statuses in
    ``script`` in order, then ``default_status``; ``delays_s`` holds the request before answering,
    and so does ``released`` while it is clear (at most :data:`HOLD_LIMIT_S` seconds)."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    delays_s: list[float] = field(default_factory=list)
    default_status: int = 200
    released: threading.Event = field(default_factory=_opened)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_answer(self) -> tuple[int, float]:
        with self.lock:
            status = self.script.pop(0) if self.script else self.default_status
            delay = self.delays_s.pop(0) if self.delays_s else 0.0
        return status, delay

    def record(self, request: Received) -> None:
        with self.lock:
            self.requests.append(request)

    def bodies(self) -> list[Any]:
        with self.lock:
            return [request.json() for request in self.requests]

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[Received]:
        """Wait until at least ``count`` requests arrived; return them all."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.01)
        raise AssertionError(f"{count} callbacks not received within {timeout_s} s: {self.requests}")


@dataclass
class TricklingReceiver:
    """A callback endpoint on 127.0.0.1, on a raw socket, that answers every request 200: the
    first ``slow_answers`` one byte every ``byte_interval_s`` seconds (status line and headers
    too), the others at once."""

    url: str = ""
    slow_answers: int = 1
    byte_interval_s: float = 0.1
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_is_slow(self) -> bool:
        with self.lock:
            self.requests += 1
            return self.requests <= self.slow_answers


#: ``make_sim(**config_fields)``: starts a simulator that stops at teardown.
SimFactory = Callable[..., RunningSimulator]


def api(sim: RunningSimulator, *, key: str | None = None) -> httpx.Client:
    """An HTTP client for the simulator's API, sending its key unless another is given (an
    empty ``key`` sends no Authorization header)."""
    key = sim.api_key if key is None else key
    return httpx.Client(
        base_url=sim.base_url,
        headers={"Authorization": f"Bearer {key}"} if key else {},
        trust_env=False,
        timeout=10.0,
    )


def submit(client: httpx.Client, **body: Any) -> str:
    """POST /api/v1/mj/generate (a txt2img of "a cat" unless told otherwise); return the taskId."""
    request = {"taskType": "mj_txt2img", "prompt": "a cat", **body}
    answer = client.post("/api/v1/mj/generate", json=request).json()
    assert answer["code"] == 200, answer
    return str(answer["data"]["taskId"])


def details(client: httpx.Client, task_id: str) -> dict[str, Any]:
    answer = client.get("/api/v1/mj/record-info", params={"taskId": task_id}).json()
    assert answer["code"] == 200, answer
    return dict(answer["data"])


def wait_done(client: httpx.Client, task_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """Poll record-info until the task is no longer generating; return its details."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        data = details(client, task_id)
        if data["successFlag"] != 0:
            return data
        time.sleep(0.02)
    raise AssertionError(f"task {task_id} still generating after {timeout_s} s")


def wait_for_serves(
    sim: RunningSimulator, file: tuple[str, int], count: int, timeout_s: float = 5.0
) -> dict[tuple[str, int], list[float]]:
    """Wait until ``file`` (taskId, index) was sent whole ``count`` times; return
    ``whole_serves()``. A download is recorded once its last byte went out, which can be a moment
    after the client has it."""
    deadline = time.monotonic() + timeout_s
    while len(sim.provider.whole_serves().get(file, [])) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return sim.provider.whole_serves()


def result_urls(data: dict[str, Any]) -> list[str]:
    return [entry["resultUrl"] for entry in data["resultInfoJson"]["resultUrls"]]


class FakeClock:
    """Unix seconds that move only when told to."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
