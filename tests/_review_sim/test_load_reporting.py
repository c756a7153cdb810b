"""Load mode: what the report says and what the run leaves behind."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from click.testing import CliRunner

from cli.main import main
from shared.errors import StorageUnavailable
from simulator.load import run_load
from tests.simulator.support import Receiver, SimFactory


class FlakyBucket:
    """A bucket that answers the first listing, then has a hiccup."""

    def __init__(self) -> None:
        self.calls = 0

    def list_keys(self, prefix: str) -> list[str]:
        self.calls += 1
        if self.calls > 1:
            raise StorageUnavailable("object storage did not answer")
        return []

    def get_json(self, key: str) -> Any:
        return None


def test_a_bucket_hiccup_while_waiting_for_manifests_does_not_throw_away_the_callback_report(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    # Every callback was sent and acknowledged; then one listing of the bucket fails. The run
    # raises, and `mjhook simulate load` prints only "object storage unavailable": the
    # acknowledgement counts and latencies of the whole run are lost.
    sim = make_sim()
    report = run_load(
        sim, tasks=3, rate_per_s=100.0, callback_url=receiver.url, store=FlakyBucket(), store_timeout_s=2.0
    )
    assert report.acknowledged == 3


def test_store_timeout_0_still_lets_mjhook_download_the_results_it_was_called_back_with(
    receiver: Receiver,
) -> None:
    # mjhook acknowledges a callback once it is queued and downloads the files afterwards. With
    # --store-timeout 0 the command stops the simulator (and its file server) the moment the last
    # callback is acknowledged, so every download a worker starts after that is refused.
    result = CliRunner().invoke(
        main,
        [
            "simulate", "load",
            "--tasks", "2", "--rate", "100",
            "--callback-url", receiver.url,
            "--store-timeout", "0",
            "--width", "8", "--height", "8",
            "--json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.output)["acknowledged"] == 2
    url = receiver.bodies()[0]["data"]["resultUrls"][0]
    try:
        status: int | str = httpx.get(url, trust_env=False, timeout=5.0).status_code
    except httpx.TransportError as exc:
        status = f"{type(exc).__name__}: {exc}"
    assert status == 200, status


def test_load_fires_callbacks_at_the_asked_rate_even_when_each_answer_takes_a_second(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    # --rate is "Callbacks/s", but callbacks (and task completions) share the 16 delivery threads
    # the CLI always uses (delivery_threads is not an option): with an ingress answering in 1 s,
    # at most 16 callbacks are in flight, so 48 callbacks "at 100/s" take ~3 s to be sent, and
    # the reported latency (measured from when a thread finally sent each one) hides the wait.
    sim = make_sim(delivery_threads=16)
    receiver.delays_s = [1.0] * 48
    report = run_load(sim, tasks=48, rate_per_s=100.0, callback_url=receiver.url, settle_timeout_s=10.0)
    assert report.acknowledged == 48
    starts = sorted(a.started_at for a in sim.attempts())
    spread = starts[-1] - starts[0]
    assert spread <= 0.47 + 0.5, f"48 callbacks at 100/s were sent over {spread:.2f} s"
