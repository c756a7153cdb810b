"""The simulator's own control routes, beside the provider's API: a load run started in a running
simulator (``mjhook simulate serve``), so that ``mjhook simulate load --simulator-url`` fires its
callbacks from the provider mjhook's workers already know (they verify results with it).

``POST /sim/v1/loads`` with ``{"tasks", "rate", "callbackUrl"[, "taskType", "settleTimeout"]}``
starts one (one at a time: code 429 while another runs) and answers ``{"loadId"}``;
``GET /sim/v1/loads/{loadId}`` answers ``{"done": false}``, then ``{"done": true, "run": ...}``
(:meth:`simulator.load.CallbackRun.to_dict`). Both take the API key; the answers have the
provider's body shape."""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import falcon
import httpx

from shared.errors import ProviderRefused, ProviderUnavailable
from simulator.api_requests import deliverable_url
from simulator.bodies import read_json
from simulator.errors import (
    CODE_NOT_FOUND,
    CODE_RATE_LIMITED,
    CODE_SERVER_ERROR,
    CODE_VALIDATION,
    ProviderError,
)
from simulator.load import CallbackRun, fire_callbacks, settle_timeout_for
from simulator.tasks import GENERATE_TASK_TYPES

if TYPE_CHECKING:
    from simulator.server import RunningSimulator

log = logging.getLogger(__name__)

LOADS_PATH = "/sim/v1/loads"
#: Most tasks of one load run, and its slowest and fastest rates (callbacks per second).
MAX_LOAD_TASKS = 100_000
MIN_LOAD_RATE = 0.001
MAX_LOAD_RATE = 100_000.0
#: Longest settle time a run may ask for, seconds.
MAX_SETTLE_S = 1e7
#: Finished runs kept for their reports; the oldest is forgotten beyond.
KEPT_RUNS = 16


class LoadsResource:
    """Starts load runs in ``sim`` (each on a thread of its own) and reports them."""

    def __init__(self, sim: RunningSimulator) -> None:
        self._sim = sim
        self._lock = threading.Lock()
        #: loadId -> its run, None while it runs, or why it failed (insertion order: oldest first).
        self._runs: dict[str, CallbackRun | str | None] = {}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._sim.provider.check_key(req.auth)
        params = _load_params(read_json(req), default_settle_s=settle_timeout_for(self._sim.config))
        load_id = secrets.token_hex(8)
        with self._lock:
            if None in self._runs.values():
                raise ProviderError(CODE_RATE_LIMITED, "A load run is in progress; wait for it to end")
            self._runs[load_id] = None
            while len(self._runs) > KEPT_RUNS:
                del self._runs[next(iter(self._runs))]
        threading.Thread(
            target=self._run, args=(load_id, params), name=f"load-{load_id}", daemon=True
        ).start()
        resp.media = {"code": 200, "msg": "success", "data": {"loadId": load_id}}

    def on_get_load(self, req: falcon.Request, resp: falcon.Response, load_id: str) -> None:
        self._sim.provider.check_key(req.auth)
        with self._lock:
            if load_id not in self._runs:
                raise ProviderError(CODE_NOT_FOUND, "No such load run")
            run = self._runs[load_id]
        if isinstance(run, str):
            raise ProviderError(CODE_SERVER_ERROR, f"The load run failed: {run}")
        data = {"done": False} if run is None else {"done": True, "run": run.to_dict()}
        resp.media = {"code": 200, "msg": "success", "data": data}

    def _run(self, load_id: str, params: dict[str, Any]) -> None:
        try:
            run = fire_callbacks(self._sim, **params)
            files = self._sim.provider.result_files(run.acknowledged)
            served = self._sim.provider.wait_served(files, 0.0)
            run = replace(
                run, report=replace(run.report, result_files=len(files), result_files_served=len(served))
            )
        except Exception as exc:  # the client polling for it must learn it, not wait forever
            log.exception("load run %s failed", load_id)
            with self._lock:
                self._runs[load_id] = type(exc).__name__
            return
        with self._lock:
            self._runs[load_id] = run


def _load_params(body: Any, *, default_settle_s: float) -> dict[str, Any]:
    """:func:`fire_callbacks`'s arguments from a request body; code 422 for what is not usable."""
    if not isinstance(body, dict):
        raise ProviderError(CODE_VALIDATION, "The request body must be a JSON object")
    tasks = body.get("tasks")
    if not isinstance(tasks, int) or isinstance(tasks, bool) or not 1 <= tasks <= MAX_LOAD_TASKS:
        raise ProviderError(CODE_VALIDATION, f"tasks must be a whole number from 1 to {MAX_LOAD_TASKS}")
    rate = _number(body.get("rate"), "rate", MIN_LOAD_RATE, MAX_LOAD_RATE)
    callback_url = body.get("callbackUrl")
    if not isinstance(callback_url, str) or not deliverable_url(callback_url):
        raise ProviderError(CODE_VALIDATION, "callbackUrl must be an http or https URL with a host")
    task_type = body.get("taskType", "mj_txt2img")
    if task_type not in GENERATE_TASK_TYPES:
        raise ProviderError(CODE_VALIDATION, f"taskType must be one of {sorted(GENERATE_TASK_TYPES)}")
    settle = body.get("settleTimeout")
    settle_s = default_settle_s if settle is None else _number(settle, "settleTimeout", 0.0, MAX_SETTLE_S)
    return {
        "tasks": tasks,
        "rate_per_s": rate,
        "callback_url": callback_url,
        "task_type": task_type,
        "settle_timeout_s": settle_s,
    }


def _number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProviderError(CODE_VALIDATION, f"{name} must be a number")
    if not low <= value <= high:
        raise ProviderError(CODE_VALIDATION, f"{name} must be from {low:g} to {high:g}")
    return float(value)


#: How often the client asks whether a load run it started has ended, seconds.
POLL_INTERVAL_S = 0.5


def run_load_in(
    simulator_url: str,
    api_key: str,
    *,
    tasks: int,
    rate_per_s: float,
    callback_url: str,
    settle_timeout_s: float | None = None,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> CallbackRun:
    """Start a load run in the simulator serving at ``simulator_url`` and wait until it reports
    its callbacks fired and answered (it ends within its send window and settle time). Raises
    :class:`ProviderUnavailable` when it cannot be reached or does not end in time, and
    :class:`ProviderRefused` when it refuses (a wrong key, another run in progress)."""
    body: dict[str, Any] = {"tasks": tasks, "rate": rate_per_s, "callbackUrl": callback_url}
    if settle_timeout_s is not None:
        body["settleTimeout"] = settle_timeout_s
    with httpx.Client(
        base_url=simulator_url.rstrip("/"),
        headers={"Authorization": f"Bearer {api_key}"},
        trust_env=False,
        timeout=10.0,
        transport=transport,
    ) as client:
        load_id = str(_data_of(client, "POST", LOADS_PATH, body)["loadId"])
        while not (state := _data_of(client, "GET", f"{LOADS_PATH}/{load_id}"))["done"]:
            sleep(POLL_INTERVAL_S)
    try:
        return CallbackRun.from_dict(state["run"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ProviderUnavailable(f"the simulator's load report is unreadable: {exc!r}") from exc


def _data_of(client: httpx.Client, method: str, path: str, body: Any = None) -> Any:
    """The ``data`` of an answer with body code 200; the provider's errors raised."""
    try:
        answer = client.request(method, path, json=body)
        payload = answer.json()
        code, data = payload["code"], payload["data"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise ProviderUnavailable(f"the simulator at {client.base_url} did not answer: {exc!r}") from exc
    if code == 200 and isinstance(data, dict):
        return data
    message = f"the simulator at {client.base_url} answered code {code}: {payload.get('msg', '')}"
    if code in (401, 404, 422, 429):
        raise ProviderRefused(message, code=code, provider_msg=str(payload.get("msg", "")))
    raise ProviderUnavailable(message, code=code, provider_msg=str(payload.get("msg", "")))
