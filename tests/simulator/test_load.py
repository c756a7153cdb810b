"""Load mode: callbacks at a steady rate, acknowledgements counted, manifests read back."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import httpx
import orjson
from click.testing import CliRunner

from cli.main import main
from shared.clock import utc_iso
from shared.errors import StorageUnavailable
from simulator import FaultConfig
from simulator.load import percentile, run_load
from simulator.tasks import SuccessFlag
from tests.simulator.support import Receiver, SimFactory


class FakeBucket:
    """Manifests for every task the receiver saw: all stored, but one partial."""

    def __init__(self, receiver: Receiver, partial: str) -> None:
        self._receiver = receiver
        self._partial = partial

    def _manifests(self) -> dict[str, dict[str, Any]]:
        manifests = {}
        for body in self._receiver.bodies():
            task_id = body["data"]["taskId"]
            status = "partial" if task_id == self._partial else "stored"
            manifests[f"tasks/{task_id}/manifest.json"] = {"status": status, "completedAt": _now_iso()}
        return manifests

    def list_keys(self, prefix: str) -> list[str]:
        return [key for key in self._manifests() if key.startswith(prefix)]

    def get_json(self, key: str) -> Any:
        return self._manifests().get(key)


class FailingBucket:
    """A bucket whose reads fail: the first ``failures`` of them, or all (None)."""

    def __init__(self, bucket: FakeBucket | None = None, *, failures: int | None = None) -> None:
        self._bucket = bucket
        self._failures = failures
        self.calls = 0

    def list_keys(self, prefix: str) -> list[str]:
        self.calls += 1
        if self._bucket is None or self._failures is None or self.calls <= self._failures:
            raise StorageUnavailable("object storage did not answer")
        return self._bucket.list_keys(prefix)

    def get_json(self, key: str) -> Any:
        return None if self._bucket is None else self._bucket.get_json(key)


def _now_iso() -> str:
    return utc_iso(time.time())


def _load_cli(*args: str) -> Any:
    """``mjhook simulate load`` with 8x8 images and no bucket; the JSON report."""
    result = CliRunner().invoke(
        main,
        ["simulate", "load", "--store-timeout", "0", "--width", "8", "--height", "8", "--json", *args],
    )
    assert result.exit_code == 0, result.output
    return orjson.loads(result.output)


def test_load_reports_acknowledgements_latency_and_stored_tasks(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    sim = make_sim(faults=FaultConfig(seed=1, drop_share=0.2))
    partial = f"{sim.provider.task_id_prefix}000001"
    report = run_load(
        sim,
        tasks=20,
        rate_per_s=200.0,
        callback_url=receiver.url,
        store=FakeBucket(receiver, partial),
        store_timeout_s=5.0,
    )

    delivered = len(receiver.bodies())
    assert report.tasks == 20
    assert report.dropped == 20 - delivered
    assert report.dropped > 0
    assert report.acknowledged == delivered
    assert report.unacknowledged == 0
    assert report.ack_throughput_per_s > 0
    assert 0 < report.ack_latency_p50_ms <= report.ack_latency_p99_ms
    assert report.manifests is not None
    assert report.manifests["stored"] + report.manifests["partial"] == delivered
    assert report.manifests["missing"] == 0
    assert "acknowledged" in report.format_text()


def test_load_counts_callbacks_never_acknowledged(make_sim: SimFactory, receiver: Receiver) -> None:
    sim = make_sim(time_scale=0.0001)
    receiver.default_status = 500
    report = run_load(sim, tasks=3, rate_per_s=100.0, callback_url=receiver.url)
    assert report.acknowledged == 0
    assert report.unacknowledged == 3
    assert report.callback_attempts == 12
    assert report.manifests is None
    assert report.settled


def test_load_says_when_retries_were_still_due(make_sim: SimFactory, receiver: Receiver) -> None:
    # Given retries 1, 5 and 15 minutes (x 0.01) after a refused callback, and a wait of 0.5 s
    sim = make_sim(time_scale=0.01)
    receiver.default_status = 500
    report = run_load(sim, tasks=2, rate_per_s=100.0, callback_url=receiver.url, settle_timeout_s=0.5)
    # Then the report says the retries (due 0.6 s after each first attempt) were not sent
    assert report.callback_attempts == 2
    assert not report.settled
    assert "not settled" in report.format_text()


def test_load_waits_for_the_duplicates_and_counts_them(make_sim: SimFactory, receiver: Receiver) -> None:
    # Given every task's callback is sent twice, the duplicate 0.2 s after the original
    sim = make_sim(faults=FaultConfig(duplicate_share=1.0))
    # When the load run returns
    report = run_load(sim, tasks=20, rate_per_s=100.0, callback_url=receiver.url)
    # Then both deliveries of every task have reached the receiver, and the report counts them
    sent = Counter(body["data"]["taskId"] for body in receiver.bodies())
    assert len(sent) == 20
    assert set(sent.values()) == {2}
    assert report.callback_attempts == 40
    assert report.acknowledged == 20
    assert report.unacknowledged == 0


def test_the_cli_prints_the_report_as_json(receiver: Receiver) -> None:
    report = _load_cli(
        "--tasks", "4", "--rate", "100", "--callback-url", receiver.url, "--download-grace", "0",
        "--concurrency", "3",
    )  # fmt: skip
    assert report["acknowledged"] == 4
    assert report["manifests"] is None
    assert report["delivery_threads"] == 3
    assert (report["result_files"], report["result_files_served"]) == (16, 0)


def test_the_cli_keeps_serving_result_files_until_mjhook_downloaded_them(receiver: Receiver) -> None:
    # Given a receiver that, like mjhook, acknowledges every callback first and downloads the
    # result files afterwards, once all callbacks arrived
    statuses: list[int | str] = []

    def download_later() -> None:
        bodies = [request.json() for request in receiver.wait_for(2)]
        time.sleep(0.3)  # after the last acknowledgement, when the command used to stop serving
        for url in (url for body in bodies for url in body["data"]["resultUrls"]):
            try:
                statuses.append(httpx.get(url, trust_env=False, timeout=5.0).status_code)
            except httpx.TransportError as exc:
                statuses.append(f"{type(exc).__name__}: {exc}")

    downloader = threading.Thread(target=download_later)
    downloader.start()
    # When the load runs without a bucket to wait for (--store-timeout 0)
    report = _load_cli("--tasks", "2", "--rate", "100", "--callback-url", receiver.url)
    downloader.join(10.0)
    # Then every download got its file, and the report counts them
    assert statuses == [200] * 8
    assert (report["result_files"], report["result_files_served"]) == (8, 8)
    assert report["acknowledged"] == 2


def test_the_cli_sizes_delivery_for_the_rate_so_slow_answers_do_not_hold_callbacks_back(
    receiver: Receiver,
) -> None:
    # Given a receiver that answers nothing until it holds 48 callbacks at once
    receiver.released.clear()
    all_held: list[bool] = []

    def release_when_all_arrived() -> None:
        try:
            receiver.wait_for(48, timeout_s=10.0)
            all_held.append(True)
        except AssertionError:
            all_held.append(False)
        finally:
            receiver.released.set()

    releaser = threading.Thread(target=release_when_all_arrived)
    releaser.start()
    # When 48 callbacks are fired at 100/s (no --concurrency)
    report = _load_cli(
        "--tasks", "48", "--rate", "100", "--callback-url", receiver.url, "--download-grace", "0"
    )
    releaser.join(15.0)
    # Then all 48 were in flight together: the delivery threads are sized for the rate
    assert all_held == [True]
    assert report["acknowledged"] == 48
    assert report["delivery_threads"] >= 48


def test_ack_latency_counts_from_when_each_callback_was_due(make_sim: SimFactory, receiver: Receiver) -> None:
    # Given one delivery thread, held by the first callback until all three tasks completed
    sim = make_sim(delivery_threads=1)
    receiver.released.clear()

    def release_when_all_completed() -> None:
        receiver.wait_for(1)
        while any(task.success_flag is SuccessFlag.GENERATING for task in sim.provider.tasks()):
            time.sleep(0.01)
        time.sleep(0.2)  # the other two callbacks wait for the thread meanwhile
        receiver.released.set()

    releaser = threading.Thread(target=release_when_all_completed)
    releaser.start()
    report = run_load(sim, tasks=3, rate_per_s=100.0, callback_url=receiver.url)
    releaser.join(10.0)

    # Then the two queued callbacks started after they were due, and the reported latency counts
    # from when each was due (the wait for the thread included), not from when it was sent
    attempts = sorted(sim.attempts(), key=lambda attempt: attempt.started_at)
    assert [attempt.started_at > attempt.due_at for attempt in attempts[1:]] == [True, True]
    from_due_ms = [(a.started_at + a.duration_s - a.due_at) * 1000 for a in attempts]
    assert report.ack_latency_p50_ms == percentile(from_due_ms, 0.5)
    assert report.ack_latency_p99_ms == percentile(from_due_ms, 0.99)
    assert report.delivery_threads == 1
    assert report.send_rate_per_s is not None
    assert "asked, sent at" in report.format_text()


def test_a_bucket_hiccup_while_waiting_for_manifests_is_tried_again(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    # Given a bucket whose first read fails, then answers
    sim = make_sim()
    bucket = FailingBucket(FakeBucket(receiver, partial=""), failures=1)
    # When a load run waits for the manifests
    report = run_load(
        sim, tasks=3, rate_per_s=100.0, callback_url=receiver.url, store=bucket, store_timeout_s=5.0
    )
    # Then the failed read was tried again and the manifests counted
    assert bucket.calls >= 2
    assert report.bucket_unavailable is None
    assert report.manifests is not None
    assert report.manifests["stored"] == 3


def test_a_bucket_failing_until_the_timeout_keeps_the_callback_report(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    # Given a bucket that never answers
    sim = make_sim()
    # When a load run waits for the manifests
    report = run_load(
        sim, tasks=3, rate_per_s=100.0, callback_url=receiver.url, store=FailingBucket(), store_timeout_s=1.0
    )
    # Then the callback figures are reported, and the bucket part says why it is missing
    assert report.acknowledged == 3
    assert report.manifests is None
    assert report.bucket_unavailable == "object storage did not answer"
    assert "bucket: unavailable (object storage did not answer)" in report.format_text()


def test_percentiles_use_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([], 0.5) == 0.0
