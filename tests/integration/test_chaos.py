"""The chaos run (bench/chaos.py), short form: callbacks from the provider simulator while a worker
pool is SIGKILLed, Redis restarts and the object store is down; nothing acknowledged may be lost,
left incomplete or unexplained, stored twice or downloaded again. Plus the smallest reproduction
of what the chaos run found: a retry waiting out its backoff in a worker when Redis restarted was
stranded until that worker process exited (dramatiq's consumer drops its in-memory delay queue on
a connection error; workers/stranded.py now hands such messages back)."""

from __future__ import annotations

import importlib.util
import re
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from shared import keys
from tests.support.pipeline import callback, post_callback, read_manifest, wait_for
from tests.support.servers import FileServer, png_bytes
from tests.support.stack import start_ingress, start_workers

pytestmark = pytest.mark.integration

CHAOS_PATH = Path(__file__).resolve().parents[2] / "bench" / "chaos.py"
#: Longer than dramatiq's idle poll (1 s), so every consumer meets the outage.
REDIS_DOWN_S = 2.0
#: How a pool kill reads in the report: with messages in flight, or the fallback after waiting.
POOL_KILL = re.compile(
    r"kill-workers pool \d: ([1-9]\d* messages in flight|no message in flight .* killed anyway)"
)


def load_chaos() -> ModuleType:
    """bench/chaos.py, loaded from its path (bench/ is scripts, not an installed package)."""
    spec = importlib.util.spec_from_file_location("bench_chaos", CHAOS_PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


chaos = load_chaos()


def test_nothing_acknowledged_is_lost_or_stored_twice_while_the_stack_is_broken(tmp_path: Path) -> None:
    # Given 30 tasks whose callbacks (10% failures, 10% sent twice, some faulty result files) fall
    # due 6 a second, while one worker pool is SIGKILLed, Redis restarts and S3 is down 3 s
    config = chaos.ChaosConfig(
        tasks=30,
        rate_per_s=6.0,
        worker_kills=1,
        redis_restarts=1,
        s3_outages=1,
        s3_down_s=3.0,
        settle_timeout_s=60.0,
        out_dir=tmp_path,
    )
    # When the run has settled
    report = chaos.run_chaos(config)
    summary = report.format_text()
    # Then the stack was broken as planned: a pool killed (holding messages, or saying it held
    # none), Redis restarted, the store down
    whats = [event["what"] for event in report.disruptions]
    kinds = sorted(what.split(" ")[0].rstrip(":") for what in whats)
    assert kinds == ["kill-workers", "restart-redis", "s3-outage"], summary
    assert any(POOL_KILL.fullmatch(what) for what in whats), summary
    assert report.settled, summary
    # And the ingress acknowledged every callback
    assert report.acknowledged == report.sent == 30, summary
    assert report.unacknowledged == 0, summary
    # And every acknowledged task ended stored, partial or failed, each failure with its reason,
    # the printed counts adding up to the acknowledged tasks
    assert report.lost == [], summary
    assert report.incomplete == [], summary
    counted = report.stored + report.partial + report.failed + len(report.lost) + len(report.incomplete)
    assert counted == report.acknowledged, summary
    assert report.unexplained == [], summary
    assert report.dead_letters == 0, summary
    # And no file was stored twice or downloaded again once stored, and every stored file has the
    # bytes the provider served
    assert report.stored_twice == [], summary
    assert report.seen_stored >= report.stored - len(report.state_disagreements), summary
    assert report.downloaded_again == [], summary
    assert report.sha256_mismatches == [], summary
    assert report.files_verified > 0, summary
    assert report.ok, summary


def test_a_retry_waiting_out_its_backoff_survives_a_redis_restart(
    aof_app_env: dict[str, str],
    aof_redis_server: Any,
    s3_server: Any,
    s3_bucket: str,
    tmp_path: Path,
    file_server: FileServer,
) -> None:
    redis = aof_redis_server
    env = {
        **aof_app_env,
        "MJHOOK_MIN_BACKOFF_MS": "2000",
        "MJHOOK_MAX_BACKOFF_MS": "4000",
        "MJHOOK_REDELIVERY_S": "4",
        "MJHOOK_LEASE_TTL_S": "4",
        "MJHOOK_SPOOL_DIR": str(tmp_path / "spool"),
        "MJHOOK_WORKER_METRICS_PORT": "0",
    }
    image = png_bytes(31)
    url = file_server.add("/stranded.png", b"busy", status=503, content_type="text/plain")
    ingress, base_url = start_ingress(env, tmp_path, extra_args=["--workers", "1"])
    workers = start_workers(env, tmp_path, processes=1, threads=2)
    client = redis.client()
    try:
        # Given a task whose file answered 503, so its message waits out a retry backoff in the
        # worker (fetched from the delay queue, not yet due)
        with httpx.Client(base_url=base_url, timeout=10) as http:
            assert post_callback(http, callback("stranded-1", [url])).status_code == 200
        wait_for(lambda: chaos.held_delayed(client) == 1, timeout_s=30, what="the retry held by the worker")
        file_server.add("/stranded.png", image)
        # When Redis restarts (a clean stop: the append-only file keeps every message), down long
        # enough for the worker to notice (a quick restart is hidden by the client's reconnect)
        redis.stop()
        time.sleep(REDIS_DOWN_S)
        redis.start()
        # Then the retry still runs once due, and the task is stored
        manifest = poll_manifest(s3_server, s3_bucket, "stranded-1", timeout_s=30)
        state = client.hget(keys.task("stranded-1"), "state")
        assert manifest is not None, (
            f"task state {state!r}; {chaos.held_delayed(client)} delayed message(s) held in the ack set of "
            f"a live worker (dramatiq's consumer drops its in-memory delay queue on a connection error)"
        )
        assert manifest["status"] == "stored"
    finally:
        workers.terminate()
        ingress.terminate()


def poll_manifest(s3_server: Any, bucket: str, task_id: str, *, timeout_s: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        manifest = read_manifest(s3_server.client(), bucket, task_id)
        if manifest is not None:
            return manifest
        time.sleep(0.2)
    return None
