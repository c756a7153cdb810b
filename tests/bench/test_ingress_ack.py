"""bench/ingress_ack.py: only successful answers count, a round that did not do its work fails
the figures resting on it, a reference is not judged, and --only names receivers that exist."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import ingress_ack
import pytest

APPENDFSYNC = {"aof_enabled": 1, "appendfsync": "always"}
NO_PACING = argparse.Namespace(paced_rate=0, candidate=None)


def wrk_round(answers: int, *, status: int = 0, queued: int | None = None, **socket: int) -> dict[str, Any]:
    """A 10 s wrk round of ``answers`` answers, ``status`` of them >= 400, with ``socket`` errors
    (connect, read, write, timeout); ``queued`` messages left (default: one per 2xx answer)."""
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0} | socket | {"status": status}
    summary = {
        "requests": answers,
        "duration_us": 10_000_000,
        "errors": errors,
        "latency_us": {"mean": 1500.0, "p50": 1000, "p90": 1800, "p99": 2000, "max": 9000},
    }
    run = ingress_ack.wrk_figures(summary)
    run |= {"server_cpu_ms_per_req": 0.1, "redis_cpu_ms_per_req": 0.02}
    run["queued"] = answers - status if queued is None else queued
    return run


@dataclass(frozen=True)
class Attempt:
    """What the figures read of a simulator's delivery attempt (``simulator.callbacks.DeliveryAttempt``)."""

    duration_s: float
    acknowledged: bool


@dataclass(frozen=True)
class Load:
    """What the figures read of a load report (``simulator.load.LoadReport``)."""

    tasks: int
    acknowledged: int
    ack_throughput_per_s: float = 20.0
    settled: bool = True


ACKED = Attempt(0.002, acknowledged=True)


def test_requests_per_second_count_only_the_answers_below_400() -> None:
    """Given a wrk summary of 200,000 answers in 10 s, 150,000 of them 503
    When its figures are read
    Then 50,000 were acknowledged: 5000 per second, not 20,000."""
    run = wrk_round(200_000, status=150_000)

    assert run["acked"] == 50_000
    assert run["rps"] == 5000.0
    assert run["failed"] == 150_000


def test_an_ingress_answering_errors_fails_its_figures_however_fast_it_answered() -> None:
    """Given mjhook answering every request 503 (nothing queued) as fast as bare Falcon answers 200
    When the rounds are summarized
    Then its throughput is 0, every figure resting on it is FAILED, and the failure is listed."""
    results = {
        "mjhook": [wrk_round(200_000, status=200_000)],
        "bare_falcon": [wrk_round(200_000)],
        "express": [wrk_round(50_000)],
    }

    report = ingress_ack.summarize(results, {}, NO_PACING, dict(APPENDFSYNC))

    assert report["medians"]["mjhook"]["rps"] == 0.0
    assert {name: figure[2] for name, figure in report["figures"].items()} == {
        "mjhook_p99_ms": "FAILED",
        "mjhook_rps_vs_bare_falcon": "FAILED",
        "mjhook_rps_vs_express": "FAILED",
    }
    assert report["failures"] == ["mjhook round 1: 200000 answers >= 400"]
    assert report["runs"]["bare_falcon"][0]["problems"] == []


def test_socket_errors_of_a_baseline_fail_only_the_figures_resting_on_it() -> None:
    """Given an Express round with 40 timeouts and 3 read errors, the other rounds clean
    When the rounds are summarized
    Then mjhook / Express is FAILED while mjhook / bare Falcon keeps its verdict."""
    results = {
        "mjhook": [wrk_round(100_000)],
        "bare_falcon": [wrk_round(120_000)],
        "express": [wrk_round(50_000, timeout=40, read=3)],
    }

    report = ingress_ack.summarize(results, {}, NO_PACING, dict(APPENDFSYNC))

    assert report["figures"]["mjhook_rps_vs_express"][2] == "FAILED"
    assert report["figures"]["mjhook_rps_vs_bare_falcon"][2] == "PASS"
    assert report["failures"] == ["express round 1: 3 read errors; 40 timeout errors"]


def test_an_ingress_round_that_queued_less_than_it_acknowledged_fails() -> None:
    """Given an mjhook round of 100,000 acknowledgements that left 99,000 messages queued
    When the rounds are summarized
    Then the round is failed and so are mjhook's figures; the baseline's queue is not checked."""
    results = {"mjhook": [wrk_round(100_000, queued=99_000)], "bare_falcon": [wrk_round(120_000, queued=0)]}

    report = ingress_ack.summarize(results, {}, NO_PACING, dict(APPENDFSYNC))

    assert report["failures"] == ["mjhook round 1: 99000 messages queued for 100000 acknowledged"]
    assert report["figures"]["mjhook_rps_vs_bare_falcon"][2] == "FAILED"
    assert report["queue"]["acked_in_rounds"] == 100_000


def test_the_p99_figure_is_the_worst_rounds() -> None:
    """Given three mjhook rounds whose p99s are 2, 2 and 30 ms
    When the rounds are summarized
    Then the p99 figure is 30 ms, a MISS: the median round (2 ms) hid a tail one round in three."""
    rounds = [wrk_round(100_000) | {"p99_ms": p99} for p99 in (2.0, 30.0, 2.0)]
    results = {"mjhook": rounds, "bare_falcon": [wrk_round(120_000, queued=0) for _ in range(3)]}

    report = ingress_ack.summarize(results, {}, NO_PACING, dict(APPENDFSYNC))

    assert report["figures"]["mjhook_p99_ms"][0] == 30.0
    assert report["figures"]["mjhook_p99_ms"][2] == "MISS"


def test_an_ingress_round_is_held_to_the_answers_it_counted_itself() -> None:
    """Given an mjhook round whose ingress counted 100,032 callbacks answered 200 (wrk stopped
    with 32 answers in flight, counting 100,000) and that left 100,000 messages queued
    When the rounds are summarized
    Then the round is failed: 32 acknowledged callbacks are missing from the queue (against
    wrk's count the round passed)."""
    run = wrk_round(100_000, queued=100_000) | {"answered": 100_032}
    results = {"mjhook": [run], "bare_falcon": [wrk_round(120_000, queued=0)]}

    report = ingress_ack.summarize(results, {}, NO_PACING, dict(APPENDFSYNC))

    assert report["failures"] == ["mjhook round 1: 100000 messages queued for 100032 acknowledged"]


def test_the_paced_p99_counts_an_attempt_that_timed_out_and_its_round_fails() -> None:
    """Given a paced round of 20 callbacks, all acknowledged in the end, the first attempt of one
    timed out after 10 s (its retry acknowledged in 2 ms)
    When its figures are read and the rounds summarized
    Then its p99 is the 10 s attempt, not 2 ms, and the paced figure is FAILED."""
    attempts = [ACKED] * 20 + [Attempt(10.0, acknowledged=False), ACKED]
    paced_run = ingress_ack.paced_figures(Load(tasks=20, acknowledged=20), attempts, queued=20)
    args = argparse.Namespace(paced_rate=20.0, candidate=None)

    report = ingress_ack.summarize(
        {"mjhook": [wrk_round(100_000)]}, {"mjhook": [paced_run]}, args, dict(APPENDFSYNC)
    )

    assert paced_run["p99_ms"] == 10_000.0
    assert report["figures"]["mjhook_paced_p99_ms"][2] == "FAILED"
    assert report["failures"] == ["mjhook paced round 1: 1 delivery attempts not acknowledged"]
    assert report["figures"]["mjhook_p99_ms"][2] == "PASS"


def test_a_paced_round_with_a_callback_never_acknowledged_fails() -> None:
    """Given a paced round of 20 callbacks of which 19 were acknowledged
    When the rounds are summarized
    Then the paced figure is FAILED and the failure says how many were acknowledged."""
    attempts = [ACKED] * 19 + [Attempt(0.003, acknowledged=False)]
    paced_run = ingress_ack.paced_figures(Load(tasks=20, acknowledged=19), attempts, queued=19)
    args = argparse.Namespace(paced_rate=20.0, candidate=None)

    report = ingress_ack.summarize(
        {"mjhook": [wrk_round(100_000)]}, {"mjhook": [paced_run]}, args, dict(APPENDFSYNC)
    )

    assert report["figures"]["mjhook_paced_p99_ms"][2] == "FAILED"
    assert report["failures"] == [
        "mjhook paced round 1: 19 of 20 callbacks acknowledged; 1 delivery attempts not acknowledged"
    ]


def test_clean_rounds_keep_their_verdicts_and_list_no_failure() -> None:
    """Given clean rounds: every answer 2xx and queued, every paced callback acknowledged at once
    When the rounds are summarized
    Then the figures are judged on their values (PASS or MISS) and no failure is listed."""
    paced_run = ingress_ack.paced_figures(Load(tasks=20, acknowledged=20), [ACKED] * 20, queued=20)
    args = argparse.Namespace(paced_rate=20.0, candidate=None)
    results = {"mjhook": [wrk_round(60_000)], "bare_falcon": [wrk_round(120_000)]}

    report = ingress_ack.summarize(results, {"mjhook": [paced_run]}, args, dict(APPENDFSYNC))

    assert report["failures"] == []
    assert report["figures"]["mjhook_rps_vs_bare_falcon"] == [0.5, 0.7, "MISS"]
    assert report["figures"]["mjhook_paced_p99_ms"] == [2.0, 10.0, "PASS"]


def test_a_paced_ingress_round_that_queued_less_than_it_acknowledged_fails() -> None:
    """Given paced rounds of 20 callbacks, all acknowledged at once, of which mjhook queued 19
    and bare Falcon (which queues nothing) none
    When the rounds are summarized
    Then mjhook's paced round is failed and so is its paced figure; bare Falcon's is not."""
    paced = {
        "mjhook": [ingress_ack.paced_figures(Load(tasks=20, acknowledged=20), [ACKED] * 20, queued=19)],
        "bare_falcon": [ingress_ack.paced_figures(Load(tasks=20, acknowledged=20), [ACKED] * 20, queued=0)],
    }
    args = argparse.Namespace(paced_rate=20.0, candidate=None)
    results = {"mjhook": [wrk_round(100_000)], "bare_falcon": [wrk_round(120_000)]}

    report = ingress_ack.summarize(results, paced, args, dict(APPENDFSYNC))

    assert report["failures"] == ["mjhook paced round 1: 19 messages queued for 20 acknowledged"]
    assert report["figures"]["mjhook_paced_p99_ms"][2] == "FAILED"
    assert report["paced_runs"]["bare_falcon"][0]["problems"] == []


def test_the_ratio_to_bare_falcon_under_gthread_is_a_reference_without_a_verdict() -> None:
    """Given clean rounds of mjhook, bare Falcon and bare Falcon under gthread (the ingress's old
    settings), mjhook at half the gthread app's rate
    When the rounds are summarized
    Then the gthread ratio is reported as a reference (no target, no PASS or MISS), apart from the
    judged figures."""
    results = {
        "mjhook": [wrk_round(60_000)],
        "bare_falcon": [wrk_round(60_000)],
        "bare_falcon_gthread": [wrk_round(120_000)],
    }

    report = ingress_ack.summarize(results, {}, NO_PACING, dict(APPENDFSYNC))

    assert report["references"] == {"mjhook_rps_vs_bare_falcon_gthread": [0.5, None, "REFERENCE"]}
    assert set(report["figures"]) == {"mjhook_p99_ms", "mjhook_rps_vs_bare_falcon"}


def test_the_durable_write_baseline_gives_two_references_and_is_held_to_its_queue() -> None:
    """Given clean rounds of mjhook, bare Falcon and durable_falcon (the bare app plus one durable
    write), durable_falcon at 40 % of the bare app's rate and mjhook at 75 % of durable_falcon's
    When the rounds are summarized
    Then both ratios are references (what the write costs; what mjhook costs beyond it), and a
    durable_falcon round that queued less than it acknowledged fails like an ingress round."""
    results = {
        "mjhook": [wrk_round(30_000)],
        "bare_falcon": [wrk_round(100_000, queued=0)],
        "durable_falcon": [wrk_round(40_000)],
    }

    report = ingress_ack.summarize(results, {}, NO_PACING, dict(APPENDFSYNC))

    assert report["references"] == {
        "durable_falcon_rps_vs_bare_falcon": [0.4, None, "REFERENCE"],
        "mjhook_rps_vs_durable_falcon": [0.75, None, "REFERENCE"],
    }
    results["durable_falcon"] = [wrk_round(40_000, queued=39_000)]
    failed = ingress_ack.summarize(results, {}, NO_PACING, dict(APPENDFSYNC))
    assert failed["failures"] == ["durable_falcon round 1: 39000 messages queued for 40000 acknowledged"]


@pytest.mark.parametrize(
    "only",
    [["--only"], ["--only", "mjhook", "bare_flacon"], ["--only", "candidate"]],
    ids=["none", "unknown", "candidate-without-tree"],
)
def test_only_must_name_receivers_that_can_run(only: list[str]) -> None:
    """Given --only naming nothing, a receiver that does not exist, or the candidate without
    --candidate
    When the arguments are parsed
    Then the script stops with a usage error (status 2) instead of measuring nothing."""
    with pytest.raises(SystemExit) as stopped:
        ingress_ack.parse_args(only)

    assert stopped.value.code == 2


def test_only_picks_the_receivers_named() -> None:
    args = ingress_ack.parse_args(["--only", "mjhook", "mjhook_fsync_everysec"])

    assert args.only == ["mjhook", "mjhook_fsync_everysec"]
