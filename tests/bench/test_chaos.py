"""bench/chaos.py's count and verdict, on crafted inputs (tests/integration/test_chaos.py runs it):
a task counts stored, partial or failed only where the bucket or a reason shows it, and a run that
broke the promise or did not do its work fails."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import chaos
import pytest

TASK = "mjsim-chaos-000001"
#: The simulator's result files for one mj_txt2img task.
FILES = 4


def image(index: int) -> dict[str, Any]:
    return {"index": index, "key": f"tasks/{TASK}/{index}.png", "sha256": "0" * 64, "size": 1}


def error(index: int | None, reason: str) -> dict[str, Any]:
    return {"index": index, "sourceUrl": None, "reason": reason}


def manifest(status: str, images: list[int], errors: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {
        "taskId": TASK,
        "status": status,
        "code": 200,
        "msg": "success",
        "images": [image(index) for index in images],
        "errors": errors,
        **fields,
    }


def classify_one(
    found: dict[str, Any] | None, record: dict[str, str], result_count: int = FILES
) -> chaos.Outcomes:
    """The outcome of the one acknowledged task ``TASK``: ``found`` its manifest in the bucket."""
    manifests = {} if found is None else {TASK: found}
    return chaos.classify({TASK}, manifests, {TASK: record}, {TASK: result_count})


def good_report(**changes: Any) -> chaos.ChaosReport:
    """A settled run whose one acknowledged task was stored and its 4 files read back, then
    ``changes``."""
    report = chaos.ChaosReport(
        sent=1,
        acknowledged=1,
        unacknowledged=0,
        delivery_attempts=1,
        deliveries_acknowledged=1,
        duplicates_sent=0,
        stored=1,
        partial=0,
        failed=0,
        failed_without_manifest=0,
        failed_reasons={},
        partial_reasons={},
        lost=[],
        lost_states={},
        incomplete=[],
        stored_twice=[],
        downloaded_again=[],
        seen_stored=1,
        unexplained=[],
        files_verified=FILES,
        sha256_mismatches=[],
        state_disagreements=[],
        dead_letters=0,
        stranded_delayed=0,
        settled=True,
        settle_s=1.0,
        duration_s=10.0,
        disruptions=[],
    )
    return replace(report, **changes)


# --- lost -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["stored", "partial"])
def test_a_task_redis_calls_stored_or_partial_without_a_manifest_in_the_bucket_is_lost(state: str) -> None:
    """Given an acknowledged task Redis calls stored (or partial), with no manifest in the bench's
    bucket (the store lost it, or the workers wrote to another bucket)
    When the run counts it
    Then it is lost, by its Redis state: nothing shows a file was stored."""
    outcomes = classify_one(None, {"state": state, "code": "200", "reason": ""})

    assert outcomes.lost == [TASK]
    assert outcomes.lost_states == {state: 1}
    assert sum(outcomes.by_status.values()) == 0


def test_a_failure_known_only_to_redis_counts_failed_with_its_reason() -> None:
    """Given a task the queue gave up on while object storage was down: Redis says failed, with a
    reason, and there is no manifest
    When the run counts it
    Then it is failed for that reason, and counted as failed without a manifest."""
    outcomes = classify_one(None, {"state": "failed", "reason": "object storage unavailable"})

    assert outcomes.by_status["failed"] == 1
    assert outcomes.failed_without_manifest == 1
    assert outcomes.failed_reasons == {"object storage unavailable": 1}
    assert outcomes.lost == []


def test_a_failure_known_only_to_redis_without_a_reason_is_lost() -> None:
    """Given a task Redis says failed, with a blank reason and no manifest
    When the run counts it
    Then it is lost: nothing shows it failed visibly, with a reason."""
    outcomes = classify_one(None, {"state": "failed", "reason": "  "})

    assert outcomes.lost == [TASK]
    assert outcomes.by_status["failed"] == 0


def test_a_manifest_whose_status_is_not_final_is_lost() -> None:
    """Given a manifest in the bucket saying "processing"
    When the run counts its task
    Then the task is lost (not left out of every figure), for its manifest's status."""
    outcomes = classify_one(manifest("processing", [], []), {"state": "processing"})

    assert outcomes.lost == [TASK]
    assert outcomes.lost_states == {"manifest processing": 1}


def test_a_stored_partial_and_failed_task_each_count_once() -> None:
    """Given three acknowledged tasks: stored whole, partial with a reason, failed with a reason
    When the run counts them
    Then each counts once under its status, with nothing lost, incomplete or unexplained."""
    stored = manifest("stored", [0, 1, 2, 3], [])
    partial = manifest("partial", [0, 1, 2], [error(3, "HTTP 410 for <url>")])
    failed = manifest("failed", [], [], code=500, msg="Midjourney generation failed")
    manifests = {"s": stored, "p": partial, "f": failed}
    records = {task_id: {"state": found["status"]} for task_id, found in manifests.items()}

    outcomes = chaos.classify(set(manifests), manifests, records, {"s": FILES, "p": FILES})

    assert outcomes.by_status == {"stored": 1, "partial": 1, "failed": 1}
    assert outcomes.failed_reasons == {"Midjourney generation failed": 1}
    assert outcomes.partial_reasons == {"HTTP 410 for <url>": 1}
    assert (outcomes.lost, outcomes.incomplete, outcomes.unexplained) == ([], [], [])


# --- incomplete -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "images", "errors"),
    [
        pytest.param("stored", [0], [], id="stored-listing-one-of-four"),
        pytest.param("stored", [0, 1, 2], [error(3, "HTTP 410")], id="stored-with-an-error"),
        pytest.param("stored", [0, 1, 2, 3, 4], [], id="stored-with-a-file-never-served"),
        pytest.param("partial", [0, 1], [error(3, "HTTP 410")], id="partial-naming-three-of-four"),
        pytest.param("partial", [0, 1, 2], [error(2, "HTTP 410")], id="partial-naming-one-twice"),
        pytest.param("failed", [0], [error(1, "HTTP 410")], id="failed-with-a-stored-file"),
    ],
)
def test_a_manifest_that_does_not_name_each_served_file_once_is_incomplete(
    status: str, images: list[int], errors: list[dict[str, Any]]
) -> None:
    """Given the simulator served 4 result files for a task, and its manifest does not account for
    them: a "stored" one missing a file or giving an error, a partial one naming a file twice or not
    at all
    When the run counts the task
    Then it is incomplete, not stored, partial or failed."""
    outcomes = classify_one(manifest(status, images, errors), {"state": status})

    assert outcomes.incomplete == [TASK]
    assert sum(outcomes.by_status.values()) == 0


# --- reasons --------------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["", "  "])
def test_a_partial_task_whose_file_error_gives_a_blank_reason_is_unexplained(reason: str) -> None:
    """Given a partial manifest whose one file error gives a blank reason, and none in Redis
    When the run counts the task
    Then it is partial and unexplained."""
    found = manifest("partial", [0, 1, 2], [error(3, reason)])

    outcomes = classify_one(found, {"state": "partial", "reason": ""})

    assert outcomes.by_status["partial"] == 1
    assert outcomes.unexplained == [TASK]


def test_a_failed_task_whose_file_errors_all_give_blank_reasons_is_unexplained() -> None:
    """Given a failed manifest whose four file errors give no reason (joined, "; ; ; "), and none
    in Redis
    When the run counts the task
    Then it is failed and unexplained."""
    found = manifest("failed", [], [error(index, "") for index in range(FILES)])

    outcomes = classify_one(found, {"state": "failed"})

    assert outcomes.by_status["failed"] == 1
    assert outcomes.unexplained == [TASK]


def test_a_failed_task_with_one_blank_file_reason_among_others_is_unexplained() -> None:
    """Given a failed manifest whose errors give a reason for three files and a blank one for the
    fourth, while Redis holds a reason
    When the run counts the task
    Then it is unexplained: every error must say why."""
    errors = [error(index, "HTTP 410") for index in range(3)] + [error(3, " ")]

    outcomes = classify_one(manifest("failed", [], errors), {"state": "failed", "reason": "HTTP 410"})

    assert outcomes.unexplained == [TASK]


def test_a_failure_without_a_reason_fails_the_run() -> None:
    """Given a run whose one task failed without a reason
    When its verdict is read
    Then the run fails, saying so."""
    report = good_report(stored=0, failed=1, files_verified=0, unexplained=[TASK])

    assert not report.ok
    assert report.failures == ["1 failed without a reason"]


# --- downloaded again -----------------------------------------------------------------------------


def test_a_file_served_whole_after_its_task_was_seen_stored_was_downloaded_again() -> None:
    """Given a task seen stored at t=100, whose file 0 was served whole at t=90 and again at t=101
    (a duplicate downloading it again) and whose file 1 only at t=95
    When the downloads are counted
    Then file 0 was downloaded again, file 1 was not."""
    serves = {(TASK, 0): [90.0, 101.0], (TASK, 1): [95.0]}

    assert chaos.downloaded_again(serves, {TASK: 100.0}) == [f"{TASK}/0"]


def test_downloads_before_the_store_or_of_a_task_never_stored_are_not_downloads_again() -> None:
    """Given a file served whole three times before its task was stored (an attempt that died
    before its manifest, retries), and a file of a task never seen stored served twice
    When the downloads are counted
    Then neither was downloaded again."""
    serves = {(TASK, 0): [90.0, 95.0, 99.0], ("mjsim-chaos-000002", 0): [90.0, 120.0]}

    assert chaos.downloaded_again(serves, {TASK: 100.0}) == []


def test_a_download_again_fails_the_run() -> None:
    """Given a run where a file of a stored task was downloaded again
    When its verdict is read
    Then the run fails."""
    assert good_report(downloaded_again=[f"{TASK}/0"]).failures == ["1 file(s) downloaded again"]


class FakeStates:
    """Redis task states that change when told to; records which tasks were asked for."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.asked: list[list[str]] = []

    def __call__(self, task_ids: list[str]) -> dict[str, str | None]:
        self.asked.append(task_ids)
        return {task_id: self.states.get(task_id) for task_id in task_ids}


def test_the_watch_keeps_the_time_it_first_saw_each_task_stored() -> None:
    """Given two acknowledged tasks, one stored before the first look, one after it
    When the watch looks at t=1, then at t=2
    Then it keeps t=1 for the first and t=2 for the second, asking again only about the second."""
    redis_states, now = FakeStates(), [1.0]
    watch = chaos.StoredWatch(read_states=redis_states, acknowledged=lambda: {"a", "b"}, clock=lambda: now[0])
    redis_states.states = {"a": "stored", "b": "processing"}

    watch.look()
    now[0], redis_states.states["b"] = 2.0, "stored"
    watch.look()

    assert watch.stored_at == {"a": 1.0, "b": 2.0}
    assert redis_states.asked == [["a", "b"], ["b"]]


# --- a run that did not do its work ---------------------------------------------------------------


def test_a_run_where_no_callback_was_acknowledged_is_not_ok() -> None:
    """Given a run whose ingress acknowledged none of 200 callbacks (misrouted or down): nothing
    stored, nothing read back, not settled
    When its verdict is read
    Then the run fails for each of those reasons."""
    report = good_report(
        sent=200, acknowledged=0, unacknowledged=200, delivery_attempts=800, deliveries_acknowledged=0,
        stored=0, files_verified=0, settled=False,
    )  # fmt: skip

    assert report.failures == [
        "no callback acknowledged",
        "200 callback(s) never acknowledged",
        "not settled within --settle",
    ]
    assert report.format_text().endswith("FAIL: " + "; ".join(report.failures))


def test_a_run_whose_tasks_redis_calls_stored_are_not_in_the_bench_bucket_fails() -> None:
    """Given a run whose workers wrote to another bucket: Redis says stored for each of 5 tasks,
    the bench's bucket holds nothing
    When they are counted and the verdict read
    Then all 5 are lost, none stored, and the run fails."""
    acked = {f"{TASK}{n}" for n in range(5)}
    outcomes = chaos.classify(acked, {}, {t: {"state": "stored"} for t in acked}, dict.fromkeys(acked, FILES))

    report = good_report(
        sent=5, acknowledged=5, stored=outcomes.by_status["stored"], lost=outcomes.lost, files_verified=0
    )

    assert report.stored == 0
    assert report.failures == ["5 lost"]


def test_a_run_with_stored_tasks_and_no_file_read_back_fails() -> None:
    """Given a run reporting a stored task but no file read back
    When its verdict is read
    Then the run fails."""
    assert good_report(files_verified=0).failures == ["tasks stored, yet no file read back"]


def test_a_run_that_never_saw_a_task_stored_while_running_fails() -> None:
    """Given a run reporting a stored task that its watch never saw stored (so no download of a
    stored task could be told apart)
    When its verdict is read
    Then the run fails: downloads again went unchecked."""
    assert good_report(seen_stored=0).failures == ["no task seen stored: downloads again unchecked"]


def test_a_run_that_stored_its_task_and_read_it_back_is_ok() -> None:
    """Given a settled run whose one acknowledged task was stored and its files read back
    When its verdict is read
    Then it is OK."""
    report = good_report()

    assert report.ok
    assert report.format_text().endswith("\nOK")


def test_main_saves_the_report_then_exits_1_when_nothing_was_acknowledged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Given a chaos run whose ingress acknowledged nothing
    When the script runs it
    Then it saves the report, says FAILED and why, and exits with status 1."""
    report = good_report(
        acknowledged=0, unacknowledged=1, stored=0, files_verified=0, config={"out_dir": str(tmp_path)}
    )

    with pytest.raises(SystemExit) as exit_info:
        chaos.main(["--tasks", "1"], run=lambda config: report)

    assert exit_info.value.code == 1
    assert json.loads((tmp_path / "chaos.json").read_text())["ok"] is False
    assert "FAILED: 1 run(s) did not do their work" in capsys.readouterr().out


def test_main_returns_after_an_ok_run(tmp_path: Path) -> None:
    """Given a chaos run that stored its task
    When the script runs it
    Then it saves the report and returns (exit status 0)."""
    report = good_report(config={"out_dir": str(tmp_path)})

    chaos.main(["--tasks", "1", "--json"], run=lambda config: report)

    assert json.loads((tmp_path / "chaos.json").read_text())["ok"] is True
