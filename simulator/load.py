"""Load mode: submit many tasks to an in-process simulator, fire their callbacks at mjhook at a
steady rate, then report what was acknowledged, how many result files were downloaded and, from
the bucket, what ended stored."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from shared.errors import StorageUnavailable
from shared.storage import MANIFEST_NAME, manifest_key, task_prefix
from simulator.config import SimulatorConfig
from simulator.server import RunningSimulator

#: After the last callback is due, how long its answers, duplicates and retries may take, seconds
#: (:func:`run_load`'s default; ``mjhook simulate load`` waits :func:`settle_timeout_for`).
DEFAULT_SETTLE_TIMEOUT_S = 30.0
#: How long to wait for the manifests of acknowledged tasks, seconds.
DEFAULT_STORE_TIMEOUT_S = 120.0
#: Without a bucket to wait for: how long, after the callbacks, the result files stay served
#: until each was downloaded once (mjhook acknowledges first and downloads afterwards), seconds.
DEFAULT_DOWNLOAD_GRACE_S = 60.0
POLL_INTERVAL_S = 0.5
#: Delivery threads of load mode: enough for the callbacks of ``rate x callback timeout``
#: seconds in flight at once (each may wait that long for its answer), within these bounds.
MIN_DELIVERY_THREADS = 16
MAX_DELIVERY_THREADS = 1024


class ManifestReader(Protocol):
    """What load mode reads from the bucket (``shared.storage.ObjectStore`` has it)."""

    def list_keys(self, prefix: str) -> list[str]: ...

    def get_json(self, key: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class LoadReport:
    tasks: int
    rate_per_s: float
    callback_url: str
    #: Tasks whose callback got a 2xx answer (a duplicate counts once).
    acknowledged: int
    #: Tasks with a callback that was never acknowledged within the wait.
    unacknowledged: int
    #: Tasks completed without a callback (the drop fault).
    dropped: int
    callback_attempts: int
    #: From the first callback sent to the last acknowledged, seconds.
    send_duration_s: float
    ack_throughput_per_s: float
    #: From when each acknowledged attempt was due to its answer: waiting for a free delivery
    #: thread counts, not only the receiver's answer time.
    ack_latency_p50_ms: float
    ack_latency_p99_ms: float
    #: The rate the first attempts were actually sent at, per second (below ``rate_per_s`` when
    #: ``delivery_threads`` were all waiting on slow answers); None for fewer than two.
    send_rate_per_s: float | None = None
    #: Callbacks the simulator could have in flight at once.
    delivery_threads: int = 0
    #: Result files of the acknowledged tasks, and how many of them were downloaded (served
    #: whole at least once) before the report was made.
    result_files: int = 0
    result_files_served: int = 0
    #: Manifest status -> tasks (``stored``, ``partial``, ``failed``, ``missing``); None when
    #: the bucket was not read.
    manifests: dict[str, int] | None = None
    #: From the start of the run to the last manifest's ``completedAt``, seconds.
    store_duration_s: float | None = None
    stored_throughput_per_s: float | None = None
    #: Whether every callback (retries and duplicates included) was sent before the report was
    #: made; False when the wait ended with some still due: they were never sent (a retry is due
    #: 1, 5 and 15 minutes after a failed attempt, scaled by ``--time-scale``).
    settled: bool = True
    #: Why the bucket could not be read when the wait for manifests ended (``manifests`` is
    #: None then); None when it was read, or not asked for.
    bucket_unavailable: str | None = None
    #: How long after the last callback was due the run waited at most for callbacks to settle,
    #: seconds.
    settle_timeout_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format_text(self) -> str:
        sent = "n/a" if self.send_rate_per_s is None else f"{self.send_rate_per_s:.1f}/s"
        lines = [
            f"load: {self.tasks} tasks at {self.rate_per_s:g}/s asked, sent at {sent}"
            f" (at most {self.delivery_threads} in flight) -> {self.callback_url}",
            f"callbacks: {self.acknowledged} acknowledged, {self.unacknowledged} not acknowledged, "
            f"{self.dropped} dropped ({self.callback_attempts} attempts) in {self.send_duration_s:.2f} s"
            f" = {self.ack_throughput_per_s:.1f}/s",
            f"ack latency from when due: p50 {self.ack_latency_p50_ms:.1f} ms,"
            f" p99 {self.ack_latency_p99_ms:.1f} ms",
            f"result files: {self.result_files_served} of {self.result_files} downloaded",
        ]
        if not self.settled:
            lines.append(
                "not settled: callbacks (retries or duplicates) were still due when the wait ended"
                f" ({self.settle_timeout_s:g} s after the last was due) and were not sent; a longer"
                " --settle-timeout or a smaller --time-scale sends them"
            )
        if self.bucket_unavailable is not None:
            lines.append(f"bucket: unavailable ({self.bucket_unavailable}); nothing read about stored tasks")
        if self.manifests is not None:
            counts = ", ".join(f"{count} {status}" for status, count in self.manifests.items())
            lines.append(
                f"bucket: {counts} after {self.store_duration_s or 0.0:.2f} s"
                f" = {self.stored_throughput_per_s or 0.0:.1f} stored/s"
            )
        return "\n".join(lines)


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (``share`` 0.5 is the median); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def delivery_threads_for(rate_per_s: float, callback_timeout_s: float) -> int:
    """Delivery threads to fire callbacks at ``rate_per_s`` per second even when each answer
    takes the whole ``callback_timeout_s`` seconds: that many callbacks are in flight at once
    (at least :data:`MIN_DELIVERY_THREADS`, at most :data:`MAX_DELIVERY_THREADS`)."""
    return min(MAX_DELIVERY_THREADS, max(MIN_DELIVERY_THREADS, math.ceil(rate_per_s * callback_timeout_s)))


def settle_timeout_for(config: SimulatorConfig) -> float:
    """How long after it is due a callback of ``config`` may still be sent, plus
    :data:`DEFAULT_SETTLE_TIMEOUT_S` for the answers: a duplicate's delay, then the first
    attempt and every retry each taking the whole callback timeout, with the (scaled) retry
    delays between them, seconds. 1350.2 s for the provider's 1/5/15 minutes (time scale 1)
    and 15 s timeouts; 91.5 s at time scale 0.001."""
    attempts = len(config.scaled_retry_delays_s) + 1
    return (
        config.faults.duplicate_delay_s
        + sum(config.scaled_retry_delays_s)
        + attempts * config.callback_timeout_s
        + DEFAULT_SETTLE_TIMEOUT_S
    )


def run_load(
    sim: RunningSimulator,
    *,
    tasks: int,
    rate_per_s: float,
    callback_url: str,
    store: ManifestReader | None = None,
    task_type: str = "mj_txt2img",
    settle_timeout_s: float = DEFAULT_SETTLE_TIMEOUT_S,
    store_timeout_s: float = DEFAULT_STORE_TIMEOUT_S,
    download_grace_s: float = 0.0,
    clock: Callable[[], float] = time.time,
) -> LoadReport:
    """Submit ``tasks`` tasks whose callbacks fire at ``rate_per_s`` per second towards
    ``callback_url`` (as fast as ``sim``'s delivery threads allow; the report says how fast they
    went); wait until every callback, duplicate and retry was sent and answered (or
    ``settle_timeout_s`` seconds after the last is due), then, given a ``store``, for the
    manifests of the acknowledged tasks (a bucket failing until ``store_timeout_s`` is said in
    the report); without one, up to ``download_grace_s`` seconds (default 0) until each result
    file of the acknowledged tasks was downloaded once, since ``sim`` stops serving them after."""
    if tasks < 1 or rate_per_s <= 0:
        raise ValueError("tasks must be at least 1 and the rate positive")
    started_wall = clock()
    submitted = [
        sim.provider.submit(
            task_type=task_type,
            params={"taskType": task_type, "prompt": f"load test {number}", "callBackUrl": callback_url},
            prompt={"prompt": f"load test {number}", "model": "midjourney"},
            callback_url=callback_url,
            delay_s=number / rate_per_s,
        )
        for number in range(tasks)
    ]
    task_ids = {task.task_id for task in submitted if not task.faults.drop}
    # Not just until every task is acknowledged: a duplicate (or a retry of one) is sent after
    # its original's ack, and stopping the simulator drops what is still due. Idle means every
    # callback was sent and acknowledged or given up on, so the report counts every attempt.
    settled = sim.wait_idle(tasks / rate_per_s + settle_timeout_s)
    report = _callback_report(sim, task_ids, tasks=tasks, rate_per_s=rate_per_s, callback_url=callback_url)
    acked = {task_id for task_id in task_ids if any(a.acknowledged for a in sim.attempts(task_id))}
    files = sim.provider.result_files(acked)
    manifests: dict[str, dict[str, Any]] = {}
    bucket_error: str | None = None
    if store is None:
        served = sim.provider.wait_served(files, download_grace_s)
    else:
        manifests, bucket_error = _wait_for_manifests(
            store, sim.provider.task_id_prefix, acked, timeout_s=store_timeout_s
        )
        served = sim.provider.wait_served(files, 0.0)
    report = replace(
        report,
        settled=settled,
        settle_timeout_s=settle_timeout_s,
        result_files=len(files),
        result_files_served=len(served),
        bucket_unavailable=bucket_error,
    )
    if store is None or bucket_error is not None:
        return report
    return _with_store(report, manifests, acked, started_wall)


def _callback_report(
    sim: RunningSimulator, task_ids: set[str], *, tasks: int, rate_per_s: float, callback_url: str
) -> LoadReport:
    attempts = [attempt for attempt in sim.attempts() if attempt.task_id in task_ids]
    acks = [attempt for attempt in attempts if attempt.acknowledged]
    acked = {attempt.task_id for attempt in acks}
    duration = 0.0
    if acks:
        first = min(attempt.started_at for attempt in attempts)
        duration = max(attempt.started_at + attempt.duration_s for attempt in acks) - first
    latencies_ms = [(attempt.started_at + attempt.duration_s - attempt.due_at) * 1000 for attempt in acks]
    return LoadReport(
        tasks=tasks,
        rate_per_s=rate_per_s,
        callback_url=callback_url,
        acknowledged=len(acked),
        unacknowledged=len(task_ids - acked),
        dropped=tasks - len(task_ids),
        callback_attempts=len(attempts),
        send_duration_s=duration,
        ack_throughput_per_s=len(acked) / duration if duration > 0 else 0.0,
        ack_latency_p50_ms=percentile(latencies_ms, 0.5),
        ack_latency_p99_ms=percentile(latencies_ms, 0.99),
        send_rate_per_s=_send_rate([a.started_at for a in attempts if a.attempt == 1 and a.delivery == 0]),
        delivery_threads=sim.config.delivery_threads,
    )


def _send_rate(starts: list[float]) -> float | None:
    """Sends per second over the spread of ``starts`` (monotonic seconds); None for fewer than two."""
    spread = max(starts, default=0.0) - min(starts, default=0.0)
    return (len(starts) - 1) / spread if len(starts) > 1 and spread > 0 else None


def _wait_for_manifests(
    store: ManifestReader, prefix: str, task_ids: set[str], *, timeout_s: float
) -> tuple[dict[str, dict[str, Any]], str | None]:
    """The manifests of ``task_ids`` that appear within ``timeout_s`` seconds, and why the bucket
    could not be read when the wait ended on a failure (None when it ended on a read). A failing
    read is tried again until then."""
    found: dict[str, dict[str, Any]] = {}
    listing = task_prefix(prefix).rstrip("/")  # "tasks/<prefix>": every task of this run
    deadline = time.monotonic() + timeout_s
    while True:
        error: str | None = None
        try:
            _read_manifests(store, listing, task_ids, found)
        except StorageUnavailable as exc:
            error = str(exc)
        if (error is None and len(found) == len(task_ids)) or time.monotonic() >= deadline:
            return found, error
        time.sleep(POLL_INTERVAL_S)


def _read_manifests(
    store: ManifestReader, listing: str, task_ids: set[str], found: dict[str, dict[str, Any]]
) -> None:
    """Add to ``found`` the manifests of ``task_ids`` now under ``listing``."""
    present = {key for key in store.list_keys(listing) if key.endswith("/" + MANIFEST_NAME)}
    for task_id in task_ids - found.keys():
        if manifest_key(task_id) in present:
            manifest = store.get_json(manifest_key(task_id))
            if isinstance(manifest, dict):
                found[task_id] = manifest


def _with_store(
    report: LoadReport, manifests: dict[str, dict[str, Any]], acked: set[str], started_wall: float
) -> LoadReport:
    statuses = Counter(str(manifest.get("status")) for manifest in manifests.values())
    counts = {status: statuses.get(status, 0) for status in ("stored", "partial", "failed")}
    counts.update({status: n for status, n in statuses.items() if status not in counts})
    counts["missing"] = len(acked) - len(manifests)
    finished = [_unix(str(manifest.get("completedAt", ""))) for manifest in manifests.values()]
    last = max((when for when in finished if when is not None), default=None)
    duration = None if last is None else max(0.0, last - started_wall)
    throughput = counts["stored"] / duration if duration else None
    return LoadReport(
        **{
            **report.to_dict(),
            "manifests": counts,
            "store_duration_s": duration,
            "stored_throughput_per_s": throughput,
        }
    )


def _unix(iso: str) -> float | None:
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
