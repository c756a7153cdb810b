"""Fault injection: seeded, reproducible decisions, and what each fault does on the wire."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from simulator import FaultConfig, SimulatorConfig, run_simulator
from simulator.faults import FaultPlan, FileFault
from simulator.resources import SLOW_FILE_PIECES
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


def test_failed_duplicated_and_dropped_callbacks_match_the_seeded_plan(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    faults = FaultConfig(seed=11, failure_share=0.4, duplicate_share=0.3, drop_share=0.2)
    plan = [FaultPlan(faults).for_task(number) for number in range(10)]
    sim = make_sim(faults=faults)
    with api(sim) as client:
        task_ids = [submit(client, callBackUrl=receiver.url) for _ in range(10)]
        for task_id in task_ids:
            wait_done(client, task_id)
    assert sim.wait_idle(5.0)

    bodies = receiver.bodies()
    sent = Counter(body["data"]["taskId"] for body in bodies)
    for task_id, expected in zip(task_ids, plan, strict=True):
        want = 0 if expected.drop else 2 if expected.duplicate else 1
        assert sent[task_id] == want, task_id
    failed = {body["data"]["taskId"] for body in bodies if body["code"] == 500}
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
