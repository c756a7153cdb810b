"""Load mode: submit many tasks to an in-process simulator, fire their callbacks at mjhook at a
steady rate, then report what was acknowledged and, from the bucket, what ended stored."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from shared.storage import MANIFEST_NAME, manifest_key, task_prefix
from simulator.server import RunningSimulator

#: After the last callback is due, how long its answers, duplicates and retries may take, seconds.
DEFAULT_SETTLE_TIMEOUT_S = 30.0
#: How long to wait for the manifests of acknowledged tasks, seconds.
DEFAULT_STORE_TIMEOUT_S = 120.0
POLL_INTERVAL_S = 0.5


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
    ack_latency_p50_ms: float
    ack_latency_p99_ms: float
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format_text(self) -> str:
        lines = [
            f"load: {self.tasks} tasks at {self.rate_per_s:g}/s -> {self.callback_url}",
            f"callbacks: {self.acknowledged} acknowledged, {self.unacknowledged} not acknowledged, "
            f"{self.dropped} dropped ({self.callback_attempts} attempts) in {self.send_duration_s:.2f} s"
            f" = {self.ack_throughput_per_s:.1f}/s",
            f"ack latency: p50 {self.ack_latency_p50_ms:.1f} ms, p99 {self.ack_latency_p99_ms:.1f} ms",
        ]
        if not self.settled:
            lines.append(
                "not settled: callbacks (retries or duplicates) were still due when the wait ended"
                " and were not sent; a longer --settle-timeout or a smaller --time-scale sends them"
            )
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
    clock: Callable[[], float] = time.time,
) -> LoadReport:
    """Submit ``tasks`` tasks whose callbacks fire at ``rate_per_s`` per second towards
    ``callback_url``; wait until every callback, duplicate and retry was sent and answered (or
    ``settle_timeout_s`` seconds after the last is due), then (given a ``store``) for the
    manifests of the acknowledged tasks."""
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
    report = replace(report, settled=settled)
    if store is None:
        return report
    acked = {task_id for task_id in task_ids if any(a.acknowledged for a in sim.attempts(task_id))}
    manifests = _wait_for_manifests(store, sim.provider.task_id_prefix, acked, timeout_s=store_timeout_s)
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
    latencies_ms = [attempt.duration_s * 1000 for attempt in acks]
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
    )


def _wait_for_manifests(
    store: ManifestReader, prefix: str, task_ids: set[str], *, timeout_s: float
) -> dict[str, dict[str, Any]]:
    """The manifests of ``task_ids`` that appear within ``timeout_s`` seconds."""
    found: dict[str, dict[str, Any]] = {}
    listing = task_prefix(prefix).rstrip("/")  # "tasks/<prefix>": every task of this run
    deadline = time.monotonic() + timeout_s
    while True:
        present = {key for key in store.list_keys(listing) if key.endswith("/" + MANIFEST_NAME)}
        for task_id in task_ids - found.keys():
            if manifest_key(task_id) in present:
                manifest = store.get_json(manifest_key(task_id))
                if isinstance(manifest, dict):
                    found[task_id] = manifest
        if len(found) == len(task_ids) or time.monotonic() >= deadline:
            return found
        time.sleep(POLL_INTERVAL_S)


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
