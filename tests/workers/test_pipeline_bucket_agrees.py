"""A task's manifest describes exactly the files its bucket prefix holds, however a failure report
or a give-up meets files an unfinished attempt left (one handed to the polling fallback on its
last attempt, its links expired and the provider unable to renew them for now).

Real Redis, SeaweedFS and file server (the pipeline's harness); the provider that cannot renew a
link is a function raising what the provider client raises then."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from shared import keys
from shared.errors import ProviderUnavailable
from shared.metrics import create_worker_metrics
from shared.polling import PollOutcome, PollResult
from shared.submitted import SubmittedTasks
from shared.taskstate import OUTCOME_FIELD, TaskState
from tests.support.servers import png_bytes
from tests.support.worker_harness import Harness, callback
from workers.fetch import FetchLimits, ResultFetcher, create_http_client
from workers.lease import LeaseManager
from workers.pipeline import CallbackProcessor
from workers.polling import PollStarts, SilentTaskPoller

MANIFEST = "tasks/task-1/manifest.json"


def no_fresh_link(url: str) -> str:
    raise ProviderUnavailable("provider answered 503", code=503)


@contextmanager
def handing_back_worker(harness: Harness) -> Iterator[tuple[CallbackProcessor, SubmittedTasks]]:
    """A worker whose expired links cannot be renewed now, with the polling fallback to hand
    such a task to on its last attempt."""
    client = create_http_client(connect_timeout_s=2, read_timeout_s=2, max_redirects=3, max_connections=4)
    limits = FetchLimits(max_image_bytes=1 << 20, max_video_bytes=1 << 20)
    submitted = SubmittedTasks(harness.redis, harness.tasks, ttl_s=3600)
    with ThreadPoolExecutor(max_workers=4) as pool, client:
        yield (
            CallbackProcessor(
                tasks=harness.tasks,
                leases=LeaseManager(harness.redis, ttl_s=30),
                store=harness.store,
                fetcher=ResultFetcher(client, limits, refresh_url=no_fresh_link),
                pool=pool,
                metrics=create_worker_metrics(),
                poll_later=submitted,
            ),
            submitted,
        )


def bucket_and_manifest(harness: Harness) -> tuple[set[str], set[str]]:
    """What the task's prefix holds, and what its manifest describes (itself included)."""
    described = {str(image["key"]) for image in harness.manifest("task-1")["images"]}  # type: ignore[attr-defined]
    return set(harness.store.list_keys("tasks/task-1/")), described | {MANIFEST}


def partial_then_handed_back(harness: Harness, worker: CallbackProcessor) -> None:
    """The task ends partial (file 0 stored; 1 and 2 not media, refused); a duplicate's last
    attempt then stores file 1 (it works now) and is handed back to the polling fallback (file 2's
    link expired, not renewable now), its outcome kept."""
    urls = [harness.files.add("/0.png", png_bytes(0))]
    urls += [
        harness.files.add(f"/{i}.png", b"<html>not yet</html>", content_type="text/html") for i in (1, 2)
    ]
    assert worker.process(callback(urls)) is TaskState.PARTIAL
    harness.files.add("/1.png", png_bytes(1))
    harness.files.add("/2.png", b"gone", status=410)
    assert worker.process(callback(urls), final_attempt=True) is TaskState.SUBMITTED
    record = harness.tasks.get("task-1")
    assert record is not None
    assert record.fields[OUTCOME_FIELD] == "partial"
    assert "tasks/task-1/1.png" in harness.store.list_keys("tasks/task-1/")


def test_a_failure_report_of_a_task_handed_back_leaves_no_file_beside_its_failed_manifest(
    harness: Harness,
) -> None:
    """Given a success whose last attempt stored file 0 and was handed back (file 1 not renewable)
    When a failure report of the task is processed (a poll, a late report, a replayed letter)
    Then the task is failed and its bucket holds what its manifest describes: file 0 stayed, for
    good, beside a failed manifest listing no file (nothing moves a failed task again)."""
    with handing_back_worker(harness) as (worker, _):
        ok = harness.files.add("/0.png", png_bytes(0))
        expired = harness.files.add("/1.png", b"gone", status=410)
        assert worker.process(callback([ok, expired]), final_attempt=True) is TaskState.SUBMITTED

        assert worker.process(callback([], code=501)) is TaskState.FAILED

    in_bucket, described = bucket_and_manifest(harness)
    assert in_bucket == described == {MANIFEST}


def test_a_late_failure_report_of_a_stored_task_whose_record_expired_keeps_it_stored(
    harness: Harness,
) -> None:
    """Given a stored task whose Redis record expired (MJHOOK_TASK_TTL_S)
    When a failure report of it comes (a resend, a replayed dead letter)
    Then the stored manifest, which describes the bucket, stands and the task is stored again: it
    was replaced by a failed manifest listing none of the files left in the bucket."""
    urls = [harness.files.add(f"/s{i}.png", png_bytes(i)) for i in range(2)]
    assert harness.process(callback(urls)) is TaskState.STORED
    stored_manifest = harness.manifest("task-1")
    harness.redis.delete(keys.task("task-1"))

    assert harness.process(callback([], code=501)) is TaskState.STORED

    assert harness.manifest("task-1") == stored_manifest
    record = harness.tasks.get("task-1")
    assert record is not None
    assert record.state is TaskState.STORED
    in_bucket, described = bucket_and_manifest(harness)
    assert in_bucket == described


class StillGenerating:
    """Every poll: the provider still generates (or says nothing), until the give-up."""

    def poll(self, task_id: str) -> PollResult:
        return PollResult(task_id, PollOutcome.GENERATING, "still generating")


def test_the_polling_fallback_giving_up_a_handed_back_task_brings_back_its_outcome(
    harness: Harness,
) -> None:
    """Given a partial task (file 0) whose duplicate stored file 1 and was handed back
    When the polling fallback gives it up (the provider silent)
    Then the task is partial again, file 0 kept and file 1 (no manifest describes it) removed, as
    the queue's give-up does: it was failed, and every stored file deleted, file 0 with it. It is
    not counted failed (the queue's give-up counts none either)."""
    metrics = create_worker_metrics()
    with handing_back_worker(harness) as (worker, submitted):
        partial_then_handed_back(harness, worker)
        poller = SilentTaskPoller(
            submitted=submitted,
            tasks=harness.tasks,
            poller=StillGenerating(),  # type: ignore[arg-type]
            starts=PollStarts(harness.redis, max_starts=3, ttl_s=3600),
            grace_s=0,
            interval_s=0,
            give_up_s=0,
            record_failure=worker.record_failure,
            metrics=metrics,
        )

        assert poller.run_once().given_up == 1

    record = harness.tasks.get("task-1")
    assert record is not None
    assert record.state is TaskState.PARTIAL
    in_bucket, described = bucket_and_manifest(harness)
    assert in_bucket == described == {"tasks/task-1/0.png", MANIFEST}
    assert metrics.registry.get_sample_value("mjhook_tasks_total", {"outcome": "failed"}) in (None, 0.0)


def test_a_failure_report_bringing_a_handed_back_task_back_to_its_outcome_removes_the_added_file(
    harness: Harness,
) -> None:
    """Given a partial task (file 0) whose duplicate stored file 1 and was handed back
    When a failure report of it is processed
    Then the task is partial again and its bucket holds file 0 alone: file 1 stayed, for good,
    beside a manifest not describing it."""
    with handing_back_worker(harness) as (worker, _):
        partial_then_handed_back(harness, worker)

        assert worker.process(callback([], code=501)) is TaskState.PARTIAL

    in_bucket, described = bucket_and_manifest(harness)
    assert in_bucket == described == {"tasks/task-1/0.png", MANIFEST}
