"""What the worker records when the queue gives up on a message (workers/runtime.py), against
real Redis, SeaweedFS and a file server; object storage "down" is an endpoint nobody listens on."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker

from shared import keys
from shared.callback import Callback
from shared.dead_letters import ReasonSource, list_dead
from shared.errors import DownloadFailed, StorageUnavailable, TaskBusy
from shared.metrics import WorkerMetrics, create_worker_metrics
from shared.queue import BROKER_NAMESPACE, CALLBACK_QUEUE, PROCESS_CALLBACK, create_broker
from shared.redis_client import connect_redis
from shared.settings import Settings
from shared.storage import ObjectStore
from shared.submitted import SubmittedTasks
from shared.taskstate import FINAL_STATES, OUTCOME_FIELD, GiveUp, TaskState, TaskStore
from tests.support.pipeline import queued_callback, wait_for
from tests.support.procs import free_port
from tests.support.servers import FileServer, S3Server, png_bytes, start_redis
from tests.support.stack import app_environment, ready_bucket
from workers.lease import LeaseManager
from workers.metrics import WorkerMetricsMiddleware
from workers.retries import DurableRetries
from workers.runtime import WorkerRuntime
from workers.second_look import PendingGiveUps, SecondLookSweeper


def callback(urls: list[str], *, task_id: str = "task-1") -> Callback:
    return Callback(
        task_id=task_id,
        code=200,
        msg="success",
        prompt_json=None,
        result_urls=tuple(urls),
        received_at="2026-11-25T00:00:00.000Z",
    )


def give_up(runtime: WorkerRuntime, callback: Callback, exception: BaseException) -> None:
    """What dramatiq does after the last attempt at ``callback`` raised ``exception``."""
    message = dramatiq.MessageProxy(
        dramatiq.Message(
            queue_name="callbacks",
            actor_name="process_callback",
            args=(callback.to_message(),),
            kwargs={},
            options={},
        )
    )
    message.fail()
    runtime.after_process_message(StubBroker(), message, exception=exception)


def last_attempt(runtime: WorkerRuntime, callback: Callback) -> StorageUnavailable:
    """Process ``callback`` as its final attempt, with object storage down: what it raises."""
    with pytest.raises(StorageUnavailable) as raised:
        runtime.parts().processor.process(callback, final_attempt=True)
    return raised.value


@pytest.fixture
def settings(app_env: dict[str, str]) -> Settings:
    """This test's Redis, SeaweedFS bucket and loopback downloads."""
    return Settings.from_env(app_env)


@pytest.fixture
def runtime(settings: Settings) -> WorkerRuntime:
    """A worker whose object storage works."""
    runtime = WorkerRuntime(settings)
    ready_bucket(runtime.parts().store)
    return runtime


@pytest.fixture
def storage_down(settings: Settings) -> WorkerRuntime:
    """A worker on the same Redis whose object storage does not answer."""
    runtime = WorkerRuntime(settings.model_copy(update={"s3_endpoint": f"http://127.0.0.1:{free_port()}"}))
    runtime.parts()
    return runtime


@pytest.fixture
def tasks(runtime: WorkerRuntime) -> TaskStore:
    return runtime.parts().tasks


def test_a_partial_task_processed_again_and_given_up_stays_partial(
    runtime: WorkerRuntime, storage_down: WorkerRuntime, tasks: TaskStore, file_server: FileServer
) -> None:
    """The review's reproduction. Given a task that ended partial (one file stored, one gone),
    when a duplicate success callback finds object storage down on its last attempt and is given
    up, then the task is partial again, with its reason, as its manifest says."""
    urls = [file_server.add("/0.png", png_bytes(0)), file_server.url("/gone.png")]
    assert runtime.parts().processor.process(callback(urls)) is TaskState.PARTIAL
    reason = tasks.get("task-1").fields["reason"]  # type: ignore[union-attr]

    give_up(storage_down, callback(urls), last_attempt(storage_down, callback(urls)))

    record = tasks.get("task-1")
    assert record is not None
    assert record.state is TaskState.PARTIAL
    assert record.fields["reason"] == reason
    assert runtime.parts().store.get_json("tasks/task-1/manifest.json")["status"] == "partial"


def test_a_task_given_up_while_processing_fails_with_the_reason(
    storage_down: WorkerRuntime, tasks: TaskStore, file_server: FileServer
) -> None:
    urls = [file_server.add("/0.png", png_bytes(0))]
    exception = last_attempt(storage_down, callback(urls))
    assert tasks.get("task-1").state is TaskState.PROCESSING  # type: ignore[union-attr]

    give_up(storage_down, callback(urls), exception)

    record = tasks.get("task-1")
    assert record is not None
    assert record.state is TaskState.FAILED
    assert record.fields["reason"].startswith("gave up: StorageUnavailable: ")


@pytest.mark.parametrize("state", sorted(FINAL_STATES))
def test_a_task_with_an_outcome_keeps_it_when_a_later_message_is_given_up(
    storage_down: WorkerRuntime, tasks: TaskStore, state: TaskState
) -> None:
    """Another worker finished the task meanwhile (or this message was a duplicate): its state
    and reason stay."""
    tasks.move("task-1", state, reason="earlier outcome")

    give_up(storage_down, callback([]), StorageUnavailable("down"))

    record = tasks.get("task-1")
    assert record is not None
    assert record.state is state
    assert record.fields["reason"] == "earlier outcome"


def test_a_message_whose_retry_cannot_be_queued_is_given_up_with_the_enqueue_error(
    settings: Settings, runtime: WorkerRuntime, tasks: TaskStore
) -> None:
    """Given a delay queue Redis answers WRONGTYPE for, when a real worker's attempt fails with
    DownloadFailed and its retry cannot be queued, then the message is dead-lettered, and both the
    task's reason and the dead letter's name the enqueue error (what a replay would run into),
    after the attempt's."""
    client = connect_redis(settings.redis_url)
    client.set(keys.broker_messages(BROKER_NAMESPACE, f"{CALLBACK_QUEUE}.DQ"), "not a hash")
    # As the worker entry orders them: the runtime's after-hook runs once Retries has decided.
    broker = create_broker(
        settings, client=client, middleware=[runtime, DurableRetries(sleep=lambda seconds: None)]
    )

    def process_callback(message: dict[str, object]) -> None:
        raise DownloadFailed("connection reset")

    dramatiq.actor(
        process_callback, actor_name=PROCESS_CALLBACK, queue_name=CALLBACK_QUEUE, broker=broker, max_retries=3
    )
    tasks.move("task-1", TaskState.PROCESSING)
    broker.enqueue(
        dramatiq.Message(
            queue_name=CALLBACK_QUEUE,
            actor_name=PROCESS_CALLBACK,
            args=(queued_callback("task-1"),),
            kwargs={},
            options={},
        )
    )
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        letters = wait_for(
            lambda: list_dead(client, namespace=BROKER_NAMESPACE, queue=CALLBACK_QUEUE),
            timeout_s=30,
            what="a dead letter",
        )
    finally:
        worker.stop()
        broker.close()

    record = tasks.get("task-1")
    assert record is not None
    assert record.state is TaskState.FAILED
    reason = record.fields["reason"]
    assert reason.startswith("gave up: the retry could not be queued: ResponseError: WRONGTYPE ")
    assert reason.endswith(" (after DownloadFailed: connection reset)")
    [letter] = letters
    assert (letter.task_id, letter.reason, letter.reason_source) == ("task-1", reason, ReasonSource.WORKER)


@pytest.fixture
def short_lease(settings: Settings) -> WorkerRuntime:
    """A worker on the same Redis and bucket whose 1 s lease is renewed every third of a second."""
    runtime = WorkerRuntime(settings.model_copy(update={"lease_ttl_s": 1}))
    ready_bucket(runtime.parts().store)
    return runtime


def cut_off_during(runtime: WorkerRuntime, callback: Callback, *, once: Callable[[], bool]) -> TaskBusy:
    """Process ``callback`` as its final attempt; as soon as ``once()`` holds, the worker's lease
    lapses (Redis out of its reach for longer than the TTL). What the attempt raises."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        attempt = pool.submit(runtime.parts().processor.process, callback, final_attempt=True)
        wait_for(once, timeout_s=10, what="the attempt under way")
        runtime.parts().tasks.client.delete(keys.lease(callback.task_id))
        with pytest.raises(TaskBusy) as raised:
            attempt.result(timeout=30)
    return raised.value


def test_a_partial_task_given_up_after_a_file_of_it_was_replaced_fails(
    short_lease: WorkerRuntime, tasks: TaskStore, file_server: FileServer
) -> None:
    """The review's reproduction. Given a task that ended partial (file 0 stored, file 1 gone),
    when a success callback with other URLs replaces file 0 and its attempt is given up before
    its manifest is written (its lease lapsed while file 1 downloaded), then the task is failed,
    with why, not partial, and so is its manifest, which describes file 0 as it is stored now:
    the partial manifest left there described file 0's earlier bytes."""
    a_urls = [file_server.add("/a0.png", png_bytes(0)), file_server.url("/a1.png")]
    assert short_lease.parts().processor.process(callback(a_urls)) is TaskState.PARTIAL
    store = short_lease.parts().store
    b_urls = [
        file_server.add("/b0.png", png_bytes(10)),
        file_server.add("/b1.png", png_bytes(11), delay_s=1.5),
    ]

    def file_0_replaced() -> bool:
        info = store.stat("tasks/task-1/0.png")
        return info is not None and info.came_from(b_urls[0]) and file_server.hits["/b1.png"] == 1

    give_up(
        short_lease, callback(b_urls), cut_off_during(short_lease, callback(b_urls), once=file_0_replaced)
    )

    assert store.get_bytes("tasks/task-1/0.png") == png_bytes(10)
    manifest = store.get_json("tasks/task-1/manifest.json")
    assert manifest["status"] == "failed"
    assert [(image["key"], image["sourceUrl"], image["sha256"]) for image in manifest["images"]] == [
        ("tasks/task-1/0.png", b_urls[0], hashlib.sha256(png_bytes(10)).hexdigest())
    ]
    record = tasks.get("task-1")
    assert record is not None
    assert record.state is TaskState.FAILED
    assert record.fields["reason"].startswith("gave up: TaskBusy: ")


def test_a_partial_task_given_up_before_any_file_of_it_was_replaced_stays_partial(
    short_lease: WorkerRuntime, tasks: TaskStore, file_server: FileServer
) -> None:
    """Given a task that ended partial (file 0 stored, file 1 gone), when the same callback finds
    file 1 back (slowly) and its attempt is given up while that downloads, then the task is
    partial again: storing a file the manifest does not list replaces nothing it describes."""
    urls = [file_server.add("/0.png", png_bytes(0)), file_server.url("/1.png")]
    assert short_lease.parts().processor.process(callback(urls)) is TaskState.PARTIAL
    file_server.add("/1.png", png_bytes(1), delay_s=1.5)

    exception = cut_off_during(short_lease, callback(urls), once=lambda: file_server.hits["/1.png"] == 2)
    give_up(short_lease, callback(urls), exception)

    assert file_server.hits["/0.png"] == 1
    record = tasks.get("task-1")
    assert record is not None
    assert record.state is TaskState.PARTIAL


def test_a_partial_task_given_up_keeps_only_the_files_its_manifest_describes(
    runtime: WorkerRuntime, storage_down: WorkerRuntime, tasks: TaskStore, file_server: FileServer
) -> None:
    """Given a task that ended partial (file 1 gone), whose later attempt stored file 1 (its link
    works now) and died before its manifest (object storage down after the upload)
    When the queue gives up on that message
    Then the task is partial again and file 1 is removed, as its manifest does not describe it:
    it stayed, in a bucket said to hold only the files the manifest lists."""
    urls = [file_server.add("/0.png", png_bytes(0)), file_server.url("/1.png")]
    assert runtime.parts().processor.process(callback(urls)) is TaskState.PARTIAL
    store = runtime.parts().store
    manifest = store.get_json("tasks/task-1/manifest.json")
    image = png_bytes(1)
    store.put_file(  # what the attempt that died stored
        "tasks/task-1/1.png",
        io.BytesIO(image),
        size=len(image),
        content_type="image/png",
        sha256=hashlib.sha256(image).hexdigest(),
    )

    give_up(runtime, callback(urls), last_attempt(storage_down, callback(urls)))

    assert tasks.get("task-1").state is TaskState.PARTIAL  # type: ignore[union-attr]
    assert store.get_bytes("tasks/task-1/1.png") is None
    assert store.get_json("tasks/task-1/manifest.json") == manifest
    assert store.get_bytes("tasks/task-1/0.png") == png_bytes(0)


@pytest.mark.parametrize("outcome", [None, TaskState.PARTIAL], ids=["new", "processed again"])
def test_a_message_given_up_as_busy_leaves_a_task_another_worker_holds_alone(
    runtime: WorkerRuntime, tasks: TaskStore, file_server: FileServer, outcome: TaskState | None
) -> None:
    """Given a task another worker is processing right now (maybe again, after it ended partial),
    when the last attempt at a message of it finds it busy and the queue gives up on that, then
    the task stays processing, with its outcome: the holder settles it."""
    if outcome is not None:
        tasks.move("task-1", outcome, reason="earlier outcome")
    urls = [file_server.add("/0.png", png_bytes(0))]
    with LeaseManager(tasks.client, ttl_s=30).hold("task-1"):
        tasks.move("task-1", TaskState.PROCESSING)
        with pytest.raises(TaskBusy) as raised:
            runtime.parts().processor.process(callback(urls), final_attempt=True)

        give_up(runtime, callback(urls), raised.value)

        assert_left_to_the_holder(tasks, outcome)
    assert file_server.hits == {}


def test_a_message_given_up_for_its_own_error_leaves_a_task_another_worker_took_meanwhile_alone(
    storage_down: WorkerRuntime, tasks: TaskStore, file_server: FileServer
) -> None:
    """Given a message whose last attempt failed (object storage down), when another worker took
    the task (a duplicate callback's message) before the queue gave up on the first, then the
    task stays processing: the new holder settles it, a failure recorded now would overrule it."""
    urls = [file_server.add("/0.png", png_bytes(0))]
    exception = last_attempt(storage_down, callback(urls))
    with LeaseManager(tasks.client, ttl_s=30).hold("task-1"):
        tasks.move("task-1", TaskState.PROCESSING)

        give_up(storage_down, callback(urls), exception)

        assert_left_to_the_holder(tasks, None)


def test_a_task_left_to_a_lease_nobody_holds_any_more_is_failed_once_it_lapsed(
    short_lease: WorkerRuntime, tasks: TaskStore, file_server: FileServer
) -> None:
    """Given a task processing under a lease its worker could not release (Redis away at that
    moment: the key stays until its TTL), when the queue gives up on its message, then the task
    is left alone at first (a live holder would settle it) and failed, with the reason, once that
    lease has lapsed: nobody else would ever settle it."""
    tasks.move("task-1", TaskState.PROCESSING)
    tasks.client.set(keys.lease("task-1"), "a token nobody renews", px=1000)

    give_up(short_lease, callback([file_server.url("/0.png")]), DownloadFailed("connection reset"))

    assert tasks.get("task-1").state is TaskState.PROCESSING  # type: ignore[union-attr]
    sweeper = short_lease.start_second_looks()
    try:
        wait_for(lambda: tasks.get("task-1").state is TaskState.FAILED, timeout_s=15, what="the failure")  # type: ignore[union-attr]
    finally:
        sweeper.stop()
    assert tasks.get("task-1").fields["reason"] == "gave up: DownloadFailed: connection reset"  # type: ignore[union-attr]


def test_the_second_look_at_a_task_left_to_a_stale_lease_waits_in_redis_for_any_worker(
    settings: Settings, tasks: TaskStore, file_server: FileServer
) -> None:
    """Given a task left to a lease nobody holds any more when the queue gave up on its message
    When the worker that gave up stops before the lease lapsed, and another worker runs
    Then the other one fails the task with the reason once the lease lapsed: the second look was
    a timer in the memory of the first worker, lost with it (the task stayed processing)."""
    one_second = settings.model_copy(update={"lease_ttl_s": 1})
    tasks.move("task-1", TaskState.PROCESSING)
    tasks.client.set(keys.lease("task-1"), "a token nobody renews", px=1000)

    first = WorkerRuntime(one_second)
    first.parts()
    give_up(first, callback([file_server.url("/0.png")]), DownloadFailed("reset"))

    assert tasks.get("task-1").state is TaskState.PROCESSING  # type: ignore[union-attr]
    assert tasks.client.zcard(keys.GIVE_UPS_PENDING) == 1
    sweeper = WorkerRuntime(one_second).start_second_looks()
    try:
        wait_for(lambda: tasks.get("task-1").state is TaskState.FAILED, timeout_s=15, what="the failure")  # type: ignore[union-attr]
        wait_for(lambda: tasks.client.zcard(keys.GIVE_UPS_PENDING) == 0, timeout_s=5, what="the look done")
    finally:
        sweeper.stop()
    assert tasks.get("task-1").fields["reason"] == "gave up: DownloadFailed: reset"  # type: ignore[union-attr]


def assert_left_to_the_holder(tasks: TaskStore, outcome: TaskState | None) -> None:
    record = tasks.get("task-1")
    assert record is not None
    assert record.state is TaskState.PROCESSING
    assert record.fields.get(OUTCOME_FIELD) == (outcome.value if outcome else None)
    assert tasks.counts()["failed"] == 0


def test_a_message_given_up_as_busy_fails_a_task_nobody_holds_any_more(
    runtime: WorkerRuntime, tasks: TaskStore, file_server: FileServer
) -> None:
    """The holder's lease lapsed (it crashed): nobody else will settle the task."""
    tasks.move("task-1", TaskState.PROCESSING)

    give_up(runtime, callback([file_server.url("/0.png")]), TaskBusy("task task-1 is being processed"))

    record = tasks.get("task-1")
    assert record is not None
    assert record.state is TaskState.FAILED
    assert record.fields["reason"].startswith("gave up: TaskBusy: ")


def test_a_poll_pass_makes_one_attempt_per_task_while_the_provider_limits(
    settings: Settings, file_server: FileServer
) -> None:
    """Given the provider answering record-info 429 (come back in 1 s), when a worker's poll pass
    reaches an overdue task, then it asks once and the pass stops: a pass comes again every
    interval, while waiting out the client's retries (up to 4 x 60 s) would outlive the pass's
    lock and let a second pass start beside it."""
    file_server.add(
        "/api/v1/mj/record-info",
        b'{"code": 429, "msg": "rate limited"}',
        status=429,
        content_type="application/json",
        headers={"Retry-After": "1"},
    )
    runtime = WorkerRuntime(
        settings.model_copy(update={"provider_url": file_server.base_url, "provider_api_key": "k"}),
        broker=StubBroker(),
    )
    polling = runtime.parts().polling
    assert polling is not None
    long_ago = time.time() - 10 * settings.poll_grace_s
    client = runtime.parts().tasks.client
    back_then = TaskStore(client, ttl_s=86_400, clock=lambda: long_ago)
    SubmittedTasks(client, back_then, ttl_s=86_400, clock=lambda: long_ago).record("t-limited", {})

    summary = polling.poller.run_once()

    assert "429" in summary.stopped
    assert file_server.hits["/api/v1/mj/record-info"] == 1


def test_a_give_up_redis_refused_waits_for_redis_before_the_message_is_dead_lettered(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str, file_server: FileServer
) -> None:
    """Given a task being processed, and the queue giving up on its message while Redis is down
    (the outage that failed its last attempt)
    When Redis comes back
    Then the hook (after which dramatiq dead-letters the message) returns only once the task is
    failed with the reason and the dead letter's reason is kept: a worker stopping during the
    outage leaves the message unacknowledged, to be redelivered. The give-up was retried by a
    timer in the worker's memory, lost with it (the task processing for good), and the dead
    letter's reason was dropped."""
    redis_server = start_redis(tmp_path / "redis", appendonly=True)
    try:
        settings = Settings.from_env(
            app_environment(
                redis_url=redis_server.url,
                s3_endpoint=s3_server.endpoint,
                s3_access_key=s3_server.access_key,
                s3_secret_key=s3_server.secret_key,
                s3_bucket=s3_bucket,
            )
        )
        runtime = WorkerRuntime(settings)
        tasks = runtime.parts().tasks
        tasks.move("task-1", TaskState.PROCESSING)
        broker = create_broker(settings, client=connect_redis(settings.redis_url), middleware=[])
        message = dramatiq.MessageProxy(
            dramatiq.Message(
                queue_name=CALLBACK_QUEUE,
                actor_name=PROCESS_CALLBACK,
                args=(callback([file_server.url("/0.png")]).to_message(),),
                kwargs={},
                options={"redis_message_id": "m-1"},
            )
        )
        message.fail()
        redis_server.stop()

        hook = threading.Thread(
            target=runtime.after_process_message,
            args=(broker, message),
            kwargs={"exception": DownloadFailed("connection reset")},
        )
        hook.start()
        hook.join(timeout=2)
        assert hook.is_alive(), "the hook returned while Redis was down: the give-up was left to memory"
        redis_server.start()
        hook.join(timeout=30)

        assert not hook.is_alive()
        record = tasks.get("task-1")
        assert record is not None
        assert record.state is TaskState.FAILED
        assert record.fields["reason"] == "gave up: DownloadFailed: connection reset"
        kept = tasks.client.get(keys.dead_reason("m-1"))
        assert kept == b"gave up: DownloadFailed: connection reset"
    finally:
        redis_server.kill()


def test_a_task_given_up_gets_the_manifest_of_its_failure_where_it_has_none(
    runtime: WorkerRuntime, tasks: TaskStore, file_server: FileServer
) -> None:
    """Given a task whose last attempt raised before it wrote a manifest (here: its lease held by
    a worker that then crashed, so nobody settles it)
    When the queue gives up on its message
    Then the task is failed, and the bucket says so too: a manifest with status failed, the
    callback's fields and the reason as its error. A task failed this way had no manifest, so
    whoever waits for manifests in the bucket waited for good."""
    urls = [file_server.url("/0.png")]
    tasks.move("task-1", TaskState.PROCESSING)

    give_up(runtime, callback(urls), TaskBusy("task task-1 is being processed"))

    manifest = runtime.parts().store.get_json("tasks/task-1/manifest.json")
    assert manifest["status"] == "failed"
    assert (manifest["taskId"], manifest["code"], manifest["images"]) == ("task-1", 200, [])
    assert manifest["errors"] == [
        {"index": None, "sourceUrl": None, "reason": "gave up: TaskBusy: task task-1 is being processed"}
    ]
    assert tasks.get("task-1").state is TaskState.FAILED  # type: ignore[union-attr]


def test_a_manifest_a_task_has_stands_when_a_later_message_is_given_up(
    runtime: WorkerRuntime, tasks: TaskStore
) -> None:
    """Given a task failed by the provider's own failure report, with its manifest
    When a duplicate message of it is given up
    Then that manifest stays as it was (the provider's code and message), and so does the state."""
    failure = Callback(
        task_id="task-1",
        code=501,
        msg="generation failed",
        prompt_json=None,
        result_urls=(),
        received_at="2026-11-25T00:00:00.000Z",
    )
    assert runtime.parts().processor.process(failure) is TaskState.FAILED
    store = runtime.parts().store
    before = store.get_json("tasks/task-1/manifest.json")

    give_up(runtime, failure, TaskBusy("task task-1 is being processed"))

    assert store.get_json("tasks/task-1/manifest.json") == before
    assert before["code"] == 501


def test_a_task_whose_last_attempt_stored_it_but_failed_to_say_so_ends_stored(
    runtime: WorkerRuntime, tasks: TaskStore, file_server: FileServer
) -> None:
    """Given a task whose last attempt stored every file and its manifest, and then failed to
    move its state (Redis away for that last step): the task is still processing
    When the queue gives up on its message
    Then the task is stored, as its manifest says and its bucket holds: it was failed in Redis
    while the bucket said stored."""
    urls = [file_server.add("/0.png", png_bytes(0))]
    assert runtime.parts().processor.process(callback(urls)) is TaskState.STORED
    store = runtime.parts().store
    manifest = store.get_json("tasks/task-1/manifest.json")
    tasks.client.hdel(keys.task("task-1"), OUTCOME_FIELD)  # the state's move never happened
    tasks.move("task-1", TaskState.PROCESSING)

    give_up(runtime, callback(urls), redis.ConnectionError("Connection reset by peer"))

    record = tasks.get("task-1")
    assert record is not None
    assert (record.state, record.fields["reason"], record.fields["code"]) == (TaskState.STORED, "", "200")
    assert store.get_json("tasks/task-1/manifest.json") == manifest


def test_a_partial_task_whose_later_attempt_stored_it_but_failed_to_say_so_ends_stored(
    runtime: WorkerRuntime, tasks: TaskStore, file_server: FileServer
) -> None:
    """Given a partial task (file 1 gone) whose later attempt got file 1 too and wrote a stored
    manifest, then could not move the state (Redis away for that last step): the task is
    processing, its recorded outcome still partial
    When the queue gives up on that message (the outcome partial comes back)
    Then the task is stored, as the manifest describing its bucket says: it stayed partial."""
    urls = [file_server.add("/0.png", png_bytes(0)), file_server.url("/1.png")]
    assert runtime.parts().processor.process(callback(urls)) is TaskState.PARTIAL
    file_server.add("/1.png", png_bytes(1))
    assert runtime.parts().processor.process(callback(urls)) is TaskState.STORED
    tasks.move("task-1", TaskState.PROCESSING, **{OUTCOME_FIELD: "partial"})  # the move that failed

    give_up(runtime, callback(urls), redis.ConnectionError("Connection reset by peer"))

    record = tasks.get("task-1")
    assert record is not None
    assert (record.state, record.fields["reason"]) == (TaskState.STORED, "")
    assert runtime.parts().store.get_json("tasks/task-1/manifest.json")["status"] == "stored"


def test_a_task_given_up_while_storage_is_down_is_failed_without_a_manifest(
    storage_down: WorkerRuntime, tasks: TaskStore, file_server: FileServer
) -> None:
    """Object storage down is often why the queue gave up: the failure is recorded in Redis all
    the same, and the manifest that cannot be written is no error of the give-up."""
    tasks.move("task-1", TaskState.PROCESSING)

    give_up(storage_down, callback([file_server.url("/0.png")]), StorageUnavailable("down"))

    assert tasks.get("task-1").state is TaskState.FAILED  # type: ignore[union-attr]


def test_a_task_given_up_with_a_file_stored_gets_a_manifest_describing_it(
    runtime: WorkerRuntime, tasks: TaskStore, file_server: FileServer
) -> None:
    """Given a task whose first file is stored and whose second keeps failing for now
    When the queue gives up on it
    Then its failed manifest describes the stored file: the bucket holds only what its manifest
    describes. The manifest said no images, and `mjhook get` never fetched the stored file."""
    urls = [file_server.add("/a0.png", png_bytes(0)), file_server.add("/a1.png", b"busy", status=503)]
    with pytest.raises(DownloadFailed) as raised:
        runtime.parts().processor.process(callback(urls))

    give_up(runtime, callback(urls), raised.value)

    store = runtime.parts().store
    manifest = store.get_json("tasks/task-1/manifest.json")
    assert manifest["status"] == "failed"
    assert [(image["key"], image["sha256"]) for image in manifest["images"]] == [
        ("tasks/task-1/0.png", hashlib.sha256(png_bytes(0)).hexdigest())
    ]
    assert sorted(store.list_keys("tasks/task-1/")) == ["tasks/task-1/0.png", "tasks/task-1/manifest.json"]
    assert tasks.get("task-1").state is TaskState.FAILED  # type: ignore[union-attr]


def test_a_task_given_up_while_its_files_were_being_replaced_has_no_file_its_manifest_misdescribes(
    runtime: WorkerRuntime, tasks: TaskStore, file_server: FileServer
) -> None:
    """Given a task that ended partial (file 0 stored, file 1 gone), and a later success listing
    other results whose attempt replaced file 0 and failed for now on file 1
    When the queue gives up on the later success
    Then every file the manifest describes has the sha256 and size it says, and the bucket holds
    no other file: the partial manifest stood, describing file 0's earlier bytes."""
    processor = runtime.parts().processor
    first = [file_server.add("/a0.png", png_bytes(0)), file_server.add("/a1.png", b"", status=404)]
    assert processor.process(callback(first)) is TaskState.PARTIAL
    second = [file_server.add("/b0.png", png_bytes(7)), file_server.add("/b1.png", b"busy", status=503)]
    with pytest.raises(DownloadFailed) as raised:
        processor.process(callback(second))

    give_up(runtime, callback(second), raised.value)

    store = runtime.parts().store
    assert_failed_manifest_describes_the_bucket(store)


def assert_failed_manifest_describes_the_bucket(store: ObjectStore) -> None:
    """task-1's manifest says failed, and describes every file of the task the bucket holds, each
    with the sha256 and size it has, and no other."""
    manifest = store.get_json("tasks/task-1/manifest.json")
    assert manifest["status"] == "failed"
    for image in manifest["images"]:
        body = store.get_bytes(image["key"])
        assert body is not None
        assert (hashlib.sha256(body).hexdigest(), len(body)) == (image["sha256"], image["size"])
    files = {key for key in store.list_keys("tasks/task-1/") if not key.endswith("manifest.json")}
    assert files == {image["key"] for image in manifest["images"]}


def looked_at_again(runtime: WorkerRuntime) -> None:
    """Run ``runtime``'s second looks until none is pending, each made due now (as if the lease
    TTL + 1 s it waits had passed)."""
    client = runtime.parts().tasks.client
    client.zadd(keys.GIVE_UPS_PENDING, dict.fromkeys(client.zrange(keys.GIVE_UPS_PENDING, 0, -1), 0))
    sweeper = runtime.start_second_looks()
    try:
        wait_for(
            lambda: runtime.parts().tasks.client.zcard(keys.GIVE_UPS_PENDING) == 0,
            timeout_s=15,
            what="the second looks",
        )
    finally:
        sweeper.stop()


@pytest.fixture
def one_second_leases(settings: Settings) -> Settings:
    """Second looks taken every half second."""
    return settings.model_copy(update={"lease_ttl_s": 1})


def test_a_partial_task_given_up_while_storage_is_down_loses_its_undescribed_file_once_it_is_back(
    one_second_leases: Settings, tasks: TaskStore, file_server: FileServer
) -> None:
    """Given a task that ended partial (file 1's link failed), and a duplicate whose attempt
    stored file 1 (its link works now) before object storage went down
    When the queue gives up on the duplicate while storage is still down (why it gave up)
    Then the task is partial and, once storage is back, a second look removes file 1, which the
    partial manifest lists as failed: the repair was logged and never tried again."""
    runtime = WorkerRuntime(one_second_leases)
    ready_bucket(runtime.parts().store)
    urls = [file_server.add("/0.png", png_bytes(0)), file_server.url("/1.png")]
    assert runtime.parts().processor.process(callback(urls)) is TaskState.PARTIAL
    store = runtime.parts().store
    manifest = store.get_json("tasks/task-1/manifest.json")
    image = png_bytes(1)
    sha256 = hashlib.sha256(image).hexdigest()
    store.put_file(
        "tasks/task-1/1.png", io.BytesIO(image), size=len(image), content_type="image/png", sha256=sha256
    )
    down = WorkerRuntime(
        one_second_leases.model_copy(update={"s3_endpoint": f"http://127.0.0.1:{free_port()}"})
    )
    down.parts()

    give_up(down, callback(urls), last_attempt(down, callback(urls)))

    assert tasks.get("task-1").state is TaskState.PARTIAL  # type: ignore[union-attr]
    assert store.get_bytes("tasks/task-1/1.png") == image  # storage was down: nothing removed yet
    looked_at_again(runtime)
    assert store.get_bytes("tasks/task-1/1.png") is None
    assert store.get_json("tasks/task-1/manifest.json") == manifest


def test_a_task_given_up_while_storage_is_down_gets_its_failed_manifest_once_it_is_back(
    one_second_leases: Settings, tasks: TaskStore, file_server: FileServer
) -> None:
    """Given a task that ended partial and a later success whose attempt replaced file 0 and
    failed for now on file 1
    When the queue gives up on it while object storage is down
    Then, once storage is back, a second look writes the failed manifest describing the bucket:
    the partial one described file 0's earlier bytes for good."""
    runtime = WorkerRuntime(one_second_leases)
    ready_bucket(runtime.parts().store)
    processor = runtime.parts().processor
    first = [file_server.add("/a0.png", png_bytes(0)), file_server.add("/a1.png", b"", status=404)]
    assert processor.process(callback(first)) is TaskState.PARTIAL
    second = [file_server.add("/b0.png", png_bytes(7)), file_server.add("/b1.png", b"busy", status=503)]
    with pytest.raises(DownloadFailed):
        processor.process(callback(second))
    down = WorkerRuntime(
        one_second_leases.model_copy(update={"s3_endpoint": f"http://127.0.0.1:{free_port()}"})
    )
    down.parts()

    give_up(down, callback(second), last_attempt(down, callback(second)))

    assert tasks.get("task-1").state is TaskState.FAILED  # type: ignore[union-attr]
    store = runtime.parts().store
    assert store.get_json("tasks/task-1/manifest.json")["status"] == "partial"
    looked_at_again(runtime)
    assert_failed_manifest_describes_the_bucket(store)


# --- what a give-up counts ----------------------------------------------------------------------


def tasks_counted(metrics: WorkerMetrics, outcome: str) -> float:
    return metrics.registry.get_sample_value("mjhook_tasks_total", {"outcome": outcome}) or 0.0


def dead_lettered(runtime: WorkerRuntime, callback: Callback, exception: BaseException) -> None:
    """What dramatiq's hooks do once the queue gave up on ``callback``'s message: the runtime's
    and the metrics middleware's (workers/tasks.py wires both to the runtime's metrics)."""
    message = dramatiq.MessageProxy(
        dramatiq.Message(
            queue_name=CALLBACK_QUEUE,
            actor_name=PROCESS_CALLBACK,
            args=(callback.to_message(),),
            kwargs={},
            options={},
        )
    )
    message.fail()
    broker = StubBroker()
    runtime.after_process_message(broker, message, exception=exception)
    metrics = runtime.parts().metrics
    WorkerMetricsMiddleware(metrics, directory=Path("unused")).after_process_message(
        broker, message, exception=exception
    )


@pytest.fixture
def shared_metrics() -> WorkerMetrics:
    return create_worker_metrics()


def test_a_duplicate_given_up_leaves_a_partial_task_partial_and_counts_no_failed_task(
    settings: Settings, file_server: FileServer, shared_metrics: WorkerMetrics
) -> None:
    """The review's reproduction. Given a task that ended partial, when a duplicate callback's
    message finds object storage down until the queue gives up on it, then the task stays partial
    and is counted partial only: the message is counted given up (mjhook_task_failures), the
    task not failed (it was counted both partial and failed)."""
    runtime = WorkerRuntime(settings, metrics=shared_metrics)
    ready_bucket(runtime.parts().store)
    storage_down = WorkerRuntime(
        settings.model_copy(update={"s3_endpoint": f"http://127.0.0.1:{free_port()}"}), metrics=shared_metrics
    )
    urls = [file_server.add("/0.png", png_bytes(0)), file_server.url("/gone.png")]
    assert runtime.parts().processor.process(callback(urls)) is TaskState.PARTIAL

    dead_lettered(storage_down, callback(urls), last_attempt(storage_down, callback(urls)))

    assert runtime.parts().tasks.get("task-1").state is TaskState.PARTIAL  # type: ignore[union-attr]
    assert tasks_counted(shared_metrics, "partial") == 1
    assert tasks_counted(shared_metrics, "failed") == 0
    failures = shared_metrics.registry.get_sample_value(
        "mjhook_task_failures_total", {"reason": "StorageUnavailable"}
    )
    assert failures == 1


@pytest.mark.parametrize("state", sorted(FINAL_STATES))
def test_a_message_given_up_on_a_task_with_an_outcome_counts_no_failed_task(
    storage_down: WorkerRuntime, tasks: TaskStore, state: TaskState
) -> None:
    """A failed one included: it was counted when it failed."""
    tasks.move("task-1", state, reason="earlier outcome")

    dead_lettered(storage_down, callback([]), StorageUnavailable("down"))

    assert tasks.get("task-1").state is state  # type: ignore[union-attr]
    assert tasks_counted(storage_down.parts().metrics, "failed") == 0


def test_a_give_up_that_fails_the_task_counts_it_failed_once(
    storage_down: WorkerRuntime, tasks: TaskStore, file_server: FileServer
) -> None:
    """Given a task whose last attempt failed, when the queue gives up on its message, then the
    task is failed and counted failed; a duplicate's message given up after it counts no more."""
    urls = [file_server.add("/0.png", png_bytes(0))]
    exception = last_attempt(storage_down, callback(urls))

    dead_lettered(storage_down, callback(urls), exception)
    assert tasks.get("task-1").state is TaskState.FAILED  # type: ignore[union-attr]
    assert tasks_counted(storage_down.parts().metrics, "failed") == 1

    dead_lettered(storage_down, callback(urls), exception)
    assert tasks_counted(storage_down.parts().metrics, "failed") == 1


def test_two_workers_giving_up_one_task_at_once_count_it_failed_once(
    settings: Settings, tasks: TaskStore, shared_metrics: WorkerMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a task processing when the queue gives up on two messages of it in two workers at the
    same instant, when the second worker's give-up runs whole between the first's start and its
    move, then the task is counted failed once: only the give-up whose move failed it counts it
    (the first's read of the task, before the move, said processing)."""
    down = settings.model_copy(update={"s3_endpoint": f"http://127.0.0.1:{free_port()}"})
    first, second = (WorkerRuntime(down, metrics=shared_metrics) for _ in range(2))
    second.parts()
    tasks.move("task-1", TaskState.PROCESSING)
    first_store = first.parts().tasks
    give_up = first_store.give_up

    def the_other_worker_first(task_id: str, reason: str, *, look: tuple[bytes, int] | None = None) -> GiveUp:
        dead_lettered(second, callback([]), StorageUnavailable("down"))
        return give_up(task_id, reason, look=look)

    monkeypatch.setattr(first_store, "give_up", the_other_worker_first)

    dead_lettered(first, callback([]), StorageUnavailable("down"))

    assert tasks.get("task-1").state is TaskState.FAILED  # type: ignore[union-attr]
    assert tasks_counted(shared_metrics, "failed") == 1


def test_a_task_left_to_its_holder_is_counted_failed_only_by_the_second_look_that_fails_it(
    short_lease: WorkerRuntime, tasks: TaskStore, file_server: FileServer
) -> None:
    """Given a task processing under a lease nobody renews, when the queue gives up on its
    message, then the task is not counted failed while it is left to the holder, and is counted
    failed once the second look failed it."""
    tasks.move("task-1", TaskState.PROCESSING)
    tasks.client.set(keys.lease("task-1"), "a token nobody renews", px=1000)
    metrics = short_lease.parts().metrics

    dead_lettered(short_lease, callback([file_server.url("/0.png")]), DownloadFailed("connection reset"))

    assert tasks.get("task-1").state is TaskState.PROCESSING  # type: ignore[union-attr]
    assert tasks_counted(metrics, "failed") == 0
    sweeper = short_lease.start_second_looks()
    try:
        wait_for(lambda: tasks.client.zcard(keys.GIVE_UPS_PENDING) == 0, timeout_s=15, what="the second look")
    finally:
        sweeper.stop()
    assert tasks.get("task-1").state is TaskState.FAILED  # type: ignore[union-attr]
    assert tasks_counted(metrics, "failed") == 1


# --- a worker killed during a give-up -----------------------------------------------------------


class Killed(BaseException):
    """The worker process dies here (SIGKILL): nothing after this point runs."""


def sweep_due_looks(runtime: WorkerRuntime) -> int:
    """One sweep of ``runtime``'s second looks, taken as if their wait (the lease TTL + 1 s) had
    passed; how many were done."""
    client = runtime.parts().tasks.client
    due = PendingGiveUps(client, after_s=0, clock=lambda: time.time() + 3600)
    return SecondLookSweeper(due, runtime._look_again, interval_s=60, hold_s=60).sweep()


def test_a_worker_killed_between_a_give_up_and_its_manifest_leaves_a_look_that_writes_it(
    runtime: WorkerRuntime, storage_down: WorkerRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a failure report whose last attempt met object storage down
    When the worker giving it up dies after the task moved to failed, before the bucket agreed
    (or any second look was recorded, as the give-up did it in that order)
    Then the redelivered report is a duplicate of a final task, and only a second look can write
    the manifest: one was recorded before the move, and writes it once storage is back."""
    report = Callback("task-1", 501, "generation failed", None, (), "2026-11-25T00:00:00.000Z")
    parts = storage_down.parts()
    parts.tasks.mark_received("task-1", report.received_at)
    exception = last_attempt(storage_down, report)

    def die(*args: object, **kwargs: object) -> bool:
        raise Killed

    monkeypatch.setattr(storage_down, "_bucket_agrees", die)
    with pytest.raises(Killed):
        give_up(storage_down, report, exception)
    assert parts.tasks.get("task-1").state is TaskState.FAILED  # type: ignore[union-attr]
    # Redelivered (never acknowledged) to a worker whose storage works: a duplicate now.
    healthy = runtime.parts()
    assert healthy.processor.process(report, final_attempt=True) is TaskState.FAILED

    assert sweep_due_looks(runtime) == 1

    assert healthy.tasks.get("task-1").state is TaskState.FAILED  # type: ignore[union-attr]
    manifest = healthy.store.get_json("tasks/task-1/manifest.json")
    assert manifest is not None
    assert manifest["status"] == "failed"
    assert healthy.tasks.client.zcard(keys.GIVE_UPS_PENDING) == 0


def test_a_worker_killed_before_the_give_up_s_move_leaves_no_look_and_the_redelivered_message_decides(
    runtime: WorkerRuntime,
    storage_down: WorkerRuntime,
    file_server: FileServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given a success whose last attempt met object storage down
    When the worker giving it up dies before the give-up's move (its message, never acknowledged,
    is redelivered)
    Then no second look was left (the look goes in with the move, in one transaction): one due
    before the redelivery failed the task, wrote a failed manifest and counted it failed, and
    the redelivered message then stored it."""
    report = callback([file_server.add("/0.png", png_bytes(0))])
    healthy = runtime.parts()
    healthy.tasks.mark_received("task-1", report.received_at)
    exception = last_attempt(storage_down, report)

    def die(*args: object, **kwargs: object) -> GiveUp:
        raise Killed

    monkeypatch.setattr(storage_down.parts().tasks, "give_up", die)
    with pytest.raises(Killed):
        give_up(storage_down, report, exception)

    assert sweep_due_looks(runtime) == 0
    assert healthy.tasks.get("task-1").state is TaskState.PROCESSING  # type: ignore[union-attr]
    assert healthy.store.get_json("tasks/task-1/manifest.json") is None
    assert healthy.processor.process(report, final_attempt=True) is TaskState.STORED
    assert tasks_counted(healthy.metrics, "failed") == 0


def test_a_reply_that_cannot_be_read_while_keeping_the_dead_reason_stops_no_give_up(
    runtime: WorkerRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given the reason kept beside a dead letter answered with a reply redis-py cannot read
    (InvalidResponse: neither a connection error nor an error answer)
    When the last attempt at a task gives up
    Then the task is still recorded failed with its reason: the error escaped the hook, dramatiq
    logged it, and the task stayed processing for good."""
    runtime.parts().tasks.move("task-1", TaskState.PROCESSING)

    def garbled(*args: object) -> None:
        raise redis.exceptions.InvalidResponse("Protocol Error: b'\\x00'")

    monkeypatch.setattr(runtime, "_record_dead_reason", garbled)
    monkeypatch.setattr("workers.retries.time.sleep", lambda s: None)

    give_up(runtime, callback(["http://127.0.0.1:9/a.png"]), RuntimeError("boom"))

    record = runtime.parts().tasks.get("task-1")
    assert record is not None
    assert record.state is TaskState.FAILED
    assert "gave up: RuntimeError: boom" in record.fields["reason"]
