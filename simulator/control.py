"""The simulator's own control routes, beside the provider's API: a load run started in a running
simulator (``mjhook simulate serve``), so that ``mjhook simulate load --simulator-url`` fires its
callbacks from the provider mjhook's workers already know (they verify results with it).

``POST /sim/v1/loads`` with ``{"tasks", "rate", "callbackUrl"[, "taskType", "settleTimeout"]}``
starts one (one at a time: code 429 while another runs) and answers ``{"loadId",
"settleTimeout"}``; ``GET /sim/v1/loads/{loadId}`` answers ``{"done": false}``, then ``{"done":
true, "run": ...}`` (:meth:`simulator.load.CallbackRun.to_dict`), its result files downloaded
counted anew at each asking (mjhook downloads after it acknowledged). A run waits for its own
tasks' callbacks only, whatever else the simulator serves. Both take the API key; the answers
have the provider's body shape. :func:`run_load_in` is their client."""

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
import orjson

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
from simulator.load import CallbackRun, LoadReport, fire_callbacks, settle_timeout_for
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
        #: loadId -> its run and its result files, None while it runs, or why it failed
        #: (insertion order: oldest first).
        self._runs: dict[str, tuple[CallbackRun, set[tuple[str, int]]] | str | None] = {}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._sim.provider.check_key(req.auth)
        params = _load_params(read_json(req), default_settle_s=settle_timeout_for(self._sim.config))
        load_id = secrets.token_hex(8)
        with self._lock:
            running = [other for other, run in self._runs.items() if run is None]
            if running:
                raise ProviderError(
                    CODE_RATE_LIMITED, f"A load run is in progress ({running[0]}); wait for it to end"
                )
            self._runs[load_id] = None
            while len(self._runs) > KEPT_RUNS:
                del self._runs[next(iter(self._runs))]
        threading.Thread(
            target=self._run, args=(load_id, params), name=f"load-{load_id}", daemon=True
        ).start()
        data = {"loadId": load_id, "settleTimeout": params["settle_timeout_s"]}
        resp.media = {"code": 200, "msg": "success", "data": data}

    def on_get_load(self, req: falcon.Request, resp: falcon.Response, load_id: str) -> None:
        self._sim.provider.check_key(req.auth)
        with self._lock:
            if load_id not in self._runs:
                raise ProviderError(CODE_NOT_FOUND, "No such load run")
            run = self._runs[load_id]
        if isinstance(run, str):
            raise ProviderError(CODE_SERVER_ERROR, f"The load run failed: {run}")
        if run is None:
            data: dict[str, Any] = {"done": False}
        else:
            # The result files downloaded so far: mjhook acknowledges first and downloads after.
            ended, files = run
            served = len(self._sim.provider.wait_served(files, 0.0))
            report = replace(ended.report, result_files=len(files), result_files_served=served)
            data = {"done": True, "run": replace(ended, report=report).to_dict()}
        resp.media = {"code": 200, "msg": "success", "data": data}

    def _run(self, load_id: str, params: dict[str, Any]) -> None:
        try:
            run = fire_callbacks(self._sim, **params)
            files = self._sim.provider.result_files(run.acknowledged)
        except Exception as exc:  # the client polling for it must learn it, not wait forever
            log.exception("load run %s failed", load_id)
            with self._lock:
                self._runs[load_id] = f"{type(exc).__name__}: {exc}"
            return
        with self._lock:
            self._runs[load_id] = (run, files)


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
    if not isinstance(task_type, str) or task_type not in GENERATE_TASK_TYPES:
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
#: Beyond a run's send window and settle time, how long the client waits for it to be reported.
RUN_GRACE_S = 60.0
#: Times a poll that got no answer is tried again (after POLL_INTERVAL_S each) before giving up.
POLL_RETRIES = 5


def run_load_in(
    simulator_url: str,
    api_key: str,
    *,
    tasks: int,
    rate_per_s: float,
    callback_url: str,
    settle_timeout_s: float | None = None,
    read_bucket: Callable[[CallbackRun], LoadReport] | None = None,
    download_grace_s: float = 0.0,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> LoadReport:
    """Start a load run in the simulator serving at ``simulator_url``, wait for its callbacks
    (at most its send window and settle time plus :data:`RUN_GRACE_S`), then ``read_bucket``
    for the run's report with the bucket's figures; without one, wait up to
    ``download_grace_s`` seconds until each result file was downloaded once. The result files
    downloaded are counted by the simulator at the end. Raises :class:`ProviderUnavailable` when
    it cannot be reached, answers what is not a load run, or the run does not end in time, and
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
        started = _data_of(client, "POST", LOADS_PATH, body)
        load_id, settle_s = started.get("loadId"), started.get("settleTimeout")
        if not isinstance(load_id, str) or not isinstance(settle_s, int | float):
            raise ProviderUnavailable(f"the simulator at {client.base_url} started no load run: {started!r}")
        poll = _Poller(client, f"{LOADS_PATH}/{load_id}", sleep=sleep)
        deadline = monotonic() + tasks / rate_per_s + settle_s + RUN_GRACE_S
        while (run := poll.run()) is None:
            if monotonic() >= deadline:
                raise ProviderUnavailable(f"load run {load_id} did not end in time; its report stays there")
            sleep(POLL_INTERVAL_S)
        if read_bucket is not None:
            report = read_bucket(run)
            served = poll.run() or run
        else:
            report, served = run.report, run
            grace_ends = monotonic() + download_grace_s
            while served.report.result_files_served < served.report.result_files and monotonic() < grace_ends:
                sleep(POLL_INTERVAL_S)
                served = poll.run() or served
    return replace(report, result_files_served=served.report.result_files_served)


class _Poller:
    """Asks for one load run: its :class:`CallbackRun` once it ended (its downloads counted
    anew each time), None while it runs. A poll without an answer is tried again."""

    def __init__(self, client: httpx.Client, path: str, *, sleep: Callable[[float], None]) -> None:
        self._client = client
        self._path = path
        self._sleep = sleep

    def run(self) -> CallbackRun | None:
        for retry in range(POLL_RETRIES + 1):
            try:
                state = _data_of(self._client, "GET", self._path)
                break
            except ProviderUnavailable:
                if retry == POLL_RETRIES:
                    raise
                self._sleep(POLL_INTERVAL_S)
        if state.get("done") is False:
            return None
        try:
            return CallbackRun.from_json(orjson.dumps(state.get("run")))
        except ValueError as exc:
            raise ProviderUnavailable(f"the simulator's load report is unreadable: {exc}") from exc


def _data_of(client: httpx.Client, method: str, path: str, body: Any = None) -> dict[str, Any]:
    """The ``data`` object of an answer with body code 200; the provider's errors raised."""
    where = f"the simulator at {client.base_url}"
    try:
        answer = client.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise ProviderUnavailable(f"{where} did not answer: {type(exc).__name__}: {exc}") from exc
    try:
        payload = answer.json()
        code, msg, data = payload["code"], str(payload.get("msg", "")), payload["data"]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ProviderUnavailable(
            f"{where} answered HTTP {answer.status_code} without the provider's body: is it a"
            " `mjhook simulate serve`, given by its address alone (no path)?"
        ) from None
    if code == 200 and isinstance(data, dict):
        return data
    message = f"{where} answered code {code}: {msg}"
    if code in (401, 404, 422, 429):
        raise ProviderRefused(message, code=code, provider_msg=msg)
    raise ProviderUnavailable(message, code=code if isinstance(code, int) else None, provider_msg=msg)
