"""Load mode: callbacks at a steady rate, acknowledgements counted, manifests read back."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson
from click.testing import CliRunner

from cli.main import main
from shared.clock import utc_iso
from simulator import FaultConfig
from simulator.load import percentile, run_load
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


def _now_iso() -> str:
    return utc_iso(time.time())


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
    result = CliRunner().invoke(
        main,
        [
            "simulate", "load",
            "--tasks", "4", "--rate", "100",
            "--callback-url", receiver.url,
            "--store-timeout", "0",
            "--width", "8", "--height", "8",
            "--json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.output)
    assert report["acknowledged"] == 4
    assert report["manifests"] is None


def test_percentiles_use_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([], 0.5) == 0.0
