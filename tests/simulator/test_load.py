"""Load mode: callbacks at a steady rate, acknowledgements counted, manifests read back."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from click.testing import CliRunner, Result

from cli.main import main
from shared.clock import utc_iso
from shared.errors import StorageUnavailable
from simulator import FaultConfig, SimulatorConfig
from simulator.config import PROVIDER_RETRY_DELAYS_S
from simulator.load import (
    CallbackRun,
    LoadReport,
    fire_callbacks,
    percentile,
    read_bucket,
    run_load,
    settle_timeout_for,
)
from simulator.tasks import SuccessFlag
from tests.simulator.support import Receiver, SimFactory
from tests.support.procs import free_port


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
    # Given retries 1, 5 and 15 minutes (x 0.05) after a refused callback, and a wait of 0.5 s
    # (x 0.01 put the first retry 0.1 s past the wait's end: a wait noticed that late on a loaded
    # machine counted it)
    sim = make_sim(time_scale=0.05)
    receiver.default_status = 500
    report = run_load(sim, tasks=2, rate_per_s=100.0, callback_url=receiver.url, settle_timeout_s=0.5)
    # Then the report says the retries (due 3 s after each first attempt) were not sent
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
    assert "bucket: unavailable at the end (object storage did not answer)" in report.format_text()


def test_percentiles_use_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([], 0.5) == 0.0


def test_ack_throughput_is_over_first_attempts_and_task_latency_waits_for_retries(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    # Given 20 callbacks at 200/s, the first answered 500: its retry is due 1 minute x 0.01 later
    sim = make_sim(time_scale=0.01)
    receiver.script = [500]
    # When the load run returns
    report = run_load(sim, tasks=20, rate_per_s=200.0, callback_url=receiver.url)
    # Then the throughput counts the first attempts acknowledged over the span of their answers,
    # N answers being N-1 intervals as for the send rate, not the retry's wait (which the span of
    # every acknowledgement would include)
    attempts = sim.attempts()
    firsts = [a for a in attempts if a.attempt == 1]
    retried = [a for a in attempts if a.attempt == 2]
    assert len(firsts) == 20
    assert len(retried) == 1
    assert retried[0].acknowledged
    first_acks = [a for a in firsts if a.acknowledged]
    span = max(a.started_at + a.duration_s for a in first_acks) - min(a.started_at for a in firsts)
    assert report.send_duration_s == span
    assert report.ack_throughput_per_s == 18 / span
    assert report.send_duration_s < retried[0].started_at - min(a.started_at for a in firsts)
    # And the retried task's latency, from when its callback was first due to its acknowledgement,
    # holds the wait for the retry (due 0.6 s after the first attempt), which the per-attempt
    # figure leaves out
    waited_ms = {a.task_id: (a.started_at + a.duration_s - a.due_at) * 1000 for a in firsts if a.acknowledged}
    [refused] = [a for a in firsts if not a.acknowledged]
    waited_ms[refused.task_id] = (retried[0].started_at + retried[0].duration_s - refused.due_at) * 1000
    assert waited_ms[refused.task_id] >= PROVIDER_RETRY_DELAYS_S[0] * 0.01 * 1000
    assert report.task_latency_p99_ms == percentile(list(waited_ms.values()), 0.99)
    assert report.task_latency_p99_ms == waited_ms[refused.task_id]
    assert report.ack_latency_p99_ms is not None
    assert report.ack_latency_p99_ms < waited_ms[refused.task_id]


def test_the_ack_throughput_counts_intervals_between_answers_as_the_send_rate_does(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    # Given a receiver that answers at once, and 3 callbacks sent at 2/s
    sim = make_sim()
    # When the load run returns
    report = run_load(sim, tasks=3, rate_per_s=2.0, callback_url=receiver.url)
    # Then the acknowledgement rate is 2 intervals over the span from the first send to the last
    # answer, as the send rate is 2 over the span of the sends: not 3 answers over it, which reads
    # an instant receiver as acknowledging faster than the callbacks were sent
    firsts = [a for a in sim.attempts() if a.attempt == 1]
    assert [a.acknowledged for a in firsts] == [True] * 3
    answers = [a.started_at + a.duration_s for a in firsts]
    starts = [a.started_at for a in firsts]
    assert report.send_rate_per_s == 2 / (max(starts) - min(starts))
    assert report.ack_throughput_per_s == 2 / (max(answers) - min(starts))
    assert report.ack_throughput_per_s <= report.send_rate_per_s
    assert f"acknowledged in {report.send_duration_s:.2f} s, at {report.ack_throughput_per_s:.1f}/s" in (
        report.format_text()
    )


def test_with_one_task_or_none_acknowledged_the_figures_say_n_a_not_zero(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    # Given one task acknowledged: no span to measure a throughput over
    one = run_load(make_sim(), tasks=1, rate_per_s=1.0, callback_url=receiver.url)
    # And a run where no callback is acknowledged
    receiver.default_status = 500
    none = run_load(make_sim(time_scale=0.0001), tasks=2, rate_per_s=100.0, callback_url=receiver.url)
    # Then the figures that do not exist are None in the report, and n/a in its text
    assert (one.acknowledged, one.send_duration_s, one.ack_throughput_per_s) == (1, None, None)
    assert one.ack_latency_p50_ms is not None
    assert "acknowledged in n/a, at n/a" in one.format_text()
    assert none.acknowledged == 0
    assert (none.ack_latency_p50_ms, none.ack_latency_p99_ms, none.ack_throughput_per_s) == (None, None, None)
    assert (none.task_latency_p50_ms, none.task_latency_p99_ms) == (None, None)
    assert "p50 n/a, p99 n/a per attempt" in none.format_text()
    assert "problem: 2 of 2 callbacks never acknowledged" in none.format_text()


def test_a_task_stored_though_its_callback_was_not_seen_acknowledged_is_counted(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    # Given a receiver that refuses every callback of one task (mjhook answering after the
    # callback timeout, say), though that task ends stored too
    sim = make_sim(time_scale=0.0001)
    refused = f"{sim.provider.task_id_prefix}000001"
    receiver.script = [200]  # the first task's callback, due 100 ms before the second's
    receiver.default_status = 500
    report = run_load(
        sim,
        tasks=2,
        rate_per_s=10.0,
        callback_url=receiver.url,
        store=FakeBucket(receiver, partial=""),
        store_timeout_s=5.0,
    )
    # Then the bucket's count has every task of the run with a manifest, the refused one said apart
    assert {a.task_id for a in sim.attempts() if not a.acknowledged} == {refused}
    assert report.acknowledged == 1
    assert report.manifests is not None
    assert (report.manifests["stored"], report.manifests["missing"]) == (2, 0)
    assert report.manifests_unacknowledged == 1
    assert report.stored_throughput_per_s is not None
    text = report.format_text()
    assert "1 of them of tasks whose callback was not seen acknowledged" in text
    assert f"= {report.stored_throughput_per_s:.1f} stored/s" in text


class PartlyReadBucket:
    """A bucket that lists one task's manifest once, then fails every read."""

    def __init__(self, bucket: FakeBucket) -> None:
        self._bucket = bucket
        self._listed_one = False

    def list_keys(self, prefix: str) -> list[str]:
        if self._listed_one:
            raise StorageUnavailable("object storage did not answer")
        keys = self._bucket.list_keys(prefix)[:1]
        self._listed_one = bool(keys)
        return keys

    def get_json(self, key: str) -> Any:
        return self._bucket.get_json(key)


def test_manifests_read_before_the_bucket_failed_are_kept(make_sim: SimFactory, receiver: Receiver) -> None:
    # Given a bucket that answered with one task's manifest, then failed until the timeout
    sim = make_sim()
    bucket = PartlyReadBucket(FakeBucket(receiver, partial=""))
    # When a load run of 3 tasks waits for their manifests
    report = run_load(
        sim, tasks=3, rate_per_s=100.0, callback_url=receiver.url, store=bucket, store_timeout_s=1.0
    )
    # Then what was read is reported beside the failure, not dropped, and the tasks not read are
    # unread, not missing (their manifests are there): the one problem is the bucket
    assert report.bucket_unavailable == "object storage did not answer"
    assert report.manifests is not None
    assert (report.manifests["stored"], report.manifests["unread"]) == (1, 2)
    assert "missing" not in report.manifests
    assert report.problems == ["the bucket could not be read: object storage did not answer"]
    assert "bucket: unavailable at the end (object storage did not answer); what was read before:" in (
        report.format_text()
    )


class RefusingBucket:
    """A bucket refusing this client (wrong credentials): no outage, asking again changes nothing."""

    def list_keys(self, prefix: str) -> list[str]:
        raise PermissionError("SignatureDoesNotMatch")

    def get_json(self, key: str) -> Any:
        raise PermissionError("SignatureDoesNotMatch")


def test_a_bucket_refusing_the_client_stops_the_run_before_any_callback(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    sim = make_sim()
    with pytest.raises(PermissionError, match="SignatureDoesNotMatch"):
        run_load(sim, tasks=3, rate_per_s=100.0, callback_url=receiver.url, store=RefusingBucket())
    assert sim.provider.tasks() == []
    assert receiver.requests == []


def test_the_cli_exits_1_when_callbacks_were_not_acknowledged() -> None:
    # Given a callback URL nothing listens on
    url = f"http://127.0.0.1:{free_port()}/callbacks/midjourney"
    # When the load runs against it
    result = _invoke_load(*("--tasks", "2", "--rate", "100", "--time-scale", "0.0001", "--callback-url", url))
    # Then it still prints its report, and its exit status says the run did not do its work
    assert result.exit_code == 1, result.output
    report = orjson.loads(result.stdout)
    assert (report["acknowledged"], report["unacknowledged"]) == (0, 2)
    assert report["problems"] == ["2 of 2 callbacks never acknowledged"]


@pytest.mark.parametrize("option", ["--rate", "--time-scale", "--settle-timeout", "--callback-timeout"])
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_the_cli_refuses_a_number_that_is_not_finite(option: str, value: str) -> None:
    result = _invoke_load("--callback-url", "http://127.0.0.1:9/cb", option, value)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output


class ProcessingBucket:
    """Manifests written as mjhook writes them: one per callback the receiver got, ``lag_s``
    seconds after it arrived (None: the first callback's only), each replacing the task's last,
    with that callback's ``receivedAt``: ``partial`` for a task's first, ``stored`` for the next."""

    def __init__(self, receiver: Receiver, *, lag_s: float | None) -> None:
        self._receiver = receiver
        self._lag_s = lag_s
        self._wall_minus_monotonic = time.time() - time.monotonic()

    def _manifests(self) -> dict[str, dict[str, Any]]:
        manifests: dict[str, dict[str, Any]] = {}
        seen: Counter[str] = Counter()
        for request in sorted(self._receiver.requests, key=lambda request: request.at):
            task_id = request.json()["data"]["taskId"]
            seen[task_id] += 1
            processed = self._lag_s is not None and time.monotonic() >= request.at + self._lag_s
            if seen[task_id] == 1 or processed:
                manifests[f"tasks/{task_id}/manifest.json"] = {
                    "status": "partial" if seen[task_id] == 1 else "stored",
                    "receivedAt": utc_iso(request.at + self._wall_minus_monotonic),
                    "completedAt": _now_iso(),
                }
        return manifests

    def list_keys(self, prefix: str) -> list[str]:
        return [key for key in self._manifests() if key.startswith(prefix)]

    def get_json(self, key: str) -> Any:
        return self._manifests().get(key)


def test_a_partial_task_a_duplicate_completes_is_reported_stored(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    # Given tasks whose callbacks come twice, the first ending partial and the duplicate, which
    # mjhook processes 1.5 s after acknowledging it (past the load's settling), completing them;
    # the duplicate sent a second after the first (the default 0.2 s: a first delivery stalled
    # that long on a loaded machine arrives after its duplicate was sent, and its manifest is
    # taken as final; see simulator.load._Wanted)
    sim = make_sim(faults=FaultConfig(duplicate_share=1.0, duplicate_delay_s=1.0))
    bucket = ProcessingBucket(receiver, lag_s=1.5)
    # When the load reads the bucket
    report = run_load(
        sim, tasks=3, rate_per_s=100.0, callback_url=receiver.url, store=bucket, store_timeout_s=10.0
    )
    # Then it waited for the manifests of the duplicates, not the first ones it found
    assert report.manifests == {"stored": 3, "partial": 0, "failed": 0, "missing": 0}
    assert (report.manifests_outdated, report.problems) == (0, [])


def test_a_manifest_older_than_the_last_acknowledged_callback_is_a_problem() -> None:
    # Given three tasks whose success callback was acknowledged twice, the last sent at `resent`:
    # two with partial manifests written for the first callback only (received 2 ms before the
    # last was sent, past the 1 ms a receivedAt's resolution allows), one with a partial manifest
    # written for the last one (received as it was sent: final, the duplicate changed nothing)
    resent = time.time()
    first = {"status": "partial", "receivedAt": utc_iso(resent - 0.002), "completedAt": utc_iso(resent)}
    last = {"status": "partial", "receivedAt": utc_iso(resent), "completedAt": utc_iso(resent + 0.1)}
    bucket = ManifestsOf({"t-1": first, "t-2": first, "t-3": last})
    tasks = frozenset({"t-1", "t-2", "t-3"})
    run = CallbackRun(
        report=bare_report("http://127.0.0.1:9/callbacks/midjourney", tasks=3, acknowledged=3),
        task_ids=tasks,
        acknowledged=tasks,
        listing="tasks/t-",
        started_at=resent - 0.3,
        resent_at=dict.fromkeys(tasks, resent),
    )
    # When the run's report reads the bucket until its timeout (one read)
    report = read_bucket(run, bucket, timeout_s=0.0)
    # Then the partial manifests are counted, and the two older ones said to be older than a
    # callback acknowledged
    assert report.manifests == {"stored": 0, "partial": 3, "failed": 0, "missing": 0}
    assert report.manifests_outdated == 2
    assert report.problems == [
        "2 manifests older than their task's last acknowledged callback"
        " (not processed by the end of the wait)"
    ]
    assert orjson.loads(orjson.dumps(report.to_dict()))["manifests_outdated"] == 2


def test_only_success_callbacks_acknowledged_twice_are_waited_for_again(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    # Given every task called back twice, every other one a failed generation (mjhook ignores a
    # failure report of a task that has an outcome: its first manifest stands)
    sim = make_sim(faults=FaultConfig(duplicate_share=1.0, failure_share=0.5, seed=3))
    run = fire_callbacks(sim, tasks=6, rate_per_s=100.0, callback_url=receiver.url)
    # Then the run keeps, for the successes only, when their last callback was sent
    failed = {task.task_id for task in sim.provider.tasks() if task.faults.fails}
    assert failed
    assert failed < run.task_ids
    assert run.resent_at.keys() == run.task_ids - failed
    for task_id, sent_at in run.resent_at.items():
        attempts = sim.attempts(task_id)
        assert sent_at == max(attempt.sent_at for attempt in attempts)
        assert sent_at > min(attempt.sent_at for attempt in attempts)
    # And a running simulator describes the run with them (``load --simulator-url``)
    assert CallbackRun.from_json(orjson.dumps(run.to_dict())) == run


def bare_report(callback_url: str, **fields: Any) -> LoadReport:
    """A load report of no callbacks to ``callback_url``, with ``fields`` on top."""
    return replace(
        LoadReport(
            tasks=0,
            rate_per_s=1.0,
            callback_url=callback_url,
            acknowledged=0,
            unacknowledged=0,
            dropped=0,
            callback_attempts=0,
            send_duration_s=None,
            ack_throughput_per_s=None,
            ack_latency_p50_ms=None,
            ack_latency_p99_ms=None,
        ),
        **fields,
    )


class ManifestsOf:
    """A bucket holding one manifest per task: ``{task_id: manifest}``."""

    def __init__(self, manifests: Mapping[str, dict[str, Any]]) -> None:
        self._by_key = {f"tasks/{task_id}/manifest.json": manifest for task_id, manifest in manifests.items()}

    def list_keys(self, prefix: str) -> list[str]:
        return [key for key in self._by_key if key.startswith(prefix)]

    def get_json(self, key: str) -> Any:
        return self._by_key.get(key)


def test_a_status_mjhook_does_not_write_is_counted_as_other() -> None:
    # Given a run's tasks in a bucket: one stored, the others with a status that is terminal
    # controls, a megabyte of text, no text, or none
    hostile = "\x1b]0;pwned\x07\x1b[2J"
    statuses = {"t-1": "stored", "t-2": hostile, "t-3": "x" * 1_000_000, "t-4": ["failed"], "t-5": None}
    bucket = ManifestsOf({task_id: {"status": status} for task_id, status in statuses.items()})
    report = bare_report("http://127.0.0.1:9/callbacks/midjourney")
    run = CallbackRun(
        report=report,
        task_ids=frozenset(statuses),
        acknowledged=frozenset(statuses),
        listing="tasks/t-",
        started_at=0.0,
    )
    # When the run's report reads the bucket
    report = read_bucket(run, bucket, timeout_s=1.0)
    # Then those statuses are counted together as "other": each was a label of its own, printed
    # as it was, and a key of the JSON report
    assert report.manifests == {"stored": 1, "partial": 0, "failed": 0, "other": 4, "missing": 0}
    assert "bucket: 1 stored, 0 partial, 0 failed, 4 other, 0 missing" in report.format_text()
    assert hostile not in report.format_text()


class RerunBucket:
    """The manifests mjhook wrote a day ago for ``task_ids`` (the same taskIds in an earlier run),
    each replaced by this run's, ``stored``, once ``lag_s`` seconds passed after the receiver got
    its callback (None: never: mjhook saw a task it had stored, and changed nothing), its
    ``receivedAt`` on a clock ``skew_s`` seconds off the simulator's."""

    def __init__(
        self, receiver: Receiver, task_ids: list[str], *, lag_s: float | None, skew_s: float = 0.0
    ) -> None:
        self._receiver = receiver
        self._lag_s = lag_s
        self._skew_s = skew_s
        self._wall_minus_monotonic = time.time() - time.monotonic()
        day_ago = utc_iso(time.time() - 86_400)
        self._earlier = {
            task_id: {"status": "stored", "receivedAt": day_ago, "completedAt": day_ago}
            for task_id in task_ids
        }

    def _manifests(self) -> dict[str, dict[str, Any]]:
        manifests = dict(self._earlier)
        for request in self._receiver.requests:
            if self._lag_s is not None and time.monotonic() >= request.at + self._lag_s:
                manifests[request.json()["data"]["taskId"]] = {
                    "status": "stored",
                    "receivedAt": utc_iso(request.at + self._wall_minus_monotonic + self._skew_s),
                    "completedAt": _now_iso(),
                }
        return {f"tasks/{task_id}/manifest.json": manifest for task_id, manifest in manifests.items()}

    def list_keys(self, prefix: str) -> list[str]:
        return [key for key in self._manifests() if key.startswith(prefix)]

    def get_json(self, key: str) -> Any:
        return self._manifests().get(key)


def test_a_manifest_from_an_earlier_run_is_not_this_runs_outcome(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    # Given a simulator numbering its tasks from a fixed prefix, and a bucket holding the manifests
    # mjhook wrote a day ago for the same taskIds (that simulator's earlier run), which it keeps
    sim = make_sim(task_id_prefix="demo-")
    bucket = RerunBucket(receiver, ["demo-000000", "demo-000001"], lag_s=None)
    # When a load run of two tasks reads the bucket until its timeout
    report = run_load(
        sim, tasks=2, rate_per_s=10.0, callback_url=receiver.url, store=bucket, store_timeout_s=1.0
    )
    # Then neither counts as this run's task stored: both are said to be an earlier run's, and that
    # is a problem (the command exits 1), not a run with nothing amiss
    assert report.acknowledged == 2
    assert report.manifests == {"stored": 0, "partial": 0, "failed": 0, "stale": 2, "missing": 0}
    assert (report.manifests_outdated, report.manifests_unacknowledged) == (0, 0)
    assert (report.store_duration_s, report.stored_throughput_per_s) == (None, None)
    assert report.problems == [
        "2 tasks whose manifest is from an earlier run (received before this run started: the same"
        " taskIds, a `serve --task-id-prefix` run again?)"
    ]
    assert "bucket: 0 stored, 0 partial, 0 failed, 2 stale, 0 missing" in report.format_text()


def test_a_manifest_from_an_earlier_run_is_waited_on_until_this_runs_replaces_it(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    # Given a bucket holding an earlier run's manifest of the run's one task until mjhook processed
    # this run's callback, a second after it came
    sim = make_sim(task_id_prefix="demo-")
    bucket = RerunBucket(receiver, ["demo-000000"], lag_s=1.0)
    # When a load run reads the bucket
    report = run_load(
        sim, tasks=1, rate_per_s=10.0, callback_url=receiver.url, store=bucket, store_timeout_s=10.0
    )
    # Then it waited for this run's manifest, and counts that one
    assert report.manifests == {"stored": 1, "partial": 0, "failed": 0, "missing": 0}
    assert report.problems == []


def test_a_manifest_of_this_run_on_a_clock_a_little_behind_is_this_runs(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    # Given mjhook's clock 5 s behind the load runner's: its manifest of the run's first task says
    # it was received before the run started, by the runner's clock
    sim = make_sim(task_id_prefix="demo-")
    bucket = RerunBucket(receiver, [], lag_s=0.0, skew_s=-5.0)
    # When a load run reads the bucket
    report = run_load(
        sim, tasks=1, rate_per_s=10.0, callback_url=receiver.url, store=bucket, store_timeout_s=5.0
    )
    # Then it is this run's, stored: no earlier run wrote it (it was counted stale)
    assert report.manifests == {"stored": 1, "partial": 0, "failed": 0, "missing": 0}
    assert report.problems == []
