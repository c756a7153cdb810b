"""Callback acknowledgement: throughput and p50/p99 latency of POST /callbacks/midjourney under wrk
(32 connections, a new taskId per request), for mjhook's ingress (durable Redis behind it) and two
baselines run in the same interleaved rounds: a bare Falcon app under the same gunicorn settings
(the ceiling) and the Express receiver of the provider's documentation.

    .venv/bin/python bench/ingress_ack.py [--seconds 12] [--rounds 3] [--connections 32]

Targets: mjhook >= 0.7x bare Falcon and >= 1.0x Express requests/s; mjhook p99 <= 10 ms.
Only successful answers count: requests/s is the answers below 400 per second (wrk counts the
others as status errors; the receivers answer the POST 2xx or an error). A round with any socket
or status error, an ingress round (saturated or paced) that left fewer messages queued than it
acknowledged, or a paced round in which a callback went unacknowledged or an attempt failed (timed
out, refused) is failed: the figures resting on it say FAILED, and the script exits with status 1
after saving. Also reported: CPU milliseconds per request of each server (and of Redis), from
/proc, and ``bare_falcon_gthread``: the same bare app as WSGI under gunicorn's gthread worker (the
ingress's settings until session 3), a reference, not the target's baseline: its ratio is in the
report's ``references``, with no target and no verdict.
``mjhook_fsync_everysec`` (only with ``--only``): the same mjhook ingress, measured while Redis
runs with ``appendfsync everysec`` (the faster setting, which may lose the last second of
acknowledged callbacks in a power loss; see README, "Redis restarted") instead of the default
``always``. ``durable_falcon`` (only with ``--only``): the bare app plus the one durable write of
an ingress (an RPUSH of the body onto the queue, Redis fsyncing it before it answers), with its
ratios to the bare app and mjhook's to it as references; ``grouped_falcon`` (only with ``--only``)
the same with mjhook's group commit (one RPUSH of every body waiting, on a held connection): the
best case of a Redis-backed ingress, reported the same way. ``GUNICORN_CMD_ARGS`` applies to every
gunicorn app alike; ``--candidate DIR`` serves a second mjhook ingress (or ``--candidate-app``)
from another tree, e.g. a scratch copy with a change to try, with ``--candidate-env NAME=VALUE``
added to its environment.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
from common import (
    FAILED,
    REPO_ROOT,
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
    tree_cpu_seconds,
    verdict,
)
from prometheus_client.parser import text_string_to_metric_families

from shared import keys
from shared.queue import BROKER_NAMESPACE, CALLBACK_QUEUE
from simulator import RunningSimulator, SimulatorConfig, run_simulator
from simulator.callbacks import DeliveryAttempt
from simulator.load import LoadReport, percentile, run_load
from tests.support.procs import ManagedProcess, free_port, wait_for_http

WRK_SCRIPT = REPO_ROOT / "bench" / "wrk" / "post_callback.lua"
NODE_DIR = REPO_ROOT / "bench" / "node"
EXPRESS_RECEIVER = REPO_ROOT / "bench" / "baselines" / "express_receiver.js"
CALLBACK_PATH = "/callbacks/midjourney"
QUEUE_KEY = keys.broker_queue(BROKER_NAMESPACE, CALLBACK_QUEUE)
WARMUP_S = 2
TARGET_VS_BARE = 0.7
TARGET_VS_EXPRESS = 1.0
TARGET_P99_MS = 10.0
#: wrk's errors without an answer; its ``status`` errors are answers of 400 and above.
SOCKET_ERRORS = ("connect", "read", "write", "timeout")
#: The receivers that queue what they acknowledge: each of their rounds must leave as many
#: messages in the durable queue as it acknowledged.
INGRESSES = ("mjhook", "mjhook_fsync_everysec", "candidate", "durable_falcon", "grouped_falcon")
#: Every receiver ``--only`` may name; ``candidate`` needs ``--candidate``.
RECEIVERS = (
    "mjhook",
    "bare_falcon",
    "express",
    "candidate",
    "bare_falcon_gthread",
    "mjhook_fsync_everysec",
    "durable_falcon",
    "grouped_falcon",
)
#: The receivers run without ``--only``.
DEFAULT_RECEIVERS = ("mjhook", "bare_falcon", "express", "candidate", "bare_falcon_gthread")
#: The verdict of a reference figure: a comparison with no target.
REFERENCE = "REFERENCE"
#: Ratios reported for comparison only, not judged.
#: (durable_falcon and grouped_falcon, only with ``--only``: what the durable write alone costs,
#: one round trip per callback or grouped as mjhook groups them, and mjhook beyond it.)
REFERENCE_PAIRS = (
    ("mjhook", "bare_falcon_gthread"),
    ("durable_falcon", "bare_falcon"),
    ("mjhook", "durable_falcon"),
    ("grouped_falcon", "bare_falcon"),
    ("mjhook", "grouped_falcon"),
)
#: The ingress's settings before its asyncio worker (session 2): the same bare app as WSGI under
#: gthread, for comparison (not the target's baseline, which runs under the ingress's own settings).
GTHREAD_ARGS = ("-k", "gthread", "--threads", "8")


@dataclass(frozen=True)
class Target:
    """A receiver under test: where to POST, and the process tree whose CPU it costs."""

    name: str
    url: str
    pid: int
    #: Redis's ``appendfsync`` during this receiver's runs (None: as started, ``always``).
    appendfsync: str | None = None


def ensure_wrk() -> str:
    """wrk's path; installs the Debian package when running as root, else says how."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        sys.exit("wrk is missing: sudo apt-get install -y wrk")
    print("installing wrk (apt-get install -y wrk) ...", flush=True)
    if subprocess.run(["apt-get", "install", "-y", "wrk"], check=False, capture_output=True).returncode:
        subprocess.run(["apt-get", "update"], check=True, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, capture_output=True)
    return shutil.which("wrk") or sys.exit("wrk is still missing after apt-get install -y wrk")


def ensure_express() -> None:
    """Express in bench/node/node_modules (npm ci from bench/node/package-lock.json)."""
    if (NODE_DIR / "node_modules" / "express").is_dir():
        return
    if not shutil.which("node") or not shutil.which("npm"):
        sys.exit("node and npm are needed for the Express baseline: sudo apt-get install -y nodejs npm")
    print("installing express into bench/node (npm ci) ...", flush=True)
    # ci: exactly what package-lock.json says, which it leaves as it is (install may rewrite it)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True)


def start_express(stack: ExitStack, out: Path) -> Target:
    port = free_port()
    env = {**os.environ, "PORT": str(port), "NODE_PATH": str(NODE_DIR / "node_modules")}
    proc = ManagedProcess(["node", str(EXPRESS_RECEIVER)], log_path=out / "express.log", env=env)
    stack.callback(proc.terminate)
    base_url = f"http://127.0.0.1:{port}"
    wait_for_http(base_url + "/healthz", 30.0, proc=proc)
    return Target("express", base_url, proc.pid)


def run_wrk(wrk: str, url: str, args: argparse.Namespace, *, seconds: int, prefix: str) -> dict[str, Any]:
    """One wrk run; its summary (see bench/wrk/post_callback.lua) with the figures of
    :func:`wrk_figures` added."""
    argv = [
        wrk, f"-t{args.wrk_threads}", f"-c{args.connections}", f"-d{seconds}s", "--timeout", "10s",
        "-s", str(WRK_SCRIPT), url + CALLBACK_PATH, "--", prefix,
    ]  # fmt: skip
    output = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    line = next(line for line in output.splitlines() if line.startswith("WRK_JSON "))
    return wrk_figures(json.loads(line.removeprefix("WRK_JSON ")))


def wrk_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """wrk's summary with ``acked`` (answers below 400: the acknowledgements), ``rps`` (those per
    second: a 4xx or 5xx answer is no throughput), ``p50_ms``/``p99_ms`` (of every answer) and
    ``failed`` (socket and status errors) added."""
    acked = summary["requests"] - summary["errors"]["status"]
    seconds = summary["duration_us"] / 1e6
    return summary | {
        "acked": acked,
        "rps": acked / seconds if seconds > 0 else 0.0,
        "p50_ms": summary["latency_us"]["p50"] / 1000,
        "p99_ms": summary["latency_us"]["p99"] / 1000,
        "failed": sum(summary["errors"].values()),
    }


def round_problems(run: dict[str, Any], *, queues: bool) -> list[str]:
    """Why a wrk round of a receiver did not do its work (none: it did): socket errors, answers of
    400 and above, or (``queues``: an ingress) fewer messages queued than it acknowledged: than
    the ingress counted 200 answers to callbacks (``answered``), when its metrics say, else than
    wrk counted (which leaves out the answers in flight when it stopped: up to one a connection)."""
    errors = run["errors"]
    problems = [f"{errors[name]} {name} errors" for name in SOCKET_ERRORS if errors[name]]
    if errors["status"]:
        problems.append(f"{errors['status']} answers >= 400")
    acknowledged = run["acked"] if run.get("answered") is None else run["answered"]
    if queues and run["queued"] < acknowledged:
        problems.append(f"{run['queued']} messages queued for {acknowledged} acknowledged")
    return problems


def callbacks_answered(base_url: str) -> int | None:
    """How many callbacks the ingress at ``base_url`` answered 200 so far, by its own metrics
    (``mjhook_http_requests``); None where there are none (the baselines, an older ingress)."""
    try:
        answer = httpx.get(base_url + "/metrics", timeout=10)
    except httpx.HTTPError:
        return None
    if answer.status_code != 200:
        return None
    total = 0.0
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "mjhook_http_requests_total"
                and labels.get("endpoint") == CALLBACK_PATH
                and labels.get("status") == "200"
            ):
                total += sample.value
    return int(total)


def measured_run(
    wrk: str, target: Target, redis_client: Any, redis_pid: int, args: argparse.Namespace, number: int
) -> Any:
    """A wrk run against ``target`` with the CPU its server and Redis spent per request, and
    (``queued``) how many messages the run left in the durable queue. Each run starts from an
    empty Redis, as the workers keep it in service: left to pile up (no worker runs here), the
    queue grows by ~100,000 messages a round and Redis's AOF rewrites (a fork, and a child
    using a core) would land on the ingresses' rounds only."""
    compact_redis(redis_client)
    rewrites = redis_client.info("persistence")["aof_rewrites"]
    server_cpu, redis_cpu = tree_cpu_seconds(target.pid), tree_cpu_seconds(redis_pid)
    answered = callbacks_answered(target.url)
    with fsync_policy(redis_client, target.appendfsync):
        result = run_wrk(wrk, target.url, args, seconds=args.seconds, prefix=f"{target.name}-r{number}")
    # Read before the queue: a callback answered 200 was queued before its answer.
    answered_after = callbacks_answered(target.url)
    result["answered"] = None if answered is None or answered_after is None else answered_after - answered
    # A round that queues ~100,000 messages makes Redis rewrite its AOF once or more: counted.
    result["aof_rewrites"] = redis_client.info("persistence")["aof_rewrites"] - rewrites
    requests = max(result["requests"], 1)
    result["server_cpu_ms_per_req"] = (tree_cpu_seconds(target.pid) - server_cpu) * 1000 / requests
    result["redis_cpu_ms_per_req"] = (tree_cpu_seconds(redis_pid) - redis_cpu) * 1000 / requests
    result["queued"] = redis_client.llen(QUEUE_KEY)
    return result


@contextmanager
def fsync_policy(redis_client: Any, appendfsync: str | None) -> Iterator[None]:
    """Redis's ``appendfsync`` set to ``appendfsync`` (None: left alone) for the block."""
    if appendfsync is None:
        yield
        return
    before = redis_client.config_get("appendfsync")["appendfsync"]
    redis_client.config_set("appendfsync", appendfsync)
    try:
        yield
    finally:
        redis_client.config_set("appendfsync", before)


def paced_run(
    sim: RunningSimulator, target: Target, redis_client: Any, args: argparse.Namespace
) -> dict[str, Any]:
    """Callbacks at a steady rate from the provider simulator (16 delivery threads), as the
    provider sends them: the latency of each answer as the provider sees it, without queueing
    in the load generator, and (``queued``) how many messages the round left in the durable queue.
    Rounds run one after another, so this round's delivery attempts are those the simulator
    recorded after the ones before it."""
    compact_redis(redis_client)
    earlier = len(sim.attempts())
    rewrites = redis_client.info("persistence")["aof_rewrites"]
    with fsync_policy(redis_client, target.appendfsync):
        report = run_load(
            sim,
            tasks=round(args.paced_rate * args.paced_seconds),
            rate_per_s=args.paced_rate,
            callback_url=target.url + CALLBACK_PATH,
        )
    figures = paced_figures(report, sim.attempts()[earlier:], queued=int(redis_client.llen(QUEUE_KEY)))
    figures["aof_rewrites"] = redis_client.info("persistence")["aof_rewrites"] - rewrites
    return figures


def compact_redis(redis_client: Any, *, timeout_s: float = 120.0) -> None:
    """Empty Redis and rewrite its AOF, waiting for the rewrite: a paced round starts as a queue
    the workers keep drained would be, not behind the ~100,000 messages a saturated round leaves
    (no worker runs here), whose AOF rewrite (a fork of a big process, then its child's writes
    beside every fsync of ``appendfsync always``) landed on paced rounds as 20 ms stalls."""
    deadline = time.monotonic() + timeout_s
    _wait_for_rewrite(redis_client, deadline)  # Redis takes no second rewrite while one runs
    redis_client.flushall()
    redis_client.bgrewriteaof()
    _wait_for_rewrite(redis_client, deadline)


def _wait_for_rewrite(redis_client: Any, deadline: float) -> None:
    """Wait until Redis rewrites its AOF no more (none running, none scheduled)."""
    while time.monotonic() < deadline:
        info = redis_client.info("persistence")
        if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            return
        time.sleep(0.05)
    raise RuntimeError("Redis did not finish rewriting its AOF in time")


def paced_figures(report: LoadReport, attempts: Sequence[DeliveryAttempt], *, queued: int) -> dict[str, Any]:
    """A paced round's figures: p50/p99 of every delivery attempt (``attempts``, this round's), a
    timed-out or refused one at the time it took, not only of the acknowledged ones as the load
    report gives them; the acknowledged tasks of those sent, the attempts not acknowledged, and
    the messages ``queued`` after the round."""
    latencies_ms = [attempt.duration_s * 1000 for attempt in attempts]
    return {
        "p50_ms": percentile(latencies_ms, 0.5),
        "p99_ms": percentile(latencies_ms, 0.99),
        "acknowledged": report.acknowledged,
        "sent": report.tasks,
        "attempts": len(attempts),
        "attempts_not_acknowledged": sum(not attempt.acknowledged for attempt in attempts),
        "settled": report.settled,
        "per_s": report.ack_throughput_per_s,
        "queued": queued,
    }


def paced_problems(run: dict[str, Any], *, queues: bool) -> list[str]:
    """Why a paced round did not do its work (none: it did): a callback never acknowledged, a
    delivery attempt that failed (its retry may have been acknowledged), callbacks still due, or
    (``queues``: an ingress) fewer messages queued than callbacks acknowledged."""
    problems = []
    if run["acknowledged"] != run["sent"]:
        problems.append(f"{run['acknowledged']} of {run['sent']} callbacks acknowledged")
    if run["attempts_not_acknowledged"]:
        problems.append(f"{run['attempts_not_acknowledged']} delivery attempts not acknowledged")
    if not run["settled"]:
        problems.append("callbacks still due when the wait ended")
    if queues and run["queued"] < run["acknowledged"]:
        problems.append(f"{run['queued']} messages queued for {run['acknowledged']} acknowledged")
    return problems


def paired_ratio(results: dict[str, list[dict[str, Any]]], a: str, b: str) -> float:
    """The median of the per-round requests/s ratios of ``a`` to ``b``: each pair ran back to back."""
    return median([ratio(x["rps"], y["rps"]) for x, y in zip(results[a], results[b], strict=True)])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=12, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument(
        "--only",
        nargs="+",
        choices=RECEIVERS,
        metavar="RECEIVER",
        help=f"receivers to run: {' '.join(RECEIVERS)}",
    )
    parser.add_argument("--candidate", type=Path, help="also serve the ingress from this tree")
    parser.add_argument("--candidate-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--paced-rate", type=float, default=200.0, help="callbacks/s of the paced run; 0: none"
    )
    parser.add_argument("--paced-seconds", type=float, default=10.0)
    parser.add_argument("--candidate-app", default="ingress.wsgi:app", help="the candidate's app")
    args = parser.parse_args(argv)
    if args.only and "candidate" in args.only and not args.candidate:
        parser.error("--only candidate needs --candidate DIR")
    return args


@exit_on_sigterm
def main() -> None:
    args = parse_args()
    wrk = ensure_wrk()
    wanted = set(args.only or DEFAULT_RECEIVERS)
    if "express" in wanted:
        ensure_express()
    out = run_dir("ingress_ack")
    with ExitStack() as stack:
        redis = start_redis(stack, out / "redis")
        assert redis.proc is not None
        env = mjhook_env(redis, None, out)
        started: dict[str, Target] = {}

        def ingress() -> Target:
            if "mjhook" not in started:
                started["mjhook"] = start_gunicorn_target(stack, "mjhook", "ingress.wsgi:app", env, out)
            return started["mjhook"]

        starters: dict[str, Callable[[], Target]] = {
            "mjhook": ingress,
            "mjhook_fsync_everysec": lambda: replace(
                ingress(), name="mjhook_fsync_everysec", appendfsync="everysec"
            ),
            "bare_falcon": lambda: start_gunicorn_target(
                stack, "bare_falcon", "bench.baselines.bare_falcon:app", env, out
            ),
            "express": lambda: start_express(stack, out),
            "durable_falcon": lambda: start_gunicorn_target(
                stack, "durable_falcon", "bench.baselines.durable_falcon:app", env, out
            ),
            "grouped_falcon": lambda: start_gunicorn_target(
                stack, "grouped_falcon", "bench.baselines.grouped_falcon:app", env, out
            ),
            "bare_falcon_gthread": lambda: start_gunicorn_target(
                stack,
                "bare_falcon_gthread",
                "bench.baselines.bare_falcon:wsgi_app",
                env,
                out,
                extra_args=GTHREAD_ARGS,
            ),
        }
        if args.candidate:
            candidate_env = {**env, **dict(item.split("=", 1) for item in args.candidate_env)}
            starters["candidate"] = lambda: start_gunicorn_target(
                stack, "candidate", args.candidate_app, candidate_env, out, args.candidate
            )
        client = redis.client()
        # Only the receivers asked for are started (Express needs node and npm).
        targets = [start() for name, start in starters.items() if name in wanted]

        print(f"warm-up ({WARMUP_S} s each) ...", flush=True)
        for target in targets:
            run_wrk(wrk, target.url, args, seconds=WARMUP_S, prefix=f"{target.name}-warmup")
        redis_pid = redis.proc.pid
        runs = {t.name: (lambda n, t=t: measured_run(wrk, t, client, redis_pid, args, n)) for t in targets}
        results = interleave(runs, args.rounds)
        queue = {
            "aof_enabled": client.info("persistence").get("aof_enabled"),
            "appendfsync": client.config_get("appendfsync").get("appendfsync"),
        }
        paced: dict[str, list[dict[str, Any]]] = {}
        if args.paced_rate > 0:
            print(f"paced: {args.paced_rate:g} callbacks/s from the provider simulator ...", flush=True)
            sim = stack.enter_context(run_simulator(SimulatorConfig(time_scale=0.001)))
            paced = interleave(
                {t.name: (lambda n, t=t: paced_run(sim, t, client, args)) for t in targets}, args.rounds
            )
    report = summarize(results, paced, args, queue)
    save(out, "ingress_ack", report)
    exit_if_failed(report["failures"])


def start_gunicorn_target(
    stack: ExitStack,
    name: str,
    app: str,
    env: dict[str, str],
    out: Path,
    root: Path = REPO_ROOT,
    *,
    extra_args: Sequence[str] = (),
) -> Target:
    proc, url = start_gunicorn(
        stack, app, env, out / f"{name}.log", root=root.resolve(), extra_args=extra_args
    )
    return Target(name, url, proc.pid)


def summarize(
    results: dict[str, list[dict[str, Any]]],
    paced: dict[str, list[dict[str, Any]]],
    args: argparse.Namespace,
    queue: dict[str, Any],
) -> dict[str, Any]:
    """Print the tables and figures; the report. Each run gets its ``problems``; ``failures``
    lists the failed rounds, and a figure resting on one says FAILED."""
    failures = mark_problems(results, paced)
    keys_ = ("rps", "p50_ms", "p99_ms", "server_cpu_ms_per_req", "redis_cpu_ms_per_req")
    medians = {
        name: {key: median([run[key] for run in runs]) for key in keys_} for name, runs in results.items()
    }
    rows: list[list[object]] = [
        [
            "receiver",
            "ok req/s",
            "p50 ms",
            "p99 ms",
            "server CPU ms/req",
            "redis CPU ms/req",
            "ok req/s per round",
            "failed",
            "AOF rewrites",
        ]
    ]
    for name, runs in results.items():
        m = medians[name]
        per_round = " ".join(f"{run['rps']:.0f}" for run in runs)
        failed = sum(run["failed"] for run in runs)
        rewrites = sum(run.get("aof_rewrites", 0) for run in runs)
        rows.append([name, *(m[key] for key in keys_), per_round, failed, rewrites])
    print_table(rows)
    paced_medians = {
        name: {key: median([run[key] for run in runs]) for key in ("p50_ms", "p99_ms", "per_s")}
        for name, runs in paced.items()
    }
    if paced:
        print(f"paced at {args.paced_rate:g}/s (the provider simulator's deliveries, all attempts):")
        paced_rows: list[list[object]] = [
            ["receiver", "p50 ms", "p99 ms", "acked/s", "acked/sent", "attempts not acked", "AOF rewrites"]
        ]
        for name, runs in paced.items():
            m = paced_medians[name]
            acked = f"{sum(r['acknowledged'] for r in runs)}/{sum(r['sent'] for r in runs)}"
            not_acked = sum(r["attempts_not_acknowledged"] for r in runs)
            rewrites = sum(r.get("aof_rewrites", 0) for r in runs)
            paced_rows.append([name, m["p50_ms"], m["p99_ms"], m["per_s"], acked, not_acked, rewrites])
        print_table(paced_rows)
    report: dict[str, Any] = {
        "settings": vars(args) | {"candidate": str(args.candidate or "")},
        "gunicorn_cmd_args": os.environ.get("GUNICORN_CMD_ARGS", ""),
        "medians": medians,
        "paced_medians": paced_medians,
        "runs": results,
        "paced_runs": paced,
        "failures": failures,
    }
    if "mjhook" not in medians:
        return report
    figures = judge_figures(results, paced, medians, paced_medians)
    for name, (value, target, result) in figures.items():
        print(f"{name}: {value:.3g} (target {'<=' if name.endswith('_ms') else '>='} {target}) {result}")
    references = reference_figures(results)
    for name, (value, _, result) in references.items():
        print(f"{name}: {value:.3g} (a reference, no target) {result}")
    ingresses = [name for name in INGRESSES if name in results]
    queue["acked_in_rounds"] = sum(run["acked"] for name in ingresses for run in results[name])
    queue["queued_in_rounds"] = sum(run["queued"] for name in ingresses for run in results[name])
    print(
        f"Redis queue after each round of {' and '.join(ingresses)}: {queue['queued_in_rounds']} queued "
        f"in all, {queue['acked_in_rounds']} acknowledged as wrk counted (it counts a few answers fewer "
        f"than were sent), AOF {queue['aof_enabled']} fsync {queue['appendfsync']}"
    )
    return report | {"figures": figures, "references": references, "queue": queue}


def mark_problems(
    results: dict[str, list[dict[str, Any]]], paced: dict[str, list[dict[str, Any]]]
) -> list[str]:
    """Set each run's ``problems`` (:func:`round_problems`, :func:`paced_problems`); one line per
    failed round."""
    for name, runs in results.items():
        for run in runs:
            run["problems"] = round_problems(run, queues=name in INGRESSES)
    for name, runs in paced.items():
        for run in runs:
            run["problems"] = paced_problems(run, queues=name in INGRESSES)
    return [
        f"{name} {kind} {number + 1}: {'; '.join(run['problems'])}"
        for kind, runs_of in (("round", results), ("paced round", paced))
        for name, runs in runs_of.items()
        for number, run in enumerate(runs)
        if run["problems"]
    ]


def all_ok(runs: Sequence[dict[str, Any]]) -> bool:
    return not any(run["problems"] for run in runs)


def judge_figures(
    results: dict[str, list[dict[str, Any]]],
    paced: dict[str, list[dict[str, Any]]],
    medians: dict[str, dict[str, float]],
    paced_medians: dict[str, dict[str, float]],
) -> dict[str, list[Any]]:
    """Each figure as [value, target, verdict]; the verdict is FAILED when a round it rests on
    failed (see :func:`mark_problems`, which must have run). The p99 figures are the worst
    round's, not the median's: a tail that comes one round in three is a tail."""
    p99 = max(run["p99_ms"] for run in results["mjhook"])
    figures: dict[str, Any] = {
        "mjhook_p99_ms": [
            p99,
            TARGET_P99_MS,
            verdict(p99, TARGET_P99_MS, at_most=True, valid=all_ok(results["mjhook"])),
        ]
    }
    if "mjhook" in paced_medians:
        paced_p99 = max(run["p99_ms"] for run in paced["mjhook"])
        figures["mjhook_paced_p99_ms"] = [
            paced_p99,
            TARGET_P99_MS,
            verdict(paced_p99, TARGET_P99_MS, at_most=True, valid=all_ok(paced["mjhook"])),
        ]
    pairs = [("mjhook", "bare_falcon", TARGET_VS_BARE), ("mjhook", "express", TARGET_VS_EXPRESS)]
    pairs += [
        ("mjhook_fsync_everysec", "mjhook", 1.0),
        ("mjhook_fsync_everysec", "bare_falcon", TARGET_VS_BARE),
    ]
    pairs += [("candidate", "mjhook", 1.0), ("candidate", "bare_falcon", TARGET_VS_BARE)]
    for a, b, target in pairs:
        if a in medians and b in medians:
            value = paired_ratio(results, a, b)
            valid = all_ok(results[a]) and all_ok(results[b])
            figures[f"{a}_rps_vs_{b}"] = [value, target, verdict(value, target, valid=valid)]
    return figures


def reference_figures(results: dict[str, list[dict[str, Any]]]) -> dict[str, list[Any]]:
    """The ratios of ``REFERENCE_PAIRS`` that ran, each as [value, None (no target), REFERENCE],
    FAILED instead when a round it rests on failed (see :func:`mark_problems`, which must have
    run)."""
    references: dict[str, list[Any]] = {}
    for a, b in REFERENCE_PAIRS:
        if a in results and b in results:
            valid = all_ok(results[a]) and all_ok(results[b])
            references[f"{a}_rps_vs_{b}"] = [
                paired_ratio(results, a, b),
                None,
                REFERENCE if valid else FAILED,
            ]
    return references


if __name__ == "__main__":
    main()
