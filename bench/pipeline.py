"""End to end: tasks stored per second and MB/s, from the simulator's result files through the
ingress, Redis and the workers into S3 (SeaweedFS), against two baselines run in the same
interleaved rounds on the same files:

- raw: the limit. A minimal script downloads the same files and PUTs them to the same S3 store
  with the same concurrency (worker processes x download threads), no queue, no checks.
- naive: bench/baselines/naive_receiver.py downloads sequentially inside its HTTP handler.

    .venv/bin/python bench/pipeline.py [--tasks 40] [--rounds 3] [--size 1024] [--file-seconds 0.5]

Each task is a grid of 4 PNGs of SIZExSIZE (1024: ~1.4-1.8 MB each), as the provider sends them.
Callbacks are posted 16 at a time (the simulator's delivery threads). Targets: mjhook >= 0.8x raw
and >= 5x naive (tasks/s). Only stored tasks count: tasks/s and MB/s are the stored tasks and
their files' bytes per second, and a run that did not store every task (a task ending partial or
failed, or not ended within 600 s: the rounds stop there) is failed: the figures resting on it say
FAILED, and the script exits with status 1 after saving. (raw and naive stop the benchmark at the
first file they cannot copy or store.)

Loopback has no network: a file arrives as fast as the CPU copies it, so nothing is gained by
downloading several at once on 2 cores. A real CDN takes a while per file; the simulator models
that with its slow-file behaviour: every file takes ``--file-seconds`` to arrive (0.5 s: 1.6 MB at
~25 Mbit/s). ``--file-seconds 0`` measures the CPU-bound case instead.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from common import (
    DOWNLOAD_CONCURRENCY,
    REPO_ROOT,
    WORKER_LAUNCHER,
    WORKER_PROCESSES,
    WORKER_THREADS,
    exit_if_failed,
    exit_on_sigterm,
    interleave,
    median,
    mjhook_env,
    print_table,
    ratio,
    run_dir,
    save,
    start_gunicorn,
    start_redis,
    start_s3,
    verdict,
)
from minio import Minio

from shared import keys
from simulator import FaultConfig, SimulatorConfig, run_simulator
from simulator.load import percentile
from simulator.server import RunningSimulator
from tests.support.procs import ManagedProcess, free_port, wait_for_http
from tests.support.stack import PROBE_KEY, start_workers

CALLBACK_PATH = "/callbacks/midjourney"
#: Callbacks in flight at once: the simulator's (and the provider's) delivery threads.
DELIVERY_THREADS = 16
#: How long the provider waits for an answer; a slower answer is a failed delivery, retried later.
PROVIDER_TIMEOUT_S = 15.0
FINAL_STATES = {"stored", "partial", "failed"}
#: The longest a run may take to store everything, seconds.
STORE_TIMEOUT_S = 600.0
TARGET_VS_RAW = 0.8
TARGET_VS_NAIVE = 5.0
VARIANTS = ("mjhook", "raw", "naive")


@dataclass(frozen=True)
class Grid:
    """One simulated task's result: its prompt, 4 signed URLs of the simulator's files and
    their bytes in all."""

    prompt_json: str
    urls: tuple[str, ...]
    size: int


def make_grids(sim: RunningSimulator, count: int) -> list[Grid]:
    """``count`` finished grids, their files made (and cached) now, before any timing."""
    tasks = [
        sim.provider.submit(
            task_type="mj_txt2img",
            params={"taskType": "mj_txt2img", "prompt": f"bench {n}"},
            prompt={"prompt": f"bench {n}", "model": "midjourney"},
            callback_url="",
            delay_s=0,
        )
        for n in range(count)
    ]
    sim.wait_idle(30.0)
    return [
        Grid(
            t.prompt_json,
            tuple(t.result_urls),
            sum(len(sim.expected_file(t.task_id, i)) for i in range(len(t.result_urls))),
        )
        for t in tasks
    ]


def callback_body(task_id: str, grid: Grid) -> dict[str, Any]:
    return {
        "code": 200,
        "msg": "success",
        "data": {"taskId": task_id, "promptJson": grid.prompt_json, "resultUrls": list(grid.urls)},
    }


def post_callbacks(url: str, bodies: Sequence[dict[str, Any]]) -> list[float]:
    """POST every body, ``DELIVERY_THREADS`` at a time; each answer's latency in seconds."""
    with httpx.Client(timeout=300.0, trust_env=False) as http:

        def post(body: dict[str, Any]) -> float:
            started = time.monotonic()
            http.post(url, json=body).raise_for_status()
            return time.monotonic() - started

        with ThreadPoolExecutor(DELIVERY_THREADS) as pool:
            return list(pool.map(post, bodies))


# --- mjhook ----------------------------------------------------------------------------------


def run_mjhook(ingress_url: str, redis_client: Any, grids: list[Grid], number: int) -> dict[str, Any]:
    task_ids = [f"mjhook-r{number}-{n:04d}" for n in range(len(grids))]
    started = time.time()
    latencies = post_callbacks(
        ingress_url + CALLBACK_PATH, [callback_body(t, g) for t, g in zip(task_ids, grids, strict=True)]
    )
    records = await_final(redis_client, task_ids)
    return mjhook_outcome(grids, records, started) | _latency_summary(latencies)


#: A task's state and when it last changed (ms since the epoch); None while it has no record.
TaskRecord = tuple[str, int] | None


def read_records(redis_client: Any, task_ids: Sequence[str]) -> list[TaskRecord]:
    pipe = redis_client.pipeline(transaction=False)
    for task_id in task_ids:
        pipe.hmget(keys.task(task_id), "state", "updatedAt")
    return [(state.decode(), int(updated)) if state else None for state, updated in pipe.execute()]


def all_final(records: Sequence[TaskRecord]) -> bool:
    return all(record is not None and record[0] in FINAL_STATES for record in records)


def await_final(
    redis_client: Any,
    task_ids: Sequence[str],
    *,
    timeout_s: float = STORE_TIMEOUT_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[TaskRecord]:
    """The tasks' records once every one is final, or as they are after ``timeout_s`` seconds."""
    deadline = clock() + timeout_s
    while not all_final(records := read_records(redis_client, task_ids)) and clock() <= deadline:
        sleep(0.1)
    return records


def mjhook_outcome(grids: list[Grid], records: list[TaskRecord], started: float) -> dict[str, Any]:
    """An mjhook run's result from its tasks' ``records`` (posted at ``started``, epoch seconds):
    its time up to the last task's final transition, or to now when some never ended
    (``timed_out``: the run is no result, and the rounds stop)."""
    timed_out = not all_final(records)
    states = Counter(record[0] if record else "missing" for record in records)
    stored = [grid for grid, record in zip(grids, records, strict=True) if record and record[0] == "stored"]
    finished = time.time() if timed_out else max(record[1] for record in records if record) / 1000
    return {
        "seconds": finished - started,
        "states": dict(states),
        "stored": len(stored),
        "stored_bytes": sum(grid.size for grid in stored),
        "ok": dict(states) == {"stored": len(grids)},
        "timed_out": timed_out,
    }


# --- raw: download and PUT, same concurrency, nothing else --------------------------------------

_raw: dict[str, Any] = {}


def _raw_init(endpoint: str, access_key: str, secret_key: str) -> None:
    _raw["http"] = httpx.Client(timeout=60.0, trust_env=False)
    _raw["s3"] = Minio(endpoint.removeprefix("http://"), access_key, secret_key, secure=False)
    _raw["pool"] = ThreadPoolExecutor(DOWNLOAD_CONCURRENCY)


def _raw_copy(job: tuple[str, str, str]) -> int:
    url, bucket, key = job
    body = _raw["http"].get(url).raise_for_status().content
    _raw["s3"].put_object(bucket, key, io.BytesIO(body), len(body), content_type="image/png")
    return len(body)


def _raw_batch(jobs: list[tuple[str, str, str]]) -> int:
    return sum(_raw["pool"].map(_raw_copy, jobs))


def run_raw(pool: Any, bucket: str, grids: list[Grid], number: int) -> dict[str, Any]:
    jobs = [
        (url, bucket, f"tasks/raw-r{number}-{n:04d}/{index}.png")
        for n, grid in enumerate(grids)
        for index, url in enumerate(grid.urls)
    ]
    batches = [jobs[i::WORKER_PROCESSES] for i in range(WORKER_PROCESSES)]
    started = time.time()
    copied = sum(pool.map(_raw_batch, batches))  # a file not copied raises: no partial run
    seconds = time.time() - started
    return {"seconds": seconds, "bytes": copied, "stored": len(grids), "stored_bytes": copied, "ok": True}


# --- naive -------------------------------------------------------------------------------------


def start_naive(stack: ExitStack, s3: Any, bucket: str, out: Path) -> str:
    port = free_port()
    argv = [
        sys.executable, str(REPO_ROOT / "bench" / "baselines" / "naive_receiver.py"), "--port", str(port),
        "--s3-endpoint", s3.endpoint, "--access-key", s3.access_key, "--secret-key", s3.secret_key,
        "--bucket", bucket,
    ]  # fmt: skip
    proc = ManagedProcess(argv, log_path=out / "naive.log", cwd=REPO_ROOT)
    stack.callback(proc.terminate)
    url = f"http://127.0.0.1:{port}"
    wait_for_http(url + "/healthz", 30.0, proc=proc)
    return url


def run_naive(naive_url: str, grids: list[Grid], number: int) -> dict[str, Any]:
    bodies = [callback_body(f"naive-r{number}-{n:04d}", grid) for n, grid in enumerate(grids)]
    started = time.time()
    # Each answer is 200 only once the task's files are stored; any other raises: no partial run.
    latencies = post_callbacks(naive_url + CALLBACK_PATH, bodies)
    stored = {"stored": len(grids), "stored_bytes": sum(grid.size for grid in grids), "ok": True}
    return {"seconds": time.time() - started} | stored | _latency_summary(latencies)


def _latency_summary(latencies: list[float]) -> dict[str, Any]:
    return {
        "ack_p50_ms": percentile(latencies, 0.5) * 1000,
        "ack_p99_ms": percentile(latencies, 0.99) * 1000,
        "acks_over_provider_timeout": sum(latency > PROVIDER_TIMEOUT_S for latency in latencies),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=40, help="tasks per run (4 images each)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=1024, help="image width and height, pixels")
    parser.add_argument("--file-seconds", type=float, default=0.5, help="time each file takes to arrive")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=VARIANTS,
        metavar="VARIANT",
        help=f"variants to run: {' '.join(VARIANTS)}",
    )
    return parser.parse_args(argv)


@exit_on_sigterm
def main() -> None:
    args = parse_args()
    out = run_dir("pipeline")
    with ExitStack() as stack:
        redis = start_redis(stack, out / "redis")
        s3 = start_s3(stack, out / "s3")
        for bucket in ("raw", "naive"):
            s3.client().make_bucket(bucket)
            # As start_workers does for mjhook's bucket: SeaweedFS grows a bucket's first volume
            # on its first write, and the first round of a variant would pay that alone.
            probe = s3.client()
            probe.put_object(bucket, PROBE_KEY, io.BytesIO(b"{}"), 2)
            probe.remove_object(bucket, PROBE_KEY)
        files_per_run = args.tasks * 4
        cdn = FaultConfig(
            file_slow_share=1.0 if args.file_seconds > 0 else 0.0, file_slow_delay_s=args.file_seconds
        )
        sim = run_simulator(
            SimulatorConfig(
                image_width=args.size,
                image_height=args.size,
                # Every prepared file stays cached, whatever its size: a file made again while
                # measured would be the simulator's time, not the variant's.
                file_cache_size=files_per_run + 8,
                file_cache_bytes=2**62,
                faults=cdn,
            )
        )
        stack.callback(sim.stop)
        print(f"making {files_per_run} result files ...", flush=True)
        grids = make_grids(sim, args.tasks)
        env = mjhook_env(redis, s3, out)
        _, ingress_url = start_gunicorn(stack, "ingress.wsgi:app", env, out / "ingress.log")
        workers = start_workers(
            env, out, processes=WORKER_PROCESSES, threads=WORKER_THREADS, launcher=WORKER_LAUNCHER
        )
        stack.callback(workers.terminate)
        naive_url = start_naive(stack, s3, "naive", out)
        context = multiprocessing.get_context("spawn")
        raw_pool = stack.enter_context(
            context.Pool(WORKER_PROCESSES, _raw_init, (s3.endpoint, s3.access_key, s3.secret_key))
        )
        raw_pool.map(abs, range(WORKER_PROCESSES))  # start them before any timing
        client = redis.client()
        variants = {
            "mjhook": lambda n: run_mjhook(ingress_url, client, grids, n),
            "raw": lambda n: run_raw(raw_pool, "raw", grids, n),
            "naive": lambda n: run_naive(naive_url, grids, n),
        }
        variants = {name: run for name, run in variants.items() if not args.only or name in args.only}
        results = interleave(variants, args.rounds, stop=lambda run: run.get("timed_out", False))
    report = summarize(results, args, sum(grid.size for grid in grids))
    save(out, "pipeline", report)
    exit_if_failed(report["failures"])


def summarize(
    results: dict[str, list[dict[str, Any]]], args: argparse.Namespace, total_bytes: int
) -> dict[str, Any]:
    """Print the table and figures; the report. tasks/s and MB/s count the stored tasks and their
    bytes only (``total_bytes``: those of every task of a run); ``failures`` lists the runs that
    did not store every task, and a figure resting on one says FAILED."""
    for runs in results.values():
        for run in runs:
            run["tasks_per_s"] = run["stored"] / run["seconds"]
            run["mb_per_s"] = run["stored_bytes"] / 1e6 / run["seconds"]
    failures = [
        f"{name} round {number + 1}: {run['stored']} of {args.tasks} tasks stored"
        + (f" ({run['states']})" if "states" in run else "")
        + (f", the others not ended within {STORE_TIMEOUT_S:.0f} s" if run.get("timed_out") else "")
        for name, runs in results.items()
        for number, run in enumerate(runs)
        if not run["ok"]
    ]
    rows: list[list[object]] = [
        ["variant", "stored tasks/s", "stored MB/s", "s per run", "ack p99 ms", "acks > 15 s", "all stored"]
    ]
    for name, runs in results.items():
        rows.append([
            name,
            median([run["tasks_per_s"] for run in runs]),
            median([run["mb_per_s"] for run in runs]),
            " ".join(f"{run['seconds']:.1f}" for run in runs),
            median([run.get("ack_p99_ms", float("nan")) for run in runs]),
            sum(run.get("acks_over_provider_timeout", 0) for run in runs),
            all(run["ok"] for run in runs),
        ])  # fmt: skip
    print_table(rows)
    figures = {}
    for other, target in (("raw", TARGET_VS_RAW), ("naive", TARGET_VS_NAIVE)):
        if "mjhook" in results and other in results:
            # Unequal when a run timed out and ended the rounds: the pairs that ran are compared.
            pairs = zip(results["mjhook"], results[other], strict=False)
            value = median([ratio(a["tasks_per_s"], b["tasks_per_s"]) for a, b in pairs])
            valid = all(run["ok"] for run in results["mjhook"] + results[other])
            result = verdict(value, target, valid=valid)
            figures[f"mjhook_vs_{other}"] = [value, target, result]
            print(f"mjhook vs {other}: {value:.3g}x stored tasks/s (target >= {target}) {result}")
    return {
        "settings": vars(args) | {"worker_processes": WORKER_PROCESSES, "worker_threads": WORKER_THREADS},
        "files_per_run": args.tasks * 4,
        "bytes_per_run": total_bytes,
        "figures": figures,
        "runs": results,
        "failures": failures,
    }


if __name__ == "__main__":
    main()
