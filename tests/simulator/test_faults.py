"""Fault injection: seeded, reproducible decisions, and what each fault does on the wire."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import httpx
import pytest

from cli.simulate import _config as cli_config
from cli.simulate import serve
from simulator import FaultConfig, SimulatorConfig, run_simulator
from simulator.callbacks import body_task_id
from simulator.faults import FaultPlan, FileFault
from simulator.resources import SLOW_FILE_PIECES
from simulator.tasks import SuccessFlag
from tests.simulator.conftest import TEST_CONFIG
from tests.simulator.support import (
    FakeClock,
    Receiver,
    SimFactory,
    api,
    result_urls,
    submit,
    wait_done,
    wait_for_serves,
)
from tests.support.provider import RecordingSleep


def test_the_same_seed_gives_the_same_decisions_and_shares_are_respected() -> None:
    config = FaultConfig(seed=7, failure_share=0.3, duplicate_share=0.1, drop_share=0.2)
    first = [FaultPlan(config).for_task(number) for number in range(1000)]
    again = [FaultPlan(config).for_task(number) for number in reversed(range(1000))][::-1]
    other = [FaultPlan(FaultConfig(seed=8, failure_share=0.3)).for_task(n) for n in range(1000)]

    assert first == again
    assert [t.fails for t in first] != [t.fails for t in other]
    assert 250 <= sum(t.fails for t in first) <= 350
    assert 60 <= sum(t.duplicate for t in first) <= 140
    assert 150 <= sum(t.drop for t in first) <= 250


def test_file_faults_exclude_each_other_in_their_shares() -> None:
    plan = FaultPlan(
        FaultConfig(
            seed=3,
            file_error_share=0.1,
            file_slow_share=0.1,
            file_truncated_share=0.1,
            file_expired_share=0.1,
        )
    )
    counts = Counter(plan.for_file(number, index) for number in range(500) for index in range(4))
    for fault in (FileFault.ERROR, FileFault.SLOW, FileFault.TRUNCATED, FileFault.EXPIRED):
        assert 140 <= counts[fault] <= 260
    assert 1000 <= counts[FileFault.NONE] <= 1400


def test_shares_adding_up_to_more_than_one_are_refused() -> None:
    with pytest.raises(ValueError, match="more than 1"):
        FaultConfig(file_error_share=0.6, file_slow_share=0.6)


@pytest.mark.parametrize("later", [0.0, 1.0], ids=["later shares off", "later shares on"])
def test_failed_duplicated_and_dropped_callbacks_match_the_seeded_plan(
    make_sim: SimFactory, receiver: Receiver, later: float
) -> None:
    # Given seed 11's plan of failures, duplicates and drops (made without the later shares)
    faults = FaultConfig(seed=11, failure_share=0.4, duplicate_share=0.3, drop_share=0.2)
    plan = [FaultPlan(faults).for_task(number) for number in range(10)]
    # When a provider with that seed runs 10 tasks, the later shares (task_id spelling, malformed
    # promptJson, successFlag 3) off or all on
    sim = make_sim(faults=replace(faults, **dict.fromkeys(LATER_SHARES, later)))
    with api(sim) as client:
        task_ids = [submit(client, callBackUrl=receiver.url) for _ in range(10)]
        for task_id in task_ids:
            wait_done(client, task_id)
    assert sim.wait_idle(5.0)

    # Then the planned tasks are called back twice, once or not at all, and the planned ones fail
    bodies = receiver.bodies()
    sent = Counter(body_task_id(body) for body in bodies)
    for task_id, expected in zip(task_ids, plan, strict=True):
        want = 0 if expected.drop else 2 if expected.duplicate else 1
        assert sent[task_id] == want, task_id
    failed = {body_task_id(body) for body in bodies if body["code"] == 500}
    assert failed == {t for t, e in zip(task_ids, plan, strict=True) if e.fails and not e.drop}
    assert any(e.drop for e in plan)
    assert any(e.duplicate and not e.drop for e in plan)
    assert any(e.fails and not e.drop for e in plan)


def test_a_5xx_file_fails_first_then_serves(make_sim: SimFactory) -> None:
    sim = make_sim(faults=FaultConfig(file_error_share=1.0, file_fault_repeats=1))
    with api(sim) as client:
        task_id = submit(client)
        url = result_urls(wait_done(client, task_id))[0]
        statuses = [client.get(url).status_code for _ in range(3)]
    assert statuses == [503, 200, 200]


def test_each_whole_serve_of_a_file_is_recorded_with_its_time(make_sim: SimFactory) -> None:
    """Given a result file that answers 503 on its first request
    When it is requested three times, the clock moving on between them
    Then the two whole serves are recorded at their times, the 503 is not, and another file of
    the task that was never requested has none."""
    clock = FakeClock()
    sim = make_sim(clock=clock, faults=FaultConfig(file_error_share=1.0, file_fault_repeats=1))
    with api(sim) as client:
        task_id = submit(client)
        url = result_urls(wait_done(client, task_id))[0]
        started = clock.now
        for _ in range(3):
            client.get(url)
            clock.advance(10)
    # (recorded just after the last byte went out, so possibly a moment after the client has it)
    serves = wait_for_serves(sim, (task_id, 0), 2)
    assert serves == {(task_id, 0): [started + 10, started + 20]}
    assert sim.provider.wait_served({(task_id, 0), (task_id, 1)}, 0.0) == {(task_id, 0)}


def test_a_truncated_file_breaks_off_then_serves_whole(make_sim: SimFactory) -> None:
    sim = make_sim(faults=FaultConfig(file_truncated_share=1.0))
    with api(sim) as client:
        task_id = submit(client)
        url = result_urls(wait_done(client, task_id))[0]
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(url)
        whole = client.get(url)
    assert whole.content == sim.expected_file(task_id, 0)


def test_a_slow_file_pauses_the_configured_time_in_all_before_its_pieces() -> None:
    # Given a slow-file fault of 0.4 s, and a sleep that records the pauses asked of it
    sleep = RecordingSleep()
    faults = FaultConfig(file_slow_share=1.0, file_slow_delay_s=0.4)
    with run_simulator(SimulatorConfig(**{**TEST_CONFIG, "faults": faults}), sleep=sleep) as sim:
        with api(sim) as client:
            task_id = submit(client)
            url = result_urls(wait_done(client, task_id))[0]
            # When the file is downloaded
            response = client.get(url)
        expected = sim.expected_file(task_id, 0)
    # Then it came whole, after a pause of its share of the 0.4 s before each of its pieces
    assert response.content == expected
    assert sleep.calls == [pytest.approx(0.4 / SLOW_FILE_PIECES)] * SLOW_FILE_PIECES


def test_a_download_broken_off_midway_is_no_download(make_sim: SimFactory) -> None:
    # Given a result file sent slowly, over a second
    sim = make_sim(faults=FaultConfig(file_slow_share=1.0, file_slow_delay_s=1.0))
    with api(sim) as client:
        task_id = submit(client)
        url = result_urls(wait_done(client, task_id))[0]
        # When a client reads its first piece and hangs up
        with client.stream("GET", url) as answer:
            first = next(answer.iter_raw())
        # Then, however long the rest would have taken, the file does not count as downloaded
        broken_off = sim.provider.wait_served({(task_id, 0)}, 2.0)
        # And once a client got all of it, it does
        whole = client.get(url)
    assert answer.status_code == 200
    assert 0 < len(first) < len(whole.content)
    assert broken_off == set()
    assert whole.content == sim.expected_file(task_id, 0)
    assert sim.provider.wait_served({(task_id, 0)}, 5.0) == {(task_id, 0)}
    assert len(sim.provider.whole_serves()[task_id, 0]) == 1


def test_an_expired_url_is_410_until_refreshed(make_sim: SimFactory) -> None:
    sim = make_sim(faults=FaultConfig(file_expired_share=1.0))
    with api(sim) as client:
        task_id = submit(client)
        url = result_urls(wait_done(client, task_id))[0]
        expired = client.get(url).status_code
        fresh = client.post("/api/v1/common/download-url", json={"url": url}).json()["data"]
        refreshed = client.get(fresh)
    assert expired == 410
    assert refreshed.status_code == 200
    assert refreshed.content == sim.expected_file(task_id, 0)


#: The three shares added after the first four decisions (failure, duplicate, drop, jitter).
LATER_SHARES = ("task_id_spelling_share", "malformed_prompt_share", "failed_after_creation_share")
#: What seed 11 decided for tasks 0-19 at failure 0.4, duplicate 0.3, drop 0.2 before the later
#: shares existed (computed with that code): seeded runs must stay what they were.
SEED_11_FAILS = [0, 4, 5, 7, 9, 13, 14, 17, 18]
SEED_11_DUPLICATES = [2, 3, 8, 11, 12, 13, 15, 18, 19]
SEED_11_DROPS = [1, 6, 9, 10, 14, 16, 18]
SEED_11_JITTERS = [0.8973133665506324, 0.7600366774777695, 0.06906202015176643]


@pytest.mark.parametrize("later", [0.0, 1.0])
def test_the_later_shares_leave_the_first_four_decisions_as_they_were(later: float) -> None:
    # Given seed 11's shares of failures, duplicates and drops, and the later shares at `later`
    config = FaultConfig(
        seed=11, failure_share=0.4, duplicate_share=0.3, drop_share=0.2, **dict.fromkeys(LATER_SHARES, later)
    )
    # When the plan decides tasks 0-19
    plan = [FaultPlan(config).for_task(number) for number in range(20)]
    # Then the same tasks fail, are duplicated and dropped, with the same jitter, as before the
    # later shares existed
    assert [number for number, t in enumerate(plan) if t.fails] == SEED_11_FAILS
    assert [number for number, t in enumerate(plan) if t.duplicate] == SEED_11_DUPLICATES
    assert [number for number, t in enumerate(plan) if t.drop] == SEED_11_DROPS
    assert [t.jitter for t in plan[:3]] == SEED_11_JITTERS
    # And the later faults hit every task (the failed-after-creation one every failing task), or none
    on = later == 1.0
    assert all(t.task_id_spelling is on and t.malformed_prompt is on for t in plan)
    assert all(t.failed_after_creation is (on and t.fails) for t in plan)


def test_the_later_shares_change_no_earlier_decision_and_are_respected() -> None:
    # Given the same seed and shares, with and without the later shares
    base = FaultConfig(seed=7, failure_share=0.3, duplicate_share=0.1, drop_share=0.2)
    later = replace(
        base,
        task_id_spelling_share=0.3,
        malformed_prompt_share=0.4,
        failed_after_creation_share=0.5,
    )
    # When each plans 1000 tasks
    without = [FaultPlan(base).for_task(number) for number in range(1000)]
    with_later = [FaultPlan(later).for_task(number) for number in range(1000)]
    # Then every earlier decision is the same
    earlier = [(t.fails, t.duplicate, t.drop, t.jitter) for t in without]
    assert [(t.fails, t.duplicate, t.drop, t.jitter) for t in with_later] == earlier
    # And without the later shares none of their faults happens; with them, in their shares
    assert not any(t.task_id_spelling or t.malformed_prompt or t.failed_after_creation for t in without)
    assert 230 <= sum(t.task_id_spelling for t in with_later) <= 370
    assert 330 <= sum(t.malformed_prompt for t in with_later) <= 470
    # (failed after creation only among the failing tasks, about half of them)
    failing = [t for t in with_later if t.fails]
    assert not any(t.failed_after_creation for t in with_later if not t.fails)
    assert 0.35 * len(failing) <= sum(t.failed_after_creation for t in failing) <= 0.65 * len(failing)


@pytest.mark.parametrize("name", LATER_SHARES)
@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_a_later_share_outside_0_to_1_is_refused(name: str, share: float) -> None:
    with pytest.raises(ValueError, match=name):
        FaultConfig(**{name: share})


def test_the_cli_passes_the_later_shares_to_the_fault_config() -> None:
    # Given the serve command's options, the later shares given
    args = ["--task-id-spelling-share", "0.25", "--malformed-prompt-share", "0.5"]
    args += ["--failed-after-creation-share", "0.75"]
    options = dict(serve.make_context("serve", args).params)
    # When they are turned into the simulator's config
    faults = cli_config(options).faults
    # Then each lands in its FaultConfig field; unset, each is 0
    assert (faults.task_id_spelling_share, faults.malformed_prompt_share) == (0.25, 0.5)
    assert faults.failed_after_creation_share == 0.75
    defaults = cli_config(dict(serve.make_context("serve", []).params)).faults
    assert [getattr(defaults, name) for name in LATER_SHARES] == [0.0, 0.0, 0.0]


def test_a_failed_task_can_be_recorded_as_created_but_failed_with_the_same_callback(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    # Given a provider whose failed tasks all fail after creation, and one whose tasks do not fail
    failing = make_sim(faults=FaultConfig(failure_share=1.0, failed_after_creation_share=1.0))
    succeeding = make_sim(faults=FaultConfig(failed_after_creation_share=1.0))
    # When a task is submitted to each
    with api(failing) as client:
        failed = submit(client, callBackUrl=receiver.url)
        failed_record = wait_done(client, failed)
        [request] = receiver.wait_for(1)
    with api(succeeding) as client:
        succeeded_record = wait_done(client, submit(client))

    # Then the failed one's record-info says successFlag 3, created but generation failed
    assert failed_record["successFlag"] == 3
    assert failed_record["errorCode"] == 501
    assert failed_record["errorMessage"] == "Midjourney generation failed"
    assert result_urls(failed_record) == []
    assert failing.provider.task(failed).success_flag is SuccessFlag.CREATE_FAILED
    # And its callback is the failure's as ever: code 500, no URLs
    body = request.json()
    assert (body["code"], body["msg"]) == (500, "Midjourney generation failed")
    assert body["data"] == {
        "taskId": failed,
        "promptJson": failing.provider.task(failed).prompt_json,
        "resultUrls": [],
    }
    # And a task that does not fail is not touched by the share
    assert succeeded_record["successFlag"] == 1


def test_at_the_default_failed_after_creation_share_failed_tasks_say_successFlag_2(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    # Given failing tasks, the failed-after-creation share at its default, 0.0
    faults = FaultConfig(failure_share=1.0)
    assert faults.failed_after_creation_share == 0.0
    sim = make_sim(faults=faults)
    # When tasks fail
    with api(sim) as client:
        task_ids = [submit(client, callBackUrl=receiver.url) for _ in range(5)]
        records = [wait_done(client, task_id) for task_id in task_ids]
        receiver.wait_for(5)
    # Then each record says successFlag 2, as before the switch existed, and each callback code 500
    assert [record["successFlag"] for record in records] == [2] * 5
    assert all(record["errorCode"] == 501 for record in records)
    assert [body["code"] for body in receiver.bodies()] == [500] * 5


def test_api_errors_are_drawn_per_submit_call_by_seed_in_their_share() -> None:
    # Given two plans with the same seed and a share of API errors, and one with another seed
    config = FaultConfig(seed=5, api_error_share=0.3)
    first, again = FaultPlan(config), FaultPlan(config)
    # When each numbers 1000 submit calls (the first counted on its own, the second asked by number)
    drawn = [first.on_submit_call() for _ in range(1000)]
    by_number = [again.for_submit_call(number) for number in range(1000)]
    other = [FaultPlan(replace(config, seed=6)).for_submit_call(number) for number in range(1000)]
    # Then the same calls fail with the same codes, another seed fails others
    assert drawn == by_number
    assert drawn != other
    # And about the share fails, with 500, 501 and 505 about evenly
    codes = Counter(code for code in drawn if code is not None)
    assert 230 <= sum(codes.values()) <= 370
    assert set(codes) == {500, 501, 505}
    assert min(codes.values()) >= 60


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_an_api_error_share_of_0_or_1_fails_no_or_every_submit_call(share: float) -> None:
    plan = FaultPlan(FaultConfig(seed=3, api_error_share=share))
    codes = [plan.on_submit_call() for _ in range(50)]
    assert all((code is None) is (share == 0.0) for code in codes)


def test_the_api_error_share_changes_no_task_or_file_decision() -> None:
    # Given the same seed and shares, with and without API errors
    base = FaultConfig(seed=7, failure_share=0.3, duplicate_share=0.1, file_error_share=0.2)
    plans = [FaultPlan(base), FaultPlan(replace(base, api_error_share=1.0))]
    # Then tasks and files fare the same (API errors are drawn from a source of their own)
    tasks = [[plan.for_task(number) for number in range(200)] for plan in plans]
    files = [[plan.for_file(number, index) for number in range(50) for index in range(4)] for plan in plans]
    assert tasks[0] == tasks[1]
    assert files[0] == files[1]


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_an_api_error_share_outside_0_to_1_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="api_error_share"):
        FaultConfig(api_error_share=share)


def test_the_cli_passes_the_fault_repeats_delays_and_api_error_share_to_the_config() -> None:
    # Given the serve command's options, each of the new ones given
    args = ["--file-fault-repeats", "3", "--duplicate-delay", "1.5", "--generation-jitter", "2.5"]
    args += ["--api-error-share", "0.25"]
    config = cli_config(dict(serve.make_context("serve", args).params))
    # Then each lands in its field
    assert (config.faults.file_fault_repeats, config.faults.duplicate_delay_s) == (3, 1.5)
    assert config.generation_jitter_s == 2.5
    assert config.faults.api_error_share == 0.25
    # And unset, each is the config's own default
    defaults = cli_config(dict(serve.make_context("serve", []).params))
    assert (defaults.faults, defaults.generation_jitter_s) == (
        FaultConfig(),
        SimulatorConfig().generation_jitter_s,
    )
