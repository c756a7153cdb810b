"""Load mode: submit many tasks to an in-process simulator, fire their callbacks at mjhook at a
steady rate, then report what was acknowledged, how many result files were downloaded and, from
the bucket, what ended stored."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import TypeAdapter

from shared.clock import iso_seconds
from shared.errors import StorageUnavailable
from shared.storage import MANIFEST_NAME, manifest_key, task_prefix
from simulator.callbacks import DeliveryAttempt
from simulator.config import SimulatorConfig

if TYPE_CHECKING:  # simulator.server serves the load control routes, which run loads
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
#: A manifest's ``receivedAt`` is in whole milliseconds (cut, not rounded), seconds.
RECEIVED_AT_RESOLUTION_S = 0.001
#: A manifest received this long before a run started is an earlier run's: far more than two
#: NTP-synchronised clocks differ by, far less than the time between two runs.
EARLIER_RUN_MARGIN_S = 60.0
#: Delivery threads of load mode: enough for the callbacks of ``rate x callback timeout``
#: seconds in flight at once (each may wait that long for its answer), within these bounds.
MIN_DELIVERY_THREADS = 16
MAX_DELIVERY_THREADS = 1024
#: The statuses mjhook writes in a manifest, counted each in the report (0 included); any other
#: is counted as OTHER_STATUS.
MANIFEST_STATUSES = ("stored", "partial", "failed")
OTHER_STATUS = "other"
#: The report's count of tasks whose manifest is an earlier run's.
STALE = "stale"


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
    #: From the first callback sent to the last first attempt acknowledged, seconds: the receiver's
    #: pace under the load (retries and duplicates, due minutes or a moment later, left out); None
    #: with fewer than two first attempts acknowledged.
    send_duration_s: float | None
    #: First attempts acknowledged per second over ``send_duration_s``, counted as
    #: ``send_rate_per_s`` counts sends: N answers are N-1 intervals (N read an instant receiver as
    #: acknowledging faster than the callbacks went out). From the first send, not the first
    #: answer: a receiver that stalls, then answers its backlog at once, reads as slow as it was.
    #: None likewise.
    ack_throughput_per_s: float | None
    #: From when each acknowledged attempt was due to its answer: waiting for a free delivery
    #: thread counts, not only the receiver's answer time; None when none was acknowledged.
    ack_latency_p50_ms: float | None
    ack_latency_p99_ms: float | None
    #: The rate the first attempts were actually sent at, per second (below ``rate_per_s`` when
    #: ``delivery_threads`` were all waiting on slow answers); None for fewer than two.
    send_rate_per_s: float | None = None
    #: Callbacks the simulator could have in flight at once.
    delivery_threads: int = 0
    #: Result files of the acknowledged tasks, and how many of them were downloaded (served
    #: whole at least once) before the report was made.
    result_files: int = 0
    result_files_served: int = 0
    #: Manifest status -> tasks of the run (``stored``, ``partial``, ``failed``, ``other`` for
    #: any other status, when there is one; ``stale``, when there is one: those whose manifest is
    #: an earlier run's, written for a callback received before this run started, counted under
    #: no status; ``missing``: acknowledged ones without a manifest, or ``unread`` when the bucket
    #: failed at the end); None when the bucket was not read.
    manifests: dict[str, int] | None = None
    #: From the start of the run to the last manifest's ``completedAt``, seconds.
    store_duration_s: float | None = None
    stored_throughput_per_s: float | None = None
    #: Whether every callback (retries and duplicates included) was sent before the report was
    #: made; False when the wait ended with some still due: they were never sent (a retry is due
    #: 1, 5 and 15 minutes after a failed attempt, scaled by ``--time-scale``).
    settled: bool = True
    #: Why the bucket could not be read when the wait for manifests ended (``manifests`` holds
    #: what was read before, with ``unread`` instead of ``missing``, or is None when nothing was);
    #: None when it was read, or not asked for.
    bucket_unavailable: str | None = None
    #: How long after the last callback was due the run waited at most for callbacks to settle,
    #: seconds.
    settle_timeout_s: float = 0.0
    #: Per acknowledged task, from when its callback was first due to its first acknowledgement,
    #: the wait for any retry included (1, 5, 15 minutes x ``--time-scale``); None when none was.
    task_latency_p50_ms: float | None = None
    task_latency_p99_ms: float | None = None
    #: Of the tasks with a manifest, those the load saw no callback of acknowledged (an answer
    #: after the callback timeout, a dropped callback stored through polling).
    manifests_unacknowledged: int = 0
    #: Tasks whose manifest, not ``stored``, was written for an earlier callback than their last
    #: acknowledged one when the wait ended: mjhook had not yet processed that one (a duplicate
    #: may complete a partial task). Counted under their manifest's status too.
    manifests_outdated: int = 0

    @property
    def problems(self) -> list[str]:
        """Why the run did not show every callback acknowledged and every acknowledged task in
        the bucket (none: it did). A task that ended failed or partial is an outcome, not one."""
        problems = []
        if self.unacknowledged:
            problems.append(
                f"{self.unacknowledged} of {self.tasks - self.dropped} callbacks never acknowledged"
            )
        if not self.settled:
            problems.append("callbacks still due when the wait ended")
        if self.bucket_unavailable is not None:
            problems.append(f"the bucket could not be read: {self.bucket_unavailable}")
        missing = (self.manifests or {}).get("missing", 0)
        if missing:
            problems.append(f"{missing} acknowledged tasks without a manifest")
        stale = (self.manifests or {}).get(STALE, 0)
        if stale:
            problems.append(
                f"{stale} tasks whose manifest is from an earlier run (received before this run"
                " started: the same taskIds, a `serve --task-id-prefix` run again?)"
            )
        if self.manifests_outdated:
            problems.append(
                f"{self.manifests_outdated} manifests older than their task's last acknowledged"
                " callback (not processed by the end of the wait)"
            )
        return problems

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "problems": self.problems}

    def format_text(self) -> str:
        lines = [
            f"load: {self.tasks} tasks at {self.rate_per_s:g}/s asked, sent at {_per_s(self.send_rate_per_s)}"
            f" (at most {self.delivery_threads} in flight) -> {self.callback_url}",
            f"callbacks: {self.acknowledged} acknowledged, {self.unacknowledged} not acknowledged, "
            f"{self.dropped} dropped ({self.callback_attempts} attempts); first attempts acknowledged"
            f" in {_seconds(self.send_duration_s)}, at {_per_s(self.ack_throughput_per_s)}",
            f"ack latency from when due: p50 {_ms(self.ack_latency_p50_ms)},"
            f" p99 {_ms(self.ack_latency_p99_ms)} per attempt; p50 {_ms(self.task_latency_p50_ms)},"
            f" p99 {_ms(self.task_latency_p99_ms)} per task (retries waited for)",
            f"result files: {self.result_files_served} of {self.result_files} downloaded",
        ]
        if not self.settled:
            lines.append(
                "not settled: callbacks (retries or duplicates) were still due when the wait ended"
                f" ({self.settle_timeout_s:g} s after the last was due) and were not sent; a longer"
                " --settle-timeout or a smaller --time-scale sends them"
            )
        if self.bucket_unavailable is not None:
            read = "nothing read about stored tasks" if self.manifests is None else "what was read before:"
            lines.append(f"bucket: unavailable at the end ({self.bucket_unavailable}); {read}")
        if self.manifests is not None:
            counts = ", ".join(f"{count} {status}" for status, count in self.manifests.items())
            lines.append(
                f"bucket: {counts} after {_seconds(self.store_duration_s)}"
                f" = {_per_s(self.stored_throughput_per_s, ' stored/s')}"
            )
            if self.manifests_unacknowledged:
                lines.append(
                    f"  ({self.manifests_unacknowledged} of them of tasks whose callback was not seen"
                    " acknowledged: answered after the callback timeout, or dropped and polled)"
                )
        lines.extend(f"problem: {problem}" for problem in self.problems)
        return "\n".join(lines)


def _per_s(value: float | None, unit: str = "/s") -> str:
    return "n/a" if value is None else f"{value:.1f}{unit}"


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


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


@dataclass(frozen=True, slots=True)
class CallbackRun:
    """The callbacks of a load run, fired and answered: their report, and what reading the
    bucket needs (which tasks, under which prefix, since when). ``mjhook simulate load
    --simulator-url`` gets it from a running ``serve`` as :meth:`to_dict` gave it."""

    report: LoadReport
    #: Every task of the run, and those whose callback was acknowledged.
    task_ids: frozenset[str]
    acknowledged: frozenset[str]
    #: Where in the bucket the run's tasks are ("tasks/<taskId prefix>").
    listing: str
    #: When the first task was submitted, Unix seconds.
    started_at: float
    #: Per task whose success callback was acknowledged more than once: when the last of them was
    #: sent, Unix seconds (a manifest mjhook wrote for an earlier one may still be replaced).
    resent_at: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "report": self.report.to_dict(),
            "taskIds": sorted(self.task_ids),
            "acknowledged": sorted(self.acknowledged),
            "listing": self.listing,
            "startedAt": self.started_at,
            "resentAt": dict(self.resent_at),
        }

    @classmethod
    def from_json(cls, raw: bytes | str) -> CallbackRun:
        """The run :meth:`to_dict` described, as JSON; ``ValueError`` (pydantic's
        ``ValidationError``) when it is not one, every field of the type it must have."""
        data = _RUN_ANSWER.validate_json(raw, strict=True)
        return cls(
            report=data.report,
            task_ids=frozenset(data.taskIds),
            acknowledged=frozenset(data.acknowledged),
            listing=data.listing,
            started_at=data.startedAt,
            resent_at=data.resentAt,
        )


@dataclass(frozen=True, slots=True)
class _RunAnswer:
    """:meth:`CallbackRun.to_dict`'s shape, in its wire names (the report's ``problems`` are
    derived, not read)."""

    report: LoadReport
    taskIds: list[str]
    acknowledged: list[str]
    listing: str
    startedAt: float
    resentAt: dict[str, float] = field(default_factory=dict)


_RUN_ANSWER = TypeAdapter(_RunAnswer)


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
    ``callback_url`` and wait for them (:func:`fire_callbacks`), then, given a ``store``, for the
    manifests of the acknowledged tasks (:func:`read_bucket`); without one, up to
    ``download_grace_s`` seconds (default 0) until each result file of the acknowledged tasks was
    downloaded once, since ``sim`` stops serving them after.

    A ``store`` that refuses to be read for another reason than an outage (wrong credentials)
    raises before any callback is sent."""
    if store is not None:
        check_bucket(store, bucket_listing(sim))
    run = fire_callbacks(
        sim,
        tasks=tasks,
        rate_per_s=rate_per_s,
        callback_url=callback_url,
        task_type=task_type,
        settle_timeout_s=settle_timeout_s,
        clock=clock,
    )
    files = sim.provider.result_files(run.acknowledged)
    if store is None:
        report = run.report
        served = sim.provider.wait_served(files, download_grace_s)
    else:
        report = read_bucket(run, store, timeout_s=store_timeout_s)
        served = sim.provider.wait_served(files, 0.0)
    return replace(report, result_files=len(files), result_files_served=len(served))


def bucket_listing(sim: RunningSimulator) -> str:
    """Where in the bucket the tasks of ``sim`` are stored: "tasks/<its taskId prefix>"."""
    return task_prefix(sim.provider.task_id_prefix).rstrip("/")


def check_bucket(store: ManifestReader, listing: str) -> None:
    """Read ``listing`` once, so that a store refusing this client (wrong credentials) raises
    before a run rather than after it. An outage is not raised: it may be over by the end (and
    the workers make a missing bucket)."""
    with suppress(StorageUnavailable):
        store.list_keys(listing)


def fire_callbacks(
    sim: RunningSimulator,
    *,
    tasks: int,
    rate_per_s: float,
    callback_url: str,
    task_type: str = "mj_txt2img",
    settle_timeout_s: float = DEFAULT_SETTLE_TIMEOUT_S,
    clock: Callable[[], float] = time.time,
) -> CallbackRun:
    """Submit ``tasks`` tasks to ``sim`` whose callbacks fire at ``rate_per_s`` per second towards
    ``callback_url`` (as fast as ``sim``'s delivery threads allow; the report says how fast they
    went), and wait until every callback, duplicate and retry was sent and answered (or
    ``settle_timeout_s`` seconds after the last is due)."""
    if tasks < 1 or not 0 < rate_per_s < math.inf:
        raise ValueError("tasks must be at least 1 and the rate positive")
    started_at = clock()
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
    task_ids = [task.task_id for task in submitted]
    called_back = {task.task_id for task in submitted if not task.faults.drop}
    # Not just until every task is acknowledged: a duplicate (or a retry of one) is sent after
    # its original's ack, and stopping the simulator drops what is still due. Settled means every
    # callback of these tasks was sent and acknowledged or given up on, so the report counts every
    # attempt (another client's tasks, in a shared ``serve``, are not waited for).
    settled = sim.wait_settled(task_ids, tasks / rate_per_s + settle_timeout_s)
    # One reading of the attempts, so that the figures and the tasks acknowledged agree.
    attempts = [attempt for attempt in sim.attempts() if attempt.task_id in called_back]
    report, acked = _callback_report(
        sim, attempts, called_back, tasks=tasks, rate_per_s=rate_per_s, callback_url=callback_url
    )
    succeeded = {task.task_id for task in submitted if not task.faults.fails}
    return CallbackRun(
        report=replace(report, settled=settled, settle_timeout_s=settle_timeout_s),
        task_ids=frozenset(task_ids),
        acknowledged=frozenset(acked),
        listing=bucket_listing(sim),
        started_at=started_at,
        resent_at=_resent_at(attempts, succeeded),
    )


def read_bucket(run: CallbackRun, store: ManifestReader, *, timeout_s: float) -> LoadReport:
    """``run``'s report with what the bucket says of its tasks: their manifests, waited for until
    every acknowledged task has one or ``timeout_s`` seconds passed (counting those of the run's
    other tasks found meanwhile; a bucket failing until then is said in the report)."""
    wanted = _Wanted(set(run.task_ids), set(run.acknowledged), run.resent_at, run.started_at)
    manifests, bucket_error = _wait_for_manifests(store, run.listing, wanted, timeout_s=timeout_s)
    report = replace(run.report, bucket_unavailable=bucket_error)
    if bucket_error is not None and not manifests:
        return report
    stale = wanted.stale(manifests)
    report = replace(report, manifests_outdated=len(wanted.outdated(manifests) - stale))
    return _with_store(
        report, manifests, set(run.acknowledged), run.started_at, stale=stale, read_whole=bucket_error is None
    )


def _resent_at(attempts: list[DeliveryAttempt], succeeded: set[str]) -> dict[str, float]:
    """Per task of ``succeeded`` whose success callback was acknowledged more than once, when
    the last acknowledged one was sent, Unix seconds. mjhook processes each success callback of a
    task not yet ``stored`` (a duplicate may complete a partial task, each writing its manifest)."""
    sent: dict[str, list[float]] = {}
    for attempt in attempts:
        if attempt.acknowledged and attempt.task_id in succeeded:
            sent.setdefault(attempt.task_id, []).append(attempt.sent_at)
    return {task_id: max(times) for task_id, times in sent.items() if len(times) > 1}


def _callback_report(
    sim: RunningSimulator,
    attempts: list[DeliveryAttempt],
    task_ids: set[str],
    *,
    tasks: int,
    rate_per_s: float,
    callback_url: str,
) -> tuple[LoadReport, set[str]]:
    """The callback figures of ``task_ids`` from their ``attempts``, and the tasks among them
    acknowledged."""
    acks = [attempt for attempt in attempts if attempt.acknowledged]
    acked = {attempt.task_id for attempt in acks}
    firsts = [attempt for attempt in attempts if attempt.attempt == 1 and attempt.delivery == 0]
    first_acks = [attempt for attempt in firsts if attempt.acknowledged]
    duration = None
    if len(first_acks) > 1:
        duration = max(_answered(a) for a in first_acks) - min(a.started_at for a in firsts)
    latencies_ms = [(_answered(attempt) - attempt.due_at) * 1000 for attempt in acks]
    # A task's wait: from its first callback's due time to the first answer 2xx of any delivery.
    first_due = {attempt.task_id: attempt.due_at for attempt in firsts}
    first_ack: dict[str, float] = {}
    for attempt in acks:
        first_ack[attempt.task_id] = min(first_ack.get(attempt.task_id, math.inf), _answered(attempt))
    task_latencies_ms = [
        (at - first_due[task_id]) * 1000 for task_id, at in first_ack.items() if task_id in first_due
    ]
    report = LoadReport(
        tasks=tasks,
        rate_per_s=rate_per_s,
        callback_url=callback_url,
        acknowledged=len(acked),
        unacknowledged=len(task_ids - acked),
        dropped=tasks - len(task_ids),
        callback_attempts=len(attempts),
        send_duration_s=duration,
        ack_throughput_per_s=(len(first_acks) - 1) / duration if duration else None,
        ack_latency_p50_ms=_percentile_or_none(latencies_ms, 0.5),
        ack_latency_p99_ms=_percentile_or_none(latencies_ms, 0.99),
        send_rate_per_s=_rate([a.started_at for a in firsts]),
        delivery_threads=sim.config.delivery_threads,
        task_latency_p50_ms=_percentile_or_none(task_latencies_ms, 0.5),
        task_latency_p99_ms=_percentile_or_none(task_latencies_ms, 0.99),
    )
    return report, acked


def _answered(attempt: DeliveryAttempt) -> float:
    """When ``attempt``'s answer came, monotonic seconds."""
    return attempt.started_at + attempt.duration_s


def _percentile_or_none(values: list[float], share: float) -> float | None:
    return percentile(values, share) if values else None


def _rate(times: list[float]) -> float | None:
    """Events per second over the spread of their ``times`` (monotonic seconds): N events are N-1
    intervals; None for fewer than two, or all at one instant."""
    spread = max(times, default=0.0) - min(times, default=0.0)
    return (len(times) - 1) / spread if len(times) > 1 and spread > 0 else None


@dataclass(frozen=True, slots=True)
class _Wanted:
    """The manifests a load run reads: those of ``task_ids``, waited for until each of
    ``acknowledged`` has one that is final. A manifest is final when it is this run's and
    ``stored`` (a later callback changes nothing then) or written for the last callback of
    ``resent_at`` (its ``receivedAt`` is not earlier than when that one was sent). One whose
    ``receivedAt`` (the newest callback mjhook processed for the task) is more than
    :data:`EARLIER_RUN_MARGIN_S` before ``started_at`` is an earlier run's of the same taskId (a
    ``serve --task-id-prefix`` run again numbers its tasks from 000000 anew): this run's is still
    to come. Times are Unix seconds, mjhook's clock taken to agree with this one's (within the
    margin). A limit: a first delivery that reaches mjhook after its duplicate was sent (the two
    overlapping: a slow network or ingress, the duplicate's delay short) has its manifest taken as
    final, since a manifest's ``receivedAt`` cannot say which of two overlapping deliveries it was
    written for; the report then says what that manifest says."""

    task_ids: set[str]
    acknowledged: set[str]
    resent_at: Mapping[str, float]
    started_at: float

    def final(self, task_id: str, manifest: Mapping[str, Any]) -> bool:
        received = _received_at(manifest)
        if self._before_run(received):
            return False
        last_sent = self.resent_at.get(task_id)
        if last_sent is None or manifest.get("status") == "stored":
            return True
        # No usable receivedAt (not mjhook's manifest): nothing says a later one is coming.
        return received is None or received + RECEIVED_AT_RESOLUTION_S >= last_sent

    def outdated(self, found: Mapping[str, Mapping[str, Any]]) -> set[str]:
        """The tasks of ``found`` whose manifest is not final (an earlier run's included)."""
        return {task_id for task_id, manifest in found.items() if not self.final(task_id, manifest)}

    def stale(self, found: Mapping[str, Mapping[str, Any]]) -> set[str]:
        """The tasks of ``found`` whose manifest is an earlier run's."""
        return {task_id for task_id, manifest in found.items() if self._before_run(_received_at(manifest))}

    def _before_run(self, received: float | None) -> bool:
        return received is not None and received < self.started_at - EARLIER_RUN_MARGIN_S

    def complete(self, found: Mapping[str, Mapping[str, Any]]) -> bool:
        return self.acknowledged <= found.keys() and not self.outdated(found) & self.acknowledged


def _wait_for_manifests(
    store: ManifestReader, listing: str, wanted: _Wanted, *, timeout_s: float
) -> tuple[dict[str, dict[str, Any]], str | None]:
    """The manifests of ``wanted`` (under ``listing``) read until it is complete or ``timeout_s``
    seconds have passed, and why the bucket could not be read when the wait ended on a failure
    (None when it ended on a read). What was read before a failure is kept; a manifest not final
    is read again. An outage is tried again until then; any other failure (a refusal) ends the
    wait."""
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        error: str | None = None
        try:
            _read_manifests(store, listing, (wanted.task_ids - found.keys()) | wanted.outdated(found), found)
        except StorageUnavailable as exc:
            error = str(exc)
        except Exception as exc:  # S3's refusals (credentials, policy): asking again changes nothing
            return found, f"{type(exc).__name__}: {exc}"
        if (error is None and wanted.complete(found)) or time.monotonic() >= deadline:
            return found, error
        time.sleep(POLL_INTERVAL_S)


def _received_at(manifest: Mapping[str, Any]) -> float | None:
    """A manifest's ``receivedAt``, Unix seconds; None when it has no usable one."""
    return iso_seconds(str(manifest.get("receivedAt", "")))


def _read_manifests(
    store: ManifestReader, listing: str, task_ids: set[str], found: dict[str, dict[str, Any]]
) -> None:
    """Put into ``found`` the manifests of ``task_ids`` now under ``listing``."""
    present = {key for key in store.list_keys(listing) if key.endswith("/" + MANIFEST_NAME)}
    for task_id in task_ids:
        if manifest_key(task_id) in present:
            manifest = store.get_json(manifest_key(task_id))
            if isinstance(manifest, dict):
                found[task_id] = manifest


def _with_store(
    report: LoadReport,
    manifests: dict[str, dict[str, Any]],
    acked: set[str],
    started_wall: float,
    *,
    stale: set[str],
    read_whole: bool,
) -> LoadReport:
    """``report`` with the bucket's figures from ``manifests``, those of ``stale`` tasks (an
    earlier run's) counted apart and in no other figure: they say nothing of this run. An
    acknowledged task without one is ``missing`` when the bucket was ``read_whole`` at the end,
    else ``unread`` (its manifest may be there)."""
    current = {task_id: manifest for task_id, manifest in manifests.items() if task_id not in stale}
    statuses = Counter(_status_label(manifest.get("status")) for manifest in current.values())
    counts = {status: statuses.get(status, 0) for status in MANIFEST_STATUSES}
    if statuses[OTHER_STATUS]:
        counts[OTHER_STATUS] = statuses[OTHER_STATUS]
    if stale:
        counts[STALE] = len(stale)
    counts["missing" if read_whole else "unread"] = len(acked - manifests.keys())
    finished = [iso_seconds(str(manifest.get("completedAt", ""))) for manifest in current.values()]
    last = max((when for when in finished if when is not None), default=None)
    duration = None if last is None else max(0.0, last - started_wall)
    throughput = counts["stored"] / duration if duration else None
    return replace(
        report,
        manifests=counts,
        store_duration_s=duration,
        stored_throughput_per_s=throughput,
        manifests_unacknowledged=len(current.keys() - acked),
    )


def _status_label(status: object) -> str:
    """A manifest's status as the report counts it: one mjhook writes, else ``other`` (a tampered
    or foreign manifest's status is no label to print, nor a key to add to the report)."""
    return status if isinstance(status, str) and status in MANIFEST_STATUSES else OTHER_STATUS
