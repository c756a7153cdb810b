"""The chaos run: many callbacks through the provider simulator while the stack is being broken,
then a count of where every one of them ended.

    .venv/bin/python bench/chaos.py [--tasks 200] [--seed 1] [--json]
    .venv/bin/python bench/chaos.py --long        # 10,000 callbacks: by hand only, ~15-20 minutes

Tasks are submitted to the in-process simulator; it calls the real ingress (gunicorn) back with
the provider's retry schedule (1, 5, 15 minutes times ``--time-scale``), sends some callbacks
twice, reports some generations failed, and serves some result files with a 503, cut short,
slowly, or with an already expired link. Meanwhile the run SIGKILLs whole dramatiq worker pools
(two run side by side) and starts fresh ones, restarts Redis once (append-only file, SIGTERM,
start), and kills the S3 store (SeaweedFS) for a while.

When everything has settled (bounded by ``--settle``) it prints, for the tasks sent: how many the
ingress acknowledged (a 2xx seen by the simulator), how many ended stored, partial, failed (by
reason), and the counts that must be 0:

- lost: acknowledged, yet neither a manifest with a final status in the bench's bucket nor a
  ``failed`` state with a reason in Redis (a task the queue gave up on while object storage was
  down has only that). Redis saying stored or partial is not enough: only the bucket shows what
  was stored;
- incomplete: a manifest whose images and errors do not name each file the simulator served
  exactly once, or that says stored with an error or a file missing;
- unexplained: failed or partial without a reason (every error must give a non-blank one);
- stored twice: more than one object for one (task, index) under ``tasks/{id}/``, or a manifest
  listing an index twice;
- downloaded again: a file the simulator served whole after the run had seen its task stored in
  Redis (polled every ``STORED_POLL_S``), that is a download for a task already stored. Retries
  before that (a 503, a cut-short body, a task not stored yet) do not count; a second download
  that starts within one poll of the store goes unseen.

Every stored file is read back and its sha256 compared with the bytes the simulator served.
Exit code 1 (``FAILED`` and why) when any of those is not 0, a file is corrupted, or the run did
not do its work: a callback never acknowledged, none acknowledged at all, not settled within
``--settle``, or tasks stored but no file read back. When some tasks are lost, every worker pool
is then restarted cleanly and they are looked for once more: what comes back was stranded in a
live worker, not destroyed (the report says which).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, redirect_stdout, suppress
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
# Run as a script (`python bench/chaos.py`) or loaded by path from a test: either way the
# repository root must be importable (bench.common, the app packages, tests.support).
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import redis  # noqa: E402

from bench.common import (  # noqa: E402
    BUCKET,
    exit_if_failed,
    exit_on_sigterm,
    machine,
    mjhook_env,
    run_dir,
    start_redis,
    start_s3,
)
from shared import keys  # noqa: E402
from shared.queue import BROKER_NAMESPACE, CALLBACK_QUEUE  # noqa: E402
from shared.storage import MANIFEST_NAME, ObjectStore, task_prefix  # noqa: E402
from shared.worker_registry import registered_workers  # noqa: E402
from simulator import FaultConfig, RunningSimulator, SimulatorConfig, run_simulator  # noqa: E402
from tests.support.procs import ManagedProcess  # noqa: E402
from tests.support.servers import RedisServer, S3Server  # noqa: E402
from tests.support.stack import start_ingress, start_workers  # noqa: E402

CALLBACK_PATH = "/callbacks/midjourney"
TASK_TYPE = "mj_txt2img"
FINAL_STATES = frozenset({"stored", "partial", "failed"})
#: The worker clocks: a killed worker's messages come back within seconds (production: 20 s
#: each); retries start at production's 2 s but back off to 8 s at most (production: 10 min), so
#: a store outage is ridden out within the run.
CHAOS_ENV = {
    "MJHOOK_REDELIVERY_S": "4",
    "MJHOOK_LEASE_TTL_S": "4",
    "MJHOOK_MIN_BACKOFF_MS": "2000",
    "MJHOOK_MAX_BACKOFF_MS": "8000",
    "MJHOOK_SPOOL_DRAIN_INTERVAL_S": "0.5",
    "MJHOOK_READ_TIMEOUT_S": "10",
    # Two pools on one host would fight over the metrics port.
    "MJHOOK_WORKER_METRICS_PORT": "0",
}
#: How the simulator misbehaves besides the outages (the seed is the run's).
DEFAULT_FAULTS = FaultConfig(
    failure_share=0.10,
    duplicate_share=0.10,
    file_error_share=0.04,
    file_truncated_share=0.03,
    file_slow_share=0.02,
    file_expired_share=0.005,
    file_slow_delay_s=1.0,
)
WORKER_START_TIMEOUT_S = 90.0
#: A disruption waits at most this long for a moment when it hurts: a pool holding messages
#: before it is killed, retries waiting out their backoff before Redis restarts. Seconds.
BUSY_WAIT_S = 5.0
POLL_INTERVAL_S = 1.0
#: How long the diagnosis of lost tasks waits after restarting the worker pools, seconds.
RECOVERY_TIMEOUT_S = 60.0
READ_THREADS = 8
#: How often the run looks for tasks newly stored in Redis, seconds: a file served after the look
#: that saw its task stored was downloaded again; one served within this much of the store is not
#: told apart from the downloads that stored it.
STORED_POLL_S = 0.2
_FILE_NAME = re.compile(r"(\d+)\.([a-z0-9]+)")


@dataclass(frozen=True, kw_only=True)
class ChaosConfig:
    """One chaos run. Durations are real seconds."""

    tasks: int = 200
    seed: int = 1
    #: Callbacks falling due per second (the send window is ``tasks / rate_per_s``).
    rate_per_s: float = 5.0
    #: Side of the result PNGs, pixels: small, so bytes do not dominate.
    image_size: int = 64
    pools: int = 2
    #: Worker threads of each pool (one process each: the machine has 2 cores).
    threads: int = 8
    worker_kills: int = 3
    redis_restarts: int = 1
    redis_down_s: float = 2.0
    s3_outages: int = 1
    s3_down_s: float = 6.0
    #: Factor on the provider's callback retry schedule (1, 5, 15 minutes).
    time_scale: float = 0.01
    #: After the send window and the last disruption, how long to wait for everything to end.
    settle_timeout_s: float = 240.0
    faults: FaultConfig = DEFAULT_FAULTS
    #: Logs and server data; None: a fresh bench/out/chaos-<timestamp>/.
    out_dir: Path | None = None

    @property
    def send_window_s(self) -> float:
        return self.tasks / self.rate_per_s

    @property
    def seeded_faults(self) -> FaultConfig:
        """The simulator's faults, drawn from the run's seed."""
        return replace(self.faults, seed=self.seed)


SHORT = ChaosConfig()
LONG = ChaosConfig(
    tasks=10_000,
    rate_per_s=15.0,
    threads=16,
    worker_kills=12,
    redis_down_s=3.0,
    s3_down_s=10.0,
    settle_timeout_s=1200.0,
)


@dataclass
class ChaosReport:
    """Where every callback of a chaos run ended. ``ok`` when the run did its work and nothing was
    lost, incomplete, unexplained, stored twice, downloaded again or corrupted (``failures``)."""

    sent: int
    acknowledged: int
    unacknowledged: int
    delivery_attempts: int
    #: Deliveries (callbacks and their duplicates, retries included) answered 2xx.
    deliveries_acknowledged: int
    duplicates_sent: int
    stored: int
    partial: int
    failed: int
    #: Of ``failed``: known only from Redis (the queue gave up while object storage was down).
    failed_without_manifest: int
    failed_reasons: dict[str, int]
    #: Reasons of the files a partial task could not store.
    partial_reasons: dict[str, int]
    lost: list[str]
    #: Why the lost tasks are lost -> how many: their Redis state when the bucket has no manifest
    #: (``processing``: a worker took it and never finished; ``stored``: Redis says stored, the
    #: bucket has nothing), or ``manifest <status>`` for a manifest whose status is not final.
    lost_states: dict[str, int]
    #: Tasks whose manifest does not name each served file once, or says stored without all.
    incomplete: list[str]
    stored_twice: list[str]
    #: ``task/index`` of the files served whole after the run saw their task stored.
    downloaded_again: list[str]
    #: Tasks the run saw stored while it ran: ``downloaded_again`` looks only at their files.
    seen_stored: int
    #: Failed or partial tasks that give no reason (or a blank one for some file).
    unexplained: list[str]
    files_verified: int
    sha256_mismatches: list[str]
    #: Tasks whose Redis state is not the status of their manifest (informative).
    state_disagreements: list[str]
    dead_letters: int
    #: Delay-queue messages (retries waiting out their backoff) still held by worker processes
    #: at the end: stranded, since nothing is left to wait for.
    stranded_delayed: int
    settled: bool
    settle_s: float
    duration_s: float
    disruptions: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)
    #: When some were lost: those still lost after every worker pool was stopped cleanly and
    #: started again (a diagnosis: what a restart recovers was stranded, not destroyed).
    lost_after_worker_restart: list[str] | None = None

    @property
    def failures(self) -> list[str]:
        """Why the run fails: the promise broken somewhere, or a run that did not do its work."""
        checks = [
            (self.acknowledged == 0, "no callback acknowledged"),
            (self.unacknowledged > 0, f"{self.unacknowledged} callback(s) never acknowledged"),
            (not self.settled, "not settled within --settle"),
            (bool(self.lost), f"{len(self.lost)} lost"),
            (bool(self.incomplete), f"{len(self.incomplete)} incomplete"),
            (bool(self.unexplained), f"{len(self.unexplained)} failed without a reason"),
            (bool(self.stored_twice), f"{len(self.stored_twice)} stored twice"),
            (bool(self.downloaded_again), f"{len(self.downloaded_again)} file(s) downloaded again"),
            (bool(self.sha256_mismatches), f"{len(self.sha256_mismatches)} sha256 mismatch(es)"),
            (self.stored > 0 and self.files_verified == 0, "tasks stored, yet no file read back"),
            (self.stored > 0 and self.seen_stored == 0, "no task seen stored: downloads again unchecked"),
        ]
        return [what for failed, what in checks if failed]

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "failures": self.failures}

    def format_text(self) -> str:
        lines = [
            f"sent {self.sent} | acknowledged {self.acknowledged} | not acknowledged "
            f"{self.unacknowledged}  ({self.delivery_attempts} deliveries, {self.duplicates_sent} "
            f"duplicates sent, {self.deliveries_acknowledged} answered 2xx)",
            f"stored {self.stored} | partial {self.partial} | failed {self.failed} "
            f"({self.failed_without_manifest} without a manifest) | lost {len(self.lost)} | "
            f"incomplete {len(self.incomplete)}",
            f"stored twice {len(self.stored_twice)} | downloaded again {len(self.downloaded_again)} "
            f"(of the files of {self.seen_stored} tasks seen stored while running)",
            *_reason_lines("failed by reason", self.failed_reasons),
            *_reason_lines("partial: files not stored, by reason", self.partial_reasons),
            f"sha256: {self.files_verified} stored files read back, {len(self.sha256_mismatches)} mismatches",
            f"unexplained {len(self.unexplained)} | Redis state != manifest "
            f"{len(self.state_disagreements)} | dead letters {self.dead_letters} | delayed retries "
            f"stranded in workers {self.stranded_delayed}",
            "disruptions:",
            *(
                f"  {event['at_s']:7.1f} s  {event['what']} (took {event['took_s']:.1f} s)"
                for event in self.disruptions
            ),
            f"settled: {self.settled} ({self.settle_s:.1f} s after the last disruption); "
            f"whole run {self.duration_s:.1f} s",
        ]
        named = (
            ("lost", self.lost),
            ("incomplete", self.incomplete),
            ("unexplained", self.unexplained),
            ("stored twice", self.stored_twice),
            ("downloaded again", self.downloaded_again),
        )
        lines += [f"{name}: {', '.join(ids[:20])}" for name, ids in named if ids]
        if self.lost:
            lines.append(f"lost tasks by Redis state (or manifest status): {self.lost_states}")
        if self.lost_after_worker_restart is not None:
            still = len(self.lost_after_worker_restart)
            lines.append(f"after a clean restart of every worker pool: {still} still lost")
        lines.append("OK" if self.ok else f"FAIL: {'; '.join(self.failures)}")
        return "\n".join(lines)


def _reason_lines(title: str, reasons: dict[str, int]) -> list[str]:
    if not reasons:
        return []
    ordered = sorted(reasons.items(), key=lambda item: -item[1])
    return [f"{title}:", *(f"  {count:5d}  {reason}" for reason, count in ordered)]


# --- the stack, and how it is broken ---------------------------------------------------------


@dataclass(frozen=True)
class Disruption:
    #: Seconds after the first callback falls due.
    at_s: float
    kind: str
    pool: int = 0


class ChaosStack:
    """Redis, SeaweedFS, the ingress and the worker pools of one run, and the ways to break them."""

    def __init__(self, stack: ExitStack, config: ChaosConfig, out: Path) -> None:
        self.config = config
        self.out = out
        self.redis: RedisServer = start_redis(stack, out / "redis")
        #: One client for the run; it reconnects by itself after the restart.
        self.client = self.redis.client()
        self.s3: S3Server = start_s3(stack, out / "s3")
        self.env = mjhook_env(self.redis, self.s3, out, **CHAOS_ENV)
        ingress, base_url = start_ingress(self.env, out, extra_args=["--workers", "2"])
        stack.callback(ingress.terminate)
        self.callback_url = base_url + CALLBACK_PATH
        self._generation = [0] * config.pools
        self._broker_ids: list[set[str]] = [set() for _ in range(config.pools)]
        self.pools: list[ManagedProcess] = [self._start_pool(number) for number in range(config.pools)]
        stack.callback(self.stop_pools)

    def _start_pool(self, number: int) -> ManagedProcess:
        log_dir = self.out / f"pool{number}-gen{self._generation[number]}"
        before = registered_workers(self.client)
        pool = start_workers(
            self.env, log_dir, processes=1, threads=self.config.threads, timeout_s=WORKER_START_TIMEOUT_S
        )
        # A worker process registers its broker id at boot, before it says it is ready.
        self._broker_ids[number] = registered_workers(self.client) - before
        return pool

    def in_flight(self, number: int) -> int:
        """Messages the pool has taken and not acknowledged (delayed ones included)."""
        return sum(
            int(self.client.scard(keys.broker_acks(BROKER_NAMESPACE, broker_id, queue)))
            for broker_id in self._broker_ids[number]
            for queue in (CALLBACK_QUEUE, CALLBACK_QUEUE + ".DQ")
        )

    def delayed(self) -> int:
        """Messages waiting out a retry backoff (on the delay queue or held by a worker)."""
        return int(self.client.hlen(keys.broker_messages(BROKER_NAMESPACE, CALLBACK_QUEUE + ".DQ")))

    def kill_pool(self, number: int) -> str:
        """SIGKILL the pool's whole process group, as a crash would, once it holds messages (or
        after ``BUSY_WAIT_S``), and start a fresh pool. Says how many messages it held."""
        held = _wait_for_some(lambda: self.in_flight(number))
        self.pools[number].kill()
        self._generation[number] += 1
        self.pools[number] = self._start_pool(number)
        if held == 0:
            return f"no message in flight after {BUSY_WAIT_S:g} s: killed anyway"
        return f"{held} messages in flight"

    def restart_redis(self) -> str:
        """SIGTERM (the append-only file is flushed) once some retries wait out their backoff (or
        after ``BUSY_WAIT_S``), stay down a while, start again. Says how many retries waited."""
        delayed = _wait_for_some(self.delayed)
        self.redis.stop()
        time.sleep(self.config.redis_down_s)
        self.redis.start()
        return f"down {self.config.redis_down_s:g} s, {delayed} delayed retries pending"

    def s3_outage(self) -> str:
        """SIGKILL the store, stay down a while, start it again (waits until it takes PUTs)."""
        self.s3.kill()
        time.sleep(self.config.s3_down_s)
        self.s3.start()
        return f"down {self.config.s3_down_s:g} s + restart"

    def restart_pools(self) -> None:
        """Stop every pool cleanly and start it again."""
        for number, pool in enumerate(self.pools):
            pool.terminate()
            self._generation[number] += 1
            self.pools[number] = self._start_pool(number)

    def stop_pools(self) -> None:
        for pool in self.pools:
            pool.terminate()

    def store(self) -> ObjectStore:
        return ObjectStore(self.s3.client(), BUCKET)


def _wait_for_some(count: Callable[[], int]) -> int:
    """Poll ``count`` until it is above 0, at most ``BUSY_WAIT_S`` seconds; its last value."""
    deadline = time.monotonic() + BUSY_WAIT_S
    while (value := count()) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def plan_disruptions(config: ChaosConfig, rng: random.Random) -> list[Disruption]:
    """Worker kills anywhere in the send window; the Redis restarts in its second quarter, the
    store outages in its third, so the first callbacks are flowing and the queue is busy."""
    window = config.send_window_s
    plan = [
        Disruption(rng.uniform(0.1, 0.9) * window, "kill-workers", rng.randrange(config.pools))
        for _ in range(config.worker_kills)
    ]
    plan += [
        Disruption(rng.uniform(0.25, 0.5) * window, "restart-redis") for _ in range(config.redis_restarts)
    ]
    plan += [Disruption(rng.uniform(0.5, 0.75) * window, "s3-outage") for _ in range(config.s3_outages)]
    return sorted(plan, key=lambda disruption: disruption.at_s)


def run_disruptions(chaos: ChaosStack, plan: list[Disruption], started: float) -> list[dict[str, Any]]:
    """Carry out ``plan`` one after the other (a late one starts as soon as the previous ends)."""
    actions: dict[str, Callable[[Disruption], str]] = {
        "kill-workers": lambda d: chaos.kill_pool(d.pool),
        "restart-redis": lambda d: chaos.restart_redis(),
        "s3-outage": lambda d: chaos.s3_outage(),
    }
    done = []
    for disruption in plan:
        time.sleep(max(0.0, started + disruption.at_s - time.monotonic()))
        began = time.monotonic()
        what = disruption.kind + (f" pool {disruption.pool}" if disruption.kind == "kill-workers" else "")
        print(f"  {began - started:7.1f} s  {what}", file=sys.stderr, flush=True)
        detail = actions[disruption.kind](disruption)
        done.append(
            {"at_s": began - started, "what": f"{what}: {detail}", "took_s": time.monotonic() - began}
        )
    return done


# --- callbacks ----------------------------------------------------------------------------------


def start_simulator(stack: ExitStack, config: ChaosConfig) -> RunningSimulator:
    sim = run_simulator(
        SimulatorConfig(
            time_scale=config.time_scale,
            image_width=config.image_size,
            image_height=config.image_size,
            faults=config.seeded_faults,
        )
    )
    stack.callback(sim.stop)
    return sim


def submit_tasks(sim: RunningSimulator, config: ChaosConfig, callback_url: str) -> list[str]:
    """Submit every task now; their callbacks fall due ``rate_per_s`` per second from now."""
    return [
        sim.provider.submit(
            task_type=TASK_TYPE,
            params={"taskType": TASK_TYPE, "prompt": f"chaos {number}", "callBackUrl": callback_url},
            prompt={"prompt": f"chaos {number}", "model": "midjourney"},
            callback_url=callback_url,
            delay_s=number / config.rate_per_s,
        ).task_id
        for number in range(config.tasks)
    ]


def acknowledged_tasks(sim: RunningSimulator) -> set[str]:
    return {attempt.task_id for attempt in sim.attempts() if attempt.acknowledged}


# --- settling -----------------------------------------------------------------------------------


def wait_to_settle(chaos: ChaosStack, sim: RunningSimulator, deadline: float) -> bool:
    """Wait until no callback is pending at the simulator, the spool and the queue are empty and
    every acknowledged task has a final state; False if ``deadline`` (monotonic) came first."""
    client = chaos.client
    spool = Path(chaos.env["MJHOOK_SPOOL_DIR"])
    while time.monotonic() < deadline:
        try:
            quiet = sim.wait_idle(0) and _spool_empty(spool) and _queue_empty(client)
            if quiet and _all_final(client, acknowledged_tasks(sim)):
                return True
        except (redis.RedisError, OSError):
            pass  # not settled: ask again
        time.sleep(POLL_INTERVAL_S)
    return False


def _spool_empty(directory: Path) -> bool:
    return all(path.stat().st_size == 0 for path in directory.glob("spool-*.jsonl"))


def _queue_empty(client: redis.Redis) -> bool:
    pending = [keys.broker_messages(BROKER_NAMESPACE, q) for q in (CALLBACK_QUEUE, CALLBACK_QUEUE + ".DQ")]
    return all(client.hlen(key) == 0 for key in pending)


def _all_final(client: redis.Redis, task_ids: Iterable[str]) -> bool:
    return all(state in FINAL_STATES for state in redis_states(client, task_ids).values())


def redis_states(client: redis.Redis, task_ids: Iterable[str]) -> dict[str, str | None]:
    return {task_id: record.get("state") for task_id, record in redis_records(client, task_ids).items()}


def redis_records(client: redis.Redis, task_ids: Iterable[str]) -> dict[str, dict[str, str]]:
    """Each task's state record (empty when it has none)."""
    ids = list(task_ids)
    pipe = client.pipeline(transaction=False)
    for task_id in ids:
        pipe.hgetall(keys.task(task_id))
    return {
        task_id: {k.decode(): v.decode() for k, v in raw.items()}
        for task_id, raw in zip(ids, pipe.execute(), strict=True)
    }


class StoredWatch:
    """When the run first saw each acknowledged task ``stored`` in Redis (``stored_at``, Unix
    seconds from ``clock``), looking every ``interval_s`` seconds in a thread of its own. Redis
    says stored only after the manifest is written, and the time is taken after the answer: a
    file served after it was downloaded for a task already stored."""

    def __init__(
        self,
        *,
        read_states: Callable[[list[str]], Mapping[str, str | None]],
        acknowledged: Callable[[], set[str]],
        clock: Callable[[], float] = time.time,
        interval_s: float = STORED_POLL_S,
    ) -> None:
        self._read_states = read_states
        self._acknowledged = acknowledged
        self._clock = clock
        self._interval_s = interval_s
        self.stored_at: dict[str, float] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="chaos-stored-watch", daemon=True)

    def look(self) -> None:
        """Look once at the acknowledged tasks not seen stored yet."""
        states = self._read_states(sorted(self._acknowledged() - self.stored_at.keys()))
        seen = self._clock()
        self.stored_at.update({task_id: seen for task_id, state in states.items() if state == "stored"})

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop looking (at once, or after the look under way); safe to call again."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def _watch(self) -> None:
        while not self._stopped.wait(self._interval_s):
            with suppress(redis.RedisError, OSError):  # Redis restarting: look again next time
                self.look()


# --- the count ----------------------------------------------------------------------------------


@dataclass
class BucketView:
    """What the bucket holds for the run: each task's file keys by index, and its manifest."""

    files: dict[str, dict[int, list[str]]]
    manifests: dict[str, dict[str, Any]]


def read_bucket(store: ObjectStore, prefix: str) -> BucketView:
    files: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    manifest_keys: dict[str, str] = {}
    for key in store.list_keys(task_prefix(prefix).rstrip("/")):
        task_id, _, name = key.removeprefix("tasks/").partition("/")
        match = _FILE_NAME.fullmatch(name)
        if name == MANIFEST_NAME:
            manifest_keys[task_id] = key
        elif match:
            files[task_id][int(match[1])].append(key)
    with ThreadPoolExecutor(READ_THREADS) as pool:
        documents = dict(zip(manifest_keys, pool.map(store.get_json, manifest_keys.values()), strict=True))
    return BucketView(files=files, manifests={t: m for t, m in documents.items() if isinstance(m, dict)})


def stored_twice(bucket: BucketView) -> list[str]:
    """Tasks with two objects for one index, or a manifest naming one index twice."""
    twice = {
        task_id for task_id, by_index in bucket.files.items() if any(len(k) > 1 for k in by_index.values())
    }
    for task_id, manifest in bucket.manifests.items():
        indexes = [image["index"] for image in manifest.get("images", [])]
        if len(indexes) != len(set(indexes)):
            twice.add(task_id)
    return sorted(twice)


def verify_files(
    store: ObjectStore, sim: RunningSimulator, manifests: dict[str, dict[str, Any]]
) -> tuple[int, list[str]]:
    """Read every stored file back; (files checked, ``task/index`` of those whose bytes or
    manifest sha256 differ from what the simulator served)."""
    entries = [(task_id, image) for task_id, m in manifests.items() for image in m.get("images", [])]

    def matches(entry: tuple[str, dict[str, Any]]) -> bool:
        task_id, image = entry
        expected = hashlib.sha256(sim.expected_file(task_id, image["index"])).hexdigest()
        body = store.get_bytes(image["key"])
        return body is not None and image["sha256"] == expected == hashlib.sha256(body).hexdigest()

    with ThreadPoolExecutor(READ_THREADS) as pool:
        results = list(pool.map(matches, entries))
    bad = [
        f"{task_id}/{image['index']}" for (task_id, image), ok in zip(entries, results, strict=True) if not ok
    ]
    return len(entries), bad


def downloaded_again(
    serves: Mapping[tuple[str, int], list[float]], stored_at: Mapping[str, float]
) -> list[str]:
    """``task/index`` of the files served whole (``serves``: their request times) after their task
    was seen stored (``stored_at``: when; both Unix seconds): a download of a stored task. Those
    before, however many (retries, an attempt that died before its manifest), do not count."""
    return sorted(
        f"{task_id}/{index}"
        for (task_id, index), times in serves.items()
        if task_id in stored_at and any(t > stored_at[task_id] for t in times)
    )


def reason_group(reason: str) -> str:
    """A reason without what differs from task to task (URLs, file indexes), for counting."""
    reason = re.sub(r"https?://\S+", "<url>", reason)
    return re.sub(r"#\d+: ", "", reason).strip() or "(none)"


def error_reasons(manifest: Mapping[str, Any]) -> list[str]:
    """The reason of each of the manifest's errors, stripped ("" where it gives none)."""
    return [str(error.get("reason") or "").strip() for error in manifest.get("errors", [])]


def failure_reason(manifest: Mapping[str, Any] | None, record: Mapping[str, str]) -> str:
    """Why a failed task failed, "" when nothing says: "" too when some error of its manifest gives
    no reason; else the reason in Redis, else its errors', else the message of a failure report."""
    recorded = record.get("reason", "").strip()
    if manifest is None:
        return recorded
    errors = error_reasons(manifest)
    if not all(errors):
        return ""
    if recorded or errors:
        return recorded or "; ".join(errors)
    return str(manifest.get("msg") or "").strip() if manifest.get("code") != 200 else ""


def names_every_file(manifest: Mapping[str, Any], result_count: int) -> bool:
    """Whether the manifest accounts for the task's ``result_count`` files (indexes 0 .. count-1):
    stored lists each once as an image and has no error; partial names each once among images and
    errors, with at least one of both; failed stores none (its errors may name no file: a failure
    report, a task the queue gave up on)."""
    images = [image.get("index") for image in manifest.get("images", [])]
    errors = [error.get("index") for error in manifest.get("errors", [])]
    every_file = Counter(range(result_count))
    status = manifest.get("status")
    if status == "stored":
        return not errors and Counter(images) == every_file
    if status == "partial":
        return bool(images) and bool(errors) and Counter(images + errors) == every_file
    return not images


@dataclass
class Outcomes:
    by_status: Counter[str] = field(default_factory=Counter)
    failed_without_manifest: int = 0
    failed_reasons: Counter[str] = field(default_factory=Counter)
    partial_reasons: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    lost_states: Counter[str] = field(default_factory=Counter)
    incomplete: list[str] = field(default_factory=list)
    unexplained: list[str] = field(default_factory=list)
    disagreements: list[str] = field(default_factory=list)


def classify(
    acked: set[str],
    manifests: Mapping[str, Mapping[str, Any]],
    records: Mapping[str, Mapping[str, str]],
    result_counts: Mapping[str, int],
) -> Outcomes:
    """Where each acknowledged task ended: the status of its manifest in the bench's bucket, checked
    against the ``result_counts`` the simulator served (0 for a task absent); without one, failed
    if Redis says so with a reason; else lost."""
    found = Outcomes()
    for task_id in sorted(acked):
        manifest, record = manifests.get(task_id), records.get(task_id, {})
        if manifest is None:
            _classify_without_manifest(found, task_id, record)
        else:
            _classify_manifest(found, task_id, manifest, record, result_counts.get(task_id, 0))
    return found


def _classify_without_manifest(found: Outcomes, task_id: str, record: Mapping[str, str]) -> None:
    # The queue writes a failed manifest where it gives up, unless object storage is down: then
    # Redis alone shows the failure. Nothing else stands without a manifest.
    reason = failure_reason(None, record)
    if record.get("state") == "failed" and reason:
        found.by_status["failed"] += 1
        found.failed_without_manifest += 1
        found.failed_reasons[reason_group(reason)] += 1
    else:
        found.lost.append(task_id)
        found.lost_states[record.get("state") or "(none)"] += 1


def _classify_manifest(
    found: Outcomes, task_id: str, manifest: Mapping[str, Any], record: Mapping[str, str], result_count: int
) -> None:
    status = str(manifest.get("status"))
    if status not in FINAL_STATES:
        found.lost.append(task_id)
        found.lost_states[f"manifest {status}"] += 1
        return
    if record.get("state") != status:
        found.disagreements.append(task_id)
    if not names_every_file(manifest, result_count):
        found.incomplete.append(task_id)
        return
    found.by_status[status] += 1
    if status == "failed":
        reason = failure_reason(manifest, record)
        found.failed_reasons[reason_group(reason)] += 1
        if not reason:
            found.unexplained.append(task_id)
    elif status == "partial":
        reasons = error_reasons(manifest)
        found.partial_reasons.update(reason_group(reason) for reason in reasons)
        if not all(reasons):
            found.unexplained.append(task_id)


def held_delayed(client: redis.Redis) -> int:
    """Delay-queue messages some worker process fetched and has not acknowledged."""
    pattern = keys.broker_acks(BROKER_NAMESPACE, "*", CALLBACK_QUEUE + ".DQ")
    return sum(int(client.scard(key)) for key in client.scan_iter(match=pattern))


def dead_letter_count(client: redis.Redis) -> int:
    return int(client.zcard(keys.broker_dead(BROKER_NAMESPACE, CALLBACK_QUEUE)))


def result_counts(sim: RunningSimulator, task_ids: Iterable[str]) -> Counter[str]:
    """How many result files the simulator made for each of ``task_ids`` (none: a failed one)."""
    return Counter(task_id for task_id, _ in sim.provider.result_files(set(task_ids)))


def count_outcomes(
    chaos: ChaosStack,
    sim: RunningSimulator,
    task_ids: list[str],
    stored_at: Mapping[str, float],
    timing: dict[str, Any],
) -> ChaosReport:
    """The report: ``stored_at`` says when the run first saw each task stored (Unix seconds)."""
    attempts = sim.attempts()
    acked = acknowledged_tasks(sim)
    store = chaos.store()
    bucket = read_bucket(store, sim.provider.task_id_prefix)
    client = chaos.client
    records = redis_records(client, task_ids)
    outcomes = classify(acked, bucket.manifests, records, result_counts(sim, acked))
    verified, mismatches = verify_files(store, sim, bucket.manifests)
    return ChaosReport(
        sent=len(task_ids),
        acknowledged=len(acked),
        unacknowledged=len(set(task_ids) - acked),
        delivery_attempts=len(attempts),
        deliveries_acknowledged=sum(attempt.acknowledged for attempt in attempts),
        duplicates_sent=len({a.task_id for a in attempts if a.delivery == 1}),
        stored=outcomes.by_status["stored"],
        partial=outcomes.by_status["partial"],
        failed=outcomes.by_status["failed"],
        failed_without_manifest=outcomes.failed_without_manifest,
        failed_reasons=dict(outcomes.failed_reasons),
        partial_reasons=dict(outcomes.partial_reasons),
        lost=outcomes.lost,
        lost_states=dict(outcomes.lost_states),
        incomplete=outcomes.incomplete,
        stored_twice=stored_twice(bucket),
        downloaded_again=downloaded_again(sim.provider.whole_serves(), stored_at),
        seen_stored=len(stored_at),
        unexplained=outcomes.unexplained,
        files_verified=verified,
        sha256_mismatches=mismatches,
        state_disagreements=outcomes.disagreements,
        dead_letters=dead_letter_count(client),
        stranded_delayed=held_delayed(client),
        **timing,
    )


# --- the run ------------------------------------------------------------------------------------


def run_chaos(config: ChaosConfig) -> ChaosReport:
    """Start the stack and the simulator, send ``config.tasks`` callbacks while disrupting the
    stack as planned from ``config.seed``, wait for it to settle, and count what happened."""
    out = config.out_dir or run_dir("chaos")
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_disruptions(config, random.Random(config.seed))
    run_started = time.monotonic()
    with ExitStack() as stack:
        chaos = ChaosStack(stack, config, out)
        sim = start_simulator(stack, config)
        watch = StoredWatch(
            read_states=lambda ids: redis_states(chaos.client, ids),
            acknowledged=lambda: acknowledged_tasks(sim),
        )
        watch.start()
        stack.callback(watch.stop)
        task_ids = submit_tasks(sim, config, chaos.callback_url)
        started = time.monotonic()
        disruptions = run_disruptions(chaos, plan, started)
        calm_from = max(time.monotonic(), started + config.send_window_s)
        settled = wait_to_settle(chaos, sim, calm_from + config.settle_timeout_s)
        timing = {
            "settled": settled,
            "settle_s": time.monotonic() - calm_from,
            "duration_s": time.monotonic() - run_started,
            "disruptions": disruptions,
            "config": {**asdict(config), "faults": asdict(config.seeded_faults), "out_dir": str(out)},
        }
        watch.stop()
        with suppress(redis.RedisError, OSError):
            watch.look()  # the tasks stored since its last look
        report = count_outcomes(chaos, sim, task_ids, watch.stored_at, timing)
        if report.lost:
            report.lost_after_worker_restart = lost_after_worker_restart(chaos, sim, report.lost)
        return report


def lost_after_worker_restart(chaos: ChaosStack, sim: RunningSimulator, lost: list[str]) -> list[str]:
    """Restart every pool cleanly, wait for the lost tasks again, and say which are still lost."""
    chaos.restart_pools()
    # A stopped pool's unacknowledged messages come back after MJHOOK_REDELIVERY_S.
    wait_to_settle(chaos, sim, time.monotonic() + RECOVERY_TIMEOUT_S)
    present = read_bucket(chaos.store(), sim.provider.task_id_prefix).manifests
    records = redis_records(chaos.client, lost)
    return classify(set(lost), present, records, result_counts(sim, lost)).lost


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tasks", type=int, help=f"callbacks to send (default {SHORT.tasks}; --long {LONG.tasks})"
    )
    parser.add_argument("--long", action="store_true", help="the long form: 10,000 callbacks, more kills")
    parser.add_argument("--seed", type=int, default=SHORT.seed)
    parser.add_argument("--rate", type=float, help="callbacks falling due per second")
    parser.add_argument("--kills", type=int, help="worker pool kills")
    parser.add_argument("--time-scale", type=float, help="factor on the provider's retry schedule")
    parser.add_argument("--settle", type=float, help="longest wait for everything to end, seconds")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> ChaosConfig:
    base = LONG if args.long else SHORT
    changes = {
        "tasks": args.tasks,
        "rate_per_s": args.rate,
        "worker_kills": args.kills,
        "time_scale": args.time_scale,
        "settle_timeout_s": args.settle,
    }
    return replace(
        base, seed=args.seed, **{name: value for name, value in changes.items() if value is not None}
    )


@exit_on_sigterm
def main(argv: list[str] | None = None, *, run: Callable[[ChaosConfig], ChaosReport] = run_chaos) -> None:
    """Run (``run``: the chaos run itself unless a test says otherwise), save and print the report;
    exit with status 1 when the run failed, after saving it."""
    args = parse_args(argv)
    measured_on = machine()  # the load average before the run, not after it
    report = run(config_from_args(args))
    out = Path(report.config["out_dir"])
    (out / "chaos.json").write_text(json.dumps({"machine": measured_on, **report.to_dict()}, indent=2))
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format_text())
    failures = [f"chaos run: {'; '.join(report.failures)}"] if report.failures else []
    # With --json, stdout holds the report alone.
    with redirect_stdout(sys.stderr if args.json else sys.stdout):
        exit_if_failed(failures)


if __name__ == "__main__":
    main()
