"""Load mode: callbacks at a steady rate, acknowledgements counted, manifests read back."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from click.testing import CliRunner, Result

from cli.main import main
from shared.clock import utc_iso
from shared.errors import StorageUnavailable
from simulator import FaultConfig, SimulatorConfig
from simulator.config import PROVIDER_RETRY_DELAYS_S
from simulator.load import percentile, run_load, settle_timeout_for
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


def _invoke_load(*args: str, env: Mapping[str, str] | None = None) -> Result:
    """``mjhook simulate load`` with 8x8 images, no bucket and a JSON report, seeing only the
    ``MJHOOK_*`` variables of ``env``."""
    overrides: dict[str, str | None] = {key: None for key in os.environ if key.startswith("MJHOOK_")}
    overrides.update(env or {})
    return CliRunner().invoke(
        main,
        ["simulate", "load", "--store-timeout", "0", "--width", "8", "--height", "8", "--json", *args],
        env=overrides,
    )


def _load_cli(*args: str, env: Mapping[str, str] | None = None) -> Any:
    """:func:`_invoke_load`, which must succeed; the JSON report."""
    result = _invoke_load(*args, env=env)
    assert result.exit_code == 0, result.output
    return orjson.loads(result.stdout)


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


def test_the_cli_issues_result_urls_under_the_public_url(receiver: Receiver) -> None:
    # Given a load run told the base URL clients reach its simulator at
    _load_cli(
        "--tasks", "1", "--rate", "100", "--callback-url", receiver.url, "--download-grace", "0",
        "--public-url", "http://127.0.0.1:9/sim",
    )  # fmt: skip
    # Then the result URLs of its callbacks are under it, not under the address it listens on
    [body] = receiver.bodies()
    urls = body["data"]["resultUrls"]
    assert len(urls) == 4
    assert all(url.startswith("http://127.0.0.1:9/sim/files/") for url in urls), urls


def test_the_cli_calls_back_mjhooks_public_url_when_no_callback_url_is_given(receiver: Receiver) -> None:
    # Given mjhook's settings name its public URL and callback token, and no --callback-url
    parts = urlsplit(receiver.url)
    env = {"MJHOOK_PUBLIC_URL": f"http://{parts.netloc}/", "MJHOOK_CALLBACK_TOKEN": "t0ken"}
    # When load runs
    report = _load_cli("--tasks", "2", "--rate", "100", "--download-grace", "0", env=env)
    # Then the callbacks go to the public URL's callback path, with the token, as mjhook submit's
    assert report["acknowledged"] == 2
    assert [request.path for request in receiver.requests] == ["/callbacks/midjourney?token=t0ken"] * 2
    assert report["callback_url"] == f"{receiver.url}?token=t0ken"


def test_the_cli_without_a_callback_url_or_public_url_says_which_to_give() -> None:
    result = _invoke_load("--tasks", "1", "--rate", "100")
    assert result.exit_code == 2, result.output
    assert "Missing option --callback-url" in result.stderr
    assert "MJHOOK_PUBLIC_URL" in result.stderr
    assert "Traceback" not in result.output


def test_the_cli_waits_by_default_long_enough_for_every_retry(receiver: Receiver) -> None:
    # Given the provider's retry schedule, 1, 5 and 15 minutes x --time-scale, and 15 s timeouts
    # When load runs without --settle-timeout
    report = _load_cli(
        "--tasks", "1", "--rate", "100", "--callback-url", receiver.url, "--download-grace", "0"
    )
    scaled = _load_cli(
        "--tasks", "1", "--rate", "100", "--callback-url", receiver.url, "--download-grace", "0",
        "--time-scale", "0.01", "--callback-timeout", "2",
    )  # fmt: skip
    # Then it would have waited for the last retry: the delays plus four whole timeouts
    assert report["settle_timeout_s"] >= sum(PROVIDER_RETRY_DELAYS_S) + 4 * 15.0
    assert scaled["settle_timeout_s"] >= sum(PROVIDER_RETRY_DELAYS_S) * 0.01 + 4 * 2.0
    assert scaled["settle_timeout_s"] < report["settle_timeout_s"]
    assert report["settled"]


def test_the_settle_timeout_covers_a_duplicate_and_its_retries() -> None:
    config = SimulatorConfig(
        time_scale=0.1, callback_timeout_s=3.0, faults=FaultConfig(duplicate_delay_s=0.5)
    )
    # The duplicate waits 0.5 s, then four attempts of 3 s with 6, 30 and 90 s between them
    assert settle_timeout_for(config) >= 0.5 + 4 * 3.0 + 6.0 + 30.0 + 90.0


def test_the_cli_names_its_provider_api_and_warns_when_mjhook_verifies_with_another(
    receiver: Receiver,
) -> None:
    # Given mjhook set to verify results with a provider of its own (make demo's `serve` on :8090)
    env = {"MJHOOK_PROVIDER_URL": "http://127.0.0.1:8090", "MJHOOK_PROVIDER_API_KEY": "sim-api-key"}
    # When load runs its own simulator
    result = _invoke_load(
        "--tasks", "1", "--rate", "100", "--callback-url", receiver.url, "--download-grace", "0",
        "--api-key", "load-key", env=env,
    )  # fmt: skip
    # Then it says where its API is, with which key, and that the workers would disown its tasks
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout)["acknowledged"] == 1
    assert "this run's provider API is http://127.0.0.1:" in result.stderr
    assert "Bearer load-key" in result.stderr
    assert "warning: MJHOOK_PROVIDER_URL is http://127.0.0.1:8090" in result.stderr
    assert "end them failed" in result.stderr


def test_the_cli_does_not_warn_when_mjhook_does_not_verify(receiver: Receiver) -> None:
    result = _invoke_load(
        "--tasks", "1", "--rate", "100", "--callback-url", receiver.url, "--download-grace", "0",
        env={"MJHOOK_PROVIDER_URL": "http://127.0.0.1:8090"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "this run's provider API is" in result.stderr
    assert "warning" not in result.stderr


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
