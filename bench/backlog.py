"""A large backlog: Redis memory per queued callback, and whether the drain rate holds as the
backlog grows.

    .venv/bin/python bench/backlog.py [--count 100000] [--rounds 3] [--window 2]

Durable Redis servers are filled through the ingress's own enqueue path (record the task, enqueue
the message; no HTTP): one with ``--count`` callbacks (100k), one with a tenth of it (10k), both
provider failures (code 500, no URLs: the workers take the lease, write a manifest and record the
failure but download nothing, so the drain rate measures the queue and state path alone), and a
third with ``--count`` 4-image success callbacks, only to measure their memory. Memory per callback
is INFO used_memory after minus before, divided by the count.

Draining all 100k on 2 cores would take many minutes, so each phase drains only a few thousand:
the workers are pointed at one Redis and its rate measured over 5 windows, the Redis topped up to
its backlog before each window (while the workers drain; the top-up's time is in no window), then
the workers stopped. A window that starts with less than 80 % of its backlog queued measures a
smaller backlog: it is flagged and left out of its phase's median. A phase with no window left, or
whose median rate is not above 0 (nothing drained), fails: its figure says FAILED, and the script
exits with status 1 after saving. Phases alternate
(10k, 100k, 10k, 100k ...); the figure is the median of the per-round ratios of the 100k rate to
the 10k rate. Target: >= 0.9 (no fall beyond the run-to-run noise).

``--full-drain`` instead fills one Redis with ``--count`` failure callbacks and lets the workers
drain all of it, timing each tenth of the drain (from a backlog of 100 % to 90 %, ... to 0 %): the
figure is the median rate of the first three tenths (the backlog at 70-100 %) over that of the
last three (0-30 %), with the same target. The wait ends once every callback reached a final state
(stored, partial or failed) or after ``--drain-timeout``; the run fails (FAILED, status 1 after
saving) unless every callback ended recorded as failed, nothing is left queued or dead-lettered
and each tenth was timed.

    .venv/bin/python bench/backlog.py --full-drain [--count 100000]
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Protocol

from common import (
    FAILED,
    WORKER_LAUNCHER,
    WORKER_PROCESSES,
    WORKER_THREADS,
    DurableRedis,
    exit_if_failed,
    exit_on_sigterm,
    interleave,
    make_intake,
    median,
    mjhook_env,
    print_table,
    ratio,
    run_dir,
    save,
    start_redis,
    start_s3,
    verdict,
)

from ingress.intake import CallbackIntake
from shared import keys
from shared.callback import Callback
from shared.clock import utc_iso
from shared.queue import BROKER_NAMESPACE, CALLBACK_QUEUE
from shared.taskstate import FINAL_STATES, TaskState
from tests.support.servers import S3Server
from tests.support.stack import start_workers

WINDOWS = 5
FILL_THREADS = 4
PROMPT_JSON = '{"prompt":"a lighthouse on a cliff at golden hour --ar 1:1 --v 7","model":"midjourney"}'
#: A grid's result URL as the provider signs them (as in bench/wrk/post_callback.lua).
RESULT_URL = (
    "https://tempfile.cdn-provider.example/files/{task_id}/{index}.png?exp=1767225600&sig=" + "8f3c" * 8
)
QUEUE_KEY = keys.broker_queue(BROKER_NAMESPACE, CALLBACK_QUEUE)
MESSAGES_KEY = keys.broker_messages(BROKER_NAMESPACE, CALLBACK_QUEUE)
FAILED_KEY = keys.state_index("failed")
#: The state a drained callback (a provider failure) must end in.
AWAITED_STATE = TaskState.FAILED.value
#: The index of each final state: a callback in one of them is drained, whichever it is.
FINAL_STATE_KEYS = {state.value: keys.state_index(state.value) for state in sorted(FINAL_STATES)}
#: "Must not fall": the 100k rate at least the 10k rate, less 10 % for run-to-run noise.
TARGET_RATIO = 0.9
#: A drain window counts only when at least this share of its backlog is queued at its start.
MIN_BACKLOG_SHARE = 0.8
#: A top-up ends once the queue is short of its size by at most this share of it ...
TOP_UP_SLACK = 0.02
#: ... or after this many fills.
TOP_UP_ROUNDS = 5


class Backlog:
    """One Redis, its intake, and the backlog it is kept at between drain phases."""

    def __init__(
        self, name: str, redis: DurableRedis, s3: S3Server, out: Path, size: int, *, success: bool = False
    ) -> None:
        self.name = name
        self.success = success
        self.redis = redis
        self.client = redis.client()
        self.env = mjhook_env(redis, s3, out)
        self.intake: CallbackIntake = make_intake(self.env)[0]
        self.size = size
        self._numbers = itertools.count()

    def fill(self, count: int) -> float:
        """Enqueue ``count`` new callbacks: provider failures (code 500, no URLs: what the drain
        phases use), or with ``success`` 4-image grids; returns callbacks per second."""
        started = time.monotonic()
        with ThreadPoolExecutor(FILL_THREADS) as pool:
            for _ in pool.map(self._enqueue_one, range(count), chunksize=256):
                pass
        return count / (time.monotonic() - started)

    def _enqueue_one(self, _: int) -> None:
        task_id = f"{self.name}-{next(self._numbers):07d}"
        if self.success:
            urls = tuple(RESULT_URL.format(task_id=task_id, index=index) for index in range(4))
            callback = Callback(task_id, 200, "success", PROMPT_JSON, urls, utc_iso(time.time()))
        else:
            callback = Callback(
                task_id, 500, "Midjourney generation failed", PROMPT_JSON, (), utc_iso(time.time())
            )
        self.intake.enqueue(callback)

    def top_up(self) -> None:
        """Fill the queue to its size again. The workers drain while it fills (a small backlog, or
        a loaded machine, lost a fifth of it meanwhile, and its window was left out): it fills
        what they took too, until it is within :data:`TOP_UP_SLACK` of its size or
        :data:`TOP_UP_ROUNDS` fills were made."""
        for _ in range(TOP_UP_ROUNDS):
            missing = self.size - self.client.llen(QUEUE_KEY)
            if missing <= TOP_UP_SLACK * self.size:
                return
            self.fill(missing)

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])


class Drained(Protocol):
    """What a drain phase reads and does: a :class:`Backlog`."""

    size: int
    client: Any

    def top_up(self) -> None: ...


def drain_phase(backlog: Backlog, out: Path, window_s: float) -> dict[str, Any]:
    """Let fresh workers drain ``backlog`` for ``WINDOWS`` windows (see :func:`measure_windows`),
    stop them."""
    backlog.top_up()
    with ExitStack() as stack:
        workers = start_workers(
            backlog.env,
            out / backlog.name,
            processes=WORKER_PROCESSES,
            threads=WORKER_THREADS,
            launcher=WORKER_LAUNCHER,
        )
        stack.callback(workers.terminate)
        windows = measure_windows(backlog, window_s)
    return phase_rate(windows, backlog.size)


def measure_windows(
    backlog: Drained,
    window_s: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[dict[str, Any]]:
    """The drain rate (callbacks recorded failed per second) in each of ``WINDOWS`` windows of
    ``window_s`` seconds, the workers running. The backlog is topped up to its size before each
    window, so that every window measures it near that size; the top-up's own time (the workers
    drain meanwhile) falls in no window."""
    windows = []
    for _ in range(WINDOWS):
        backlog.top_up()
        queued = int(backlog.client.llen(QUEUE_KEY))
        done, at = int(backlog.client.zcard(FAILED_KEY)), clock()
        sleep(window_s)
        done_now, now = int(backlog.client.zcard(FAILED_KEY)), clock()
        windows.append({"backlog_at_start": queued, "per_s": (done_now - done) / (now - at)})
    return windows


def phase_rate(windows: list[dict[str, Any]], size: int) -> dict[str, Any]:
    """A phase's rate: the median over its windows that started with at least
    ``MIN_BACKLOG_SHARE`` of ``size`` queued; the others are flagged ``below_backlog`` and left
    out (NaN when none is left)."""
    floor = MIN_BACKLOG_SHARE * size
    flagged = [window | {"below_backlog": window["backlog_at_start"] < floor} for window in windows]
    kept = [window["per_s"] for window in flagged if not window["below_backlog"]]
    return {"per_s": median(kept), "windows": flagged, "windows_kept": len(kept)}


def full_drain(backlog: Backlog, out: Path, *, poll_s: float, timeout_s: float) -> dict[str, Any]:
    """Fill ``backlog`` to its size, let fresh workers drain all of it (at most ``timeout_s``
    seconds), and time each tenth."""
    print(f"filling {backlog.name}: {backlog.size} failure callbacks ...", flush=True)
    enqueued_per_s = backlog.fill(backlog.size)
    print(f"draining all of it with {WORKER_PROCESSES}x{WORKER_THREADS} workers ...", flush=True)
    count = backlog.size
    with ExitStack() as stack:
        workers = start_workers(
            backlog.env,
            out / backlog.name,
            processes=WORKER_PROCESSES,
            threads=WORKER_THREADS,
            launcher=WORKER_LAUNCHER,
        )
        stack.callback(workers.terminate)
        marks, ended = await_drain(backlog.client, count, poll_s=poll_s, timeout_s=timeout_s)
    return {
        "callbacks": count,
        "timeout_s": timeout_s,
        "enqueued_per_s": enqueued_per_s,
        "seconds": marks[-1][0],
        "done": marks[-1][1],
        "ended": ended,
        "left_queued": int(backlog.client.llen(QUEUE_KEY)),
        "dead": int(backlog.client.zcard(keys.broker_dead(BROKER_NAMESPACE, CALLBACK_QUEUE))),
        "tenths": drain_tenths(marks, count),
    }


def ended_counts(client: Any) -> dict[str, int]:
    """How many callbacks are in each final state (stored, partial, failed)."""
    return {state: int(client.zcard(key)) for state, key in FINAL_STATE_KEYS.items()}


def await_drain(
    client: Any,
    count: int,
    *,
    poll_s: float,
    timeout_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[tuple[float, int]], dict[str, int]]:
    """Poll every ``poll_s`` seconds until ``count`` callbacks reached a final state, whichever
    (one that ended otherwise than failed would keep a wait for failed ones going until the
    timeout), or ``timeout_s`` seconds passed. Returns the marks (seconds since the first poll,
    callbacks ended), one per poll, and the last poll's count of each final state."""
    started = clock()
    ended = ended_counts(client)
    marks = [(0.0, sum(ended.values()))]
    while marks[-1][1] < count and marks[-1][0] < timeout_s:
        sleep(poll_s)
        ended = ended_counts(client)
        marks.append((clock() - started, sum(ended.values())))
    return marks, ended


def drain_tenths(marks: list[tuple[float, int]], count: int) -> list[dict[str, float]]:
    """The drain rate over each tenth of the drain, from the marks (seconds, callbacks done; the
    first when the workers were ready, some already done by the first of them). When a tenth
    starts or ends between two marks, the time it did is interpolated between them."""
    base = marks[0][1]
    span = count - base
    if span <= 0 or marks[-1][1] < count:
        return []
    bounds = [crossing_time(marks, base + span * tenth / 10) for tenth in range(11)]
    return [
        {
            "backlog_from_pct": 100 - 10 * tenth,
            "backlog_at_start": count - base - span * tenth // 10,
            "per_s": (span / 10) / (bounds[tenth + 1] - bounds[tenth]),
        }
        for tenth in range(10)
    ]


def crossing_time(marks: list[tuple[float, int]], done: float) -> float:
    """When the count of callbacks done reached ``done``, interpolated between the two marks
    around it (the first mark, when it had already)."""
    previous = marks[0]
    for mark in marks:
        if mark[1] >= done:
            if mark[1] == previous[1]:
                return mark[0]
            return previous[0] + (done - previous[1]) * (mark[0] - previous[0]) / (mark[1] - previous[1])
        previous = mark
    raise ValueError(f"the drain never reached {done}")


def full_drain_problems(drain: dict[str, Any]) -> list[str]:
    """Why a full drain did not do its work (none: it did): callbacks that reached no final state
    in time or ended otherwise than failed, messages left queued or dead-lettered, tenths not
    timed."""
    count = drain["callbacks"]
    problems = []
    if drain["done"] < count:
        problems.append(f"{drain['done']} of {count} callbacks ended within {drain['timeout_s']:.0f} s")
    problems += [
        f"{number} callbacks ended {state}, not {AWAITED_STATE}"
        for state, number in drain["ended"].items()
        if state != AWAITED_STATE and number
    ]
    if drain["left_queued"]:
        problems.append(f"{drain['left_queued']} messages left queued")
    if drain["dead"]:
        problems.append(f"{drain['dead']} messages dead-lettered")
    if len(drain["tenths"]) != 10:
        problems.append("the tenths of the drain were not timed")
    return problems


def summarize_full_drain(drain: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Print the table and the figures; the report. ``failures`` lists what went wrong (see
    :func:`full_drain_problems`), and then both figures say FAILED."""
    print_table(
        [["backlog from", "callbacks/s"]]
        + [[f"{t['backlog_from_pct']} %", t["per_s"]] for t in drain["tenths"]]
    )
    rates = [t["per_s"] for t in drain["tenths"]]
    value = ratio(median(rates[:3]), median(rates[-3:])) if len(rates) == 10 else float("nan")
    ended = ", ".join(f"{number} {state}" for state, number in drain["ended"].items())
    print(
        f"{drain['done']} of {drain['callbacks']} ended in {drain['seconds']:.0f} s ({ended}), "
        f"{drain['left_queued']} left queued, {drain['dead']} dead-lettered"
    )
    problems = full_drain_problems(drain)
    failures = [f"full drain: {'; '.join(problems)}"] if problems else []
    which = "with the backlog at 70-100 % vs 0-30 %"
    return {
        "settings": run_settings(args),
        "full_drain": drain,
        "figures": {
            "drain_full_large_vs_small": drain_figure(which, value, valid=not failures),
            "drained_completely": [not failures, True, FAILED if failures else "PASS"],
        },
        "failures": failures,
    }


@exit_on_sigterm
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=100_000, help="the large backlog; the small is a tenth")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=2.0, help="seconds per drain window")
    parser.add_argument("--full-drain", action="store_true", help="fill --count, drain all of it")
    parser.add_argument("--drain-timeout", type=float, default=3600.0, help="seconds; --full-drain")
    args = parser.parse_args()
    out = run_dir("backlog")
    with ExitStack() as stack:
        s3 = start_s3(stack, out / "s3")
        if args.full_drain:
            drain = Backlog("drain", start_redis(stack, out / "redis-drain"), s3, out, args.count)
            report = summarize_full_drain(
                full_drain(drain, out, poll_s=0.1, timeout_s=args.drain_timeout), args
            )
        else:
            report = drain_phases(stack, s3, out, args)
    save(out, "backlog", report)
    exit_if_failed(report["failures"])


def drain_phases(stack: ExitStack, s3: S3Server, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Measure the memory per queued callback, then the interleaved drain phases (10k, 100k ...)
    with their Redis servers started on ``stack``; the report."""
    small = Backlog("small", start_redis(stack, out / "redis-small"), s3, out, args.count // 10)
    large = Backlog("large", start_redis(stack, out / "redis-large"), s3, out, args.count)
    with ExitStack() as grids_stack:  # only measured, never drained: stopped right after
        grids = Backlog(
            "grids", start_redis(grids_stack, out / "redis-grids"), s3, out, args.count, success=True
        )
        memory = {backlog.name: measure_fill(backlog) for backlog in (small, large, grids)}
    phases = {b.name: (lambda _, b=b: drain_phase(b, out, args.window)) for b in (small, large)}
    return summarize(interleave(phases, args.rounds), args, memory)


def measure_fill(backlog: Backlog) -> dict[str, Any]:
    """Fill ``backlog`` to its size; Redis memory per queued callback and the enqueue rate."""
    kind = "4-image grids" if backlog.success else "failure callbacks"
    print(f"filling {backlog.name}: {backlog.size} {kind} ...", flush=True)
    before = backlog.used_memory()
    rate = backlog.fill(backlog.size)
    after = backlog.used_memory()
    per_callback = (after - before) / backlog.size
    print(f"  {per_callback:.0f} bytes of Redis memory per queued callback; enqueued {rate:.0f}/s")
    return {
        "callbacks": backlog.size,
        "kind": kind,
        "used_memory_before": before,
        "used_memory_after": after,
        "bytes_per_callback": per_callback,
        "enqueued_per_s": rate,
        "breakdown_bytes": breakdown(backlog),
    }


def breakdown(backlog: Backlog) -> dict[str, int]:
    """Bytes held by each part of one queued callback: the message, its id in the queue list and
    the task's state record (one sample)."""
    client = backlog.client
    sample_id = f"{backlog.name}-{0:07d}"
    count = backlog.size
    return {
        "message_hash_per_callback": int(client.memory_usage(MESSAGES_KEY, samples=0) or 0) // count,
        "queue_list_per_callback": int(client.memory_usage(QUEUE_KEY, samples=0) or 0) // count,
        "task_record": int(client.memory_usage(keys.task(sample_id)) or 0),
        "received_index_per_callback": int(client.memory_usage(keys.state_index("received"), samples=0) or 0)
        // count,
    }


def summarize(
    results: dict[str, list[dict[str, Any]]], args: argparse.Namespace, memory: Any
) -> dict[str, Any]:
    """Print the table and the figure; the report. A window below its backlog (flagged ``*``) is
    left out of its phase's median; ``failures`` lists the phases with no window left or nothing
    drained (:func:`phase_problem`), and the figure says FAILED when there is one."""
    header: list[object] = [
        "backlog",
        "round",
        *(f"w{i + 1} /s" for i in range(WINDOWS)),
        "median /s",
        "queued at start",
    ]
    rows: list[list[object]] = [header]
    for name, phases in results.items():
        for number, phase in enumerate(phases):
            rates = [f"{w['per_s']:.3g}" + ("*" if w["below_backlog"] else "") for w in phase["windows"]]
            queued = " ".join(str(w["backlog_at_start"]) for w in phase["windows"])
            rows.append([name, number + 1, *rates, phase["per_s"], queued])
    print_table(rows)
    flagged = sum(w["below_backlog"] for phases in results.values() for p in phases for w in p["windows"])
    if flagged:
        print(f"* {flagged} window(s) started below {MIN_BACKLOG_SHARE:.0%} of their backlog: left out")
    failures = [
        f"{name} phase {number + 1}: {problem}"
        for name, phases in results.items()
        for number, phase in enumerate(phases)
        if (problem := phase_problem(phase))
    ]
    pairs = zip(results["large"], results["small"], strict=True)
    value = median([ratio(large["per_s"], small["per_s"]) for large, small in pairs])
    which = f"at {args.count} vs {args.count // 10} queued"
    return {
        "settings": run_settings(args),
        "memory": memory,
        "figures": {"drain_large_vs_small": drain_figure(which, value, valid=not failures)},
        "phases": results,
        "failures": failures,
    }


def phase_problem(phase: dict[str, Any]) -> str | None:
    """Why a drain phase measured nothing (None: it did): no window started at its backlog, or
    the workers drained nothing in those that did."""
    if not phase["windows_kept"]:
        return f"every window started below {MIN_BACKLOG_SHARE:.0%} of its backlog"
    if not phase["per_s"] > 0:
        return f"nothing drained (median {phase['per_s']:.3g} callbacks/s)"
    return None


def drain_figure(which: str, value: float, *, valid: bool = True) -> list[object]:
    """Print the drain-rate ratio ``value`` (``which`` rates it compares) with its verdict (FAILED
    unless ``valid``); the figure as the report keeps it."""
    result = verdict(value, TARGET_RATIO, valid=valid)
    print(f"drain rate {which}: {value:.3g}x (target >= {TARGET_RATIO}) {result}")
    return [value, TARGET_RATIO, result]


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    return vars(args) | {"worker_processes": WORKER_PROCESSES, "worker_threads": WORKER_THREADS}


if __name__ == "__main__":
    main()
