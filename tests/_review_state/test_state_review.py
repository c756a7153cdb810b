"""Review reproductions for the task state machine (each test FAILS because of a defect)."""

from __future__ import annotations

import threading
import time
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker

from shared.callback import Callback
from shared.errors import DownloadFailed, StorageUnavailable
from shared.settings import Settings
from shared.taskstate import TaskState, TaskStore
from tests.support.procs import free_port
from tests.support.servers import FileServer, png_bytes
from workers import runtime as runtime_module
from workers.runtime import WorkerRuntime, wait_for_bucket


def callback(urls: list[str], *, task_id: str = "task-1", code: int = 200) -> Callback:
    return Callback(
        task_id=task_id,
        code=code,
        msg="success" if code == 200 else "generation failed",
        prompt_json=None,
        result_urls=tuple(urls),
        received_at="2026-11-25T00:00:00.000Z",
    )


def failed_message(cb: Callback) -> dramatiq.MessageProxy:
    message = dramatiq.MessageProxy(
        dramatiq.Message(
            queue_name="callbacks",
            actor_name="process_callback",
            args=(cb.to_message(),),
            kwargs={},
            options={},
        )
    )
    message.fail()
    return message


@pytest.fixture
def settings(app_env: dict[str, str]) -> Settings:
    return Settings.from_env(app_env)


@pytest.fixture
def runtime(settings: Settings) -> WorkerRuntime:
    runtime = WorkerRuntime(settings)
    wait_for_bucket(runtime.parts().store, timeout_s=30)
    return runtime


@pytest.fixture
def storage_down(settings: Settings) -> WorkerRuntime:
    runtime = WorkerRuntime(settings.model_copy(update={"s3_endpoint": f"http://127.0.0.1:{free_port()}"}))
    runtime.parts()
    return runtime


# --- 1. a failure callback overwrites a partial result while the task is between attempts -----


def test_a_failure_callback_never_overwrites_a_partial_result_left_processing_between_attempts(
    runtime: WorkerRuntime, storage_down: WorkerRuntime, file_server: FileServer
) -> None:
    """Given a task that ended partial (file 0 stored, file 1 gone), and a duplicate success whose
    attempt met object storage down (retried later: the task is left 'processing', its outcome
    'partial' kept), when a failure callback of the task is processed meanwhile, then the partial
    result must stand (as it does when the record says 'partial'): _settled_state only looks at
    the state, not at the outcome the 'processing' record keeps."""
    tasks = runtime.parts().tasks
    store = runtime.parts().store
    urls = [file_server.add("/0.png", png_bytes(0)), file_server.url("/gone.png")]
    assert runtime.parts().processor.process(callback(urls)) is TaskState.PARTIAL

    with pytest.raises(StorageUnavailable):
        storage_down.parts().processor.process(callback(urls))  # not the final attempt: retried later
    record = tasks.get("task-1")
    assert record is not None and record.state is TaskState.PROCESSING
    assert record.fields["outcome"] == "partial"

    runtime.parts().processor.process(callback([], code=500))

    assert store.get_json("tasks/task-1/manifest.json")["status"] == "partial"
    assert tasks.get("task-1").state is TaskState.PARTIAL  # type: ignore[union-attr]


# --- 2. a give-up that meets a Redis error is never tried again: task stuck forever ---------------


def test_a_give_up_that_meets_a_redis_error_is_tried_again(
    runtime: WorkerRuntime, file_server: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a message whose final attempt failed (the task left 'processing'), when recording the
    give-up meets a Redis blip (the same outage that failed the attempt, or a failover), then
    WorkerRuntime._give_up returns None, and `None in UNSETTLED_STATES` is False, so no second
    look is scheduled (unlike a held lease): the task stays 'processing' forever, with no reason,
    although its message is dead-lettered."""
    tasks = runtime.parts().tasks
    tasks.move("task-1", TaskState.PROCESSING)
    real_give_up = TaskStore.give_up
    calls = {"n": 0}

    def flaky_give_up(self: TaskStore, task_id: str, reason: str) -> TaskState:
        calls["n"] += 1
        if calls["n"] == 1:
            raise redis.ConnectionError("Connection refused")
        return real_give_up(self, task_id, reason)

    monkeypatch.setattr(TaskStore, "give_up", flaky_give_up)
    # Run any second look at once instead of lease_ttl_s + 1 seconds later.
    started: list[Any] = []

    class ImmediateTimer:
        def __init__(self, _interval: float, function: Any, args: Any = (), kwargs: Any = None) -> None:
            self.daemon = True
            started.append((function, args, kwargs or {}))

        def start(self) -> None:
            function, args, kwargs = started[-1]
            function(*args, **kwargs)

    monkeypatch.setattr(runtime_module.threading, "Timer", ImmediateTimer)

    cb = callback([file_server.url("/0.png")])
    runtime.after_process_message(StubBroker(), failed_message(cb), exception=DownloadFailed("reset"))

    record = tasks.get("task-1")
    assert record is not None
    assert record.state is TaskState.FAILED, f"task left {record.state.value}; give_up tried {calls['n']}x"


# --- 3. mjhook status counts expired tasks ------------------------------------------------------


def test_status_counts_drop_tasks_whose_record_expired(client: redis.Redis) -> None:
    """counts() is ZCARD of each state index; an index is trimmed (ZREMRANGEBYSCORE) only when a
    task moves INTO that same state. A state nothing enters any more (no failure for a TTL) keeps
    counting tasks whose records expired long ago: `mjhook status` drifts from what get() finds."""
    tasks = TaskStore(client, ttl_s=1)
    tasks.move("t-failed", TaskState.FAILED, reason="x")
    tasks.move("t-partial", TaskState.PARTIAL)
    time.sleep(1.5)
    assert tasks.get("t-failed") is None and tasks.get("t-partial") is None
    tasks.move("t-new", TaskState.STORED)  # traffic goes on, in other states

    counts = tasks.counts()
    assert counts["failed"] == 0 and counts["partial"] == 0, counts


# --- 4. an upload left running by an attempt that raised lands after the next holder's ----------


class _SlowFile1Store:
    """The worker's store, except that its upload of file 0 fails at once (object storage
    answering 503 for it) and its upload of file 1 is slow: it starts, then waits for ``go``."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.go = threading.Event()
        self.file_1_started = threading.Event()
        self.file_1_done = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def put_file(self, key: str, data: Any, **kwargs: Any) -> None:
        if key.endswith("/0.png"):
            self.file_1_started.wait(30)  # file 1's upload is under way when file 0's fails
            raise StorageUnavailable("503 Slow Down")
        self.file_1_started.set()
        self.go.wait(30)
        try:
            self._store.put_file(key, data, **kwargs)
        finally:
            self.file_1_done.set()


def test_an_upload_left_running_by_a_failed_attempt_never_overwrites_the_next_holders_file(
    settings: Settings, file_server: FileServer
) -> None:
    """Given worker A processing a task whose file 0 upload fails at once (StorageUnavailable is
    re-raised by _store_files without waiting for the other futures) while its file 1 upload is
    still in flight, A's `with hold()` ends and releases the lease. Worker B then takes the task
    (a later callback of it with other results: success after failed, or verified URLs) and
    stores it. A's in-flight upload (it passed lease.check() before B came) lands afterwards:
    tasks/task-1/1.png is A's bytes while B's manifest and 'stored' state describe B's."""
    a = WorkerRuntime(settings)
    wait_for_bucket(a.parts().store, timeout_s=30)
    b = WorkerRuntime(settings)
    slow = _SlowFile1Store(a.parts().store)
    a.parts().processor._store = slow  # type: ignore[attr-defined]
    a_urls = [file_server.add("/a0.png", png_bytes(0)), file_server.add("/a1.png", png_bytes(1))]
    b_urls = [file_server.add("/b0.png", png_bytes(10)), file_server.add("/b1.png", png_bytes(11))]

    with pytest.raises(StorageUnavailable):
        a.parts().processor.process(callback(a_urls))
    assert slow.file_1_started.is_set() and not slow.file_1_done.is_set()

    assert b.parts().processor.process(callback(b_urls)) is TaskState.STORED
    slow.go.set()
    assert slow.file_1_done.wait(30)

    store = b.parts().store
    manifest = store.get_json("tasks/task-1/manifest.json")
    assert manifest["images"][1]["sourceUrl"] == b_urls[1]
    assert b.parts().tasks.get("task-1").state is TaskState.STORED  # type: ignore[union-attr]
    assert store.get_bytes("tasks/task-1/1.png") == png_bytes(11), "A's late upload replaced B's stored file"


# --- 5. re-verification turns a late success into a failure that overwrites a partial result ----


def test_a_success_the_provider_no_longer_knows_never_overwrites_a_partial_result(
    runtime: WorkerRuntime, file_server: FileServer
) -> None:
    """Given a task that ended partial (file 0 stored), when another success message of it is
    processed with MJHOOK_VERIFY_RESULTS on (a duplicate, or a dead letter replayed days later)
    and the provider no longer knows the task (404: its record aged out), then the verifier turns
    it into a failure AFTER _settled_state let it through: a 'failed' manifest replaces the partial
    one, the state becomes 'failed', file 0 stays in the bucket undescribed."""
    from shared.errors import ProviderRefused
    from workers.verify import ResultVerifier

    processor = runtime.parts().processor
    urls = [file_server.add("/0.png", png_bytes(0)), file_server.url("/gone.png")]
    assert processor.process(callback(urls)) is TaskState.PARTIAL

    def record_info(task_id: str) -> Any:
        raise ProviderRefused("no such task", code=404)

    processor._verifier = ResultVerifier(record_info)  # type: ignore[attr-defined]
    processor.process(callback(urls))

    store = runtime.parts().store
    assert store.get_json("tasks/task-1/manifest.json")["status"] == "partial"
    assert runtime.parts().tasks.get("task-1").state is TaskState.PARTIAL  # type: ignore[union-attr]


# --- 6. Lease.check() trusts a stale 'lost' flag past the lease's TTL --------------------------


def test_a_lease_past_its_ttl_without_a_renewal_fails_the_check(client: redis.Redis) -> None:
    """Lease.check() (before every file upload and deletion) only reads the flag the renewer sets.
    The renewer looks every ttl/3, and a renewal blocked on an unreachable Redis takes up to
    socket_timeout (5 s) x 2 attempts: so for several seconds after the lease lapsed in Redis (and
    another worker may hold it) check() still passes, although the holder's own clock already says
    no renewal succeeded within the TTL."""
    from shared import keys
    from shared.errors import TaskBusy
    from workers.lease import Lease

    now = {"t": 0.0}
    client.set(keys.lease("task-1"), "tok", px=20_000)
    lease = Lease(
        key=keys.lease("task-1"),
        token="tok",
        ttl_ms=20_000,
        renew=client.register_script("return 1"),
        clock=lambda: now["t"],
        taken_at=0.0,
    )
    now["t"] = 25.0  # no renewal got through for 25 s: the lease lapsed 5 s ago
    with pytest.raises(TaskBusy):
        lease.check()
