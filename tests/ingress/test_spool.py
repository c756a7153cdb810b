"""The ingress's spool: callbacks kept on local disk while Redis is away, drained when it is back."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import falcon.asgi
import orjson
import pytest
import redis
from falcon import testing

from ingress import spool as spool_module
from ingress.app import build_ingress, create_app
from ingress.spool import DRAINING_MARK, REQUEUED_NAME, UNQUEUED_NAME, Spool, SpoolDrainer
from shared import keys
from shared.callback import Callback
from shared.errors import QueueUnavailable, SpoolUnavailable
from shared.redis_client import connect_redis
from shared.settings import Settings
from tests.ingress.test_callbacks import queued_messages
from tests.support.pipeline import wait_for
from tests.support.servers import RedisServer
from tests.support.stack import REPO_ROOT

#: Nothing listens on port 1.
DEAD_REDIS = "redis://127.0.0.1:1/0"


def callback(task_id: str) -> Callback:
    return Callback(
        task_id=task_id,
        code=200,
        msg="success",
        prompt_json='{"prompt": "x"}',
        result_urls=("https://example.com/a.png",),
        received_at="2026-11-25T00:00:00.000Z",
    )


def test_spooled_callbacks_drain_in_order_and_the_files_go(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, pid=lambda: 11)
    for i in range(3):
        spool.append(callback(f"t{i}"))
    assert spool.depth() == 3
    taken: list[str] = []
    assert spool.drain(lambda cb: taken.append(cb.task_id)) == 3
    assert taken == ["t0", "t1", "t2"]
    assert list(tmp_path.iterdir()) == []


def taking_all_but(taken: list[str], refused: str) -> Callable[[Callback], None]:
    """A drain's accept that adds each callback's taskId to ``taken``, but ``refused``'s, for which
    the queue is away (QueueUnavailable)."""

    def accept(cb: Callback) -> None:
        if cb.task_id == refused:
            raise QueueUnavailable("down again")
        taken.append(cb.task_id)

    return accept


def test_a_failed_drain_keeps_what_was_not_taken(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, pid=lambda: 11)
    for i in range(4):
        spool.append(callback(f"t{i}"))
    taken: list[str] = []

    accept = taking_all_but(taken, "t2")
    assert spool.drain(accept) == 2
    assert spool.depth() == 2
    assert spool.drain(lambda cb: taken.append(cb.task_id)) == 2
    assert taken == ["t0", "t1", "t2", "t3"]


def test_a_spool_file_a_paused_drain_rewrote_stays_readable_by_its_owner_alone(tmp_path: Path) -> None:
    """Given spooled callbacks (a line may hold the callback's token: its promptJson echoes the
    callback URL) and a umask that lets others read new files
    When a drain sets the first aside and pauses at the second, so that the rest of the file is
    rewritten, and the one set aside is requeued
    Then the rewritten file is mode 0600 like the one it replaces, and so is every other file the
    spool made: the rewritten one used to take the umask's 0644."""
    old_umask = os.umask(0o022)
    try:
        spool = Spool(tmp_path, max_bytes=1 << 20, pid=lambda: 11)
        for i in range(3):
            spool.append(callback(f"t{i}"))

        def accept(cb: Callback) -> None:
            if cb.task_id == "t0":
                raise RuntimeError("the queue refuses this one for good")
            raise QueueUnavailable("down again")

        assert spool.drain(accept) == 1
        assert spool.requeue_unqueued() == 1
    finally:
        os.umask(old_umask)
    assert spool.depth() == 3
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in tmp_path.iterdir()}
    assert modes.pop(REQUEUED_NAME) == 0o600
    [(rewritten, mode)] = modes.items()  # renamed by the drain that took it
    assert rewritten.startswith(f"spool-11{DRAINING_MARK}")
    assert mode == 0o600


def test_a_drain_that_pauses_at_an_older_file_takes_nothing_from_newer_ones(tmp_path: Path) -> None:
    """Given two processes' spool files, the older one's callback refused for now (Redis away)
    When a drain round runs
    Then it pauses there and takes nothing from the newer file; the next round takes both, in the
    order they were spooled."""
    Spool(tmp_path, max_bytes=1 << 20, pid=lambda: 1).append(callback("old"))
    os.utime(tmp_path / "spool-1.jsonl", (1000, 1000))
    Spool(tmp_path, max_bytes=1 << 20, pid=lambda: 2).append(callback("new"))
    spool = Spool(tmp_path, max_bytes=1 << 20)
    taken: list[str] = []

    accept = taking_all_but(taken, "old")
    assert spool.drain(accept) == 0
    assert taken == []
    assert spool.depth() == 2
    assert spool.drain(lambda cb: taken.append(cb.task_id)) == 2
    assert taken == ["old", "new"]


def test_a_restarted_ingress_drains_the_files_of_its_previous_processes(tmp_path: Path) -> None:
    for pid in (101, 102):
        Spool(tmp_path, max_bytes=1 << 20, pid=lambda pid=pid: pid).append(callback(f"from-{pid}"))
    restarted = Spool(tmp_path, max_bytes=1 << 20, pid=lambda: 999)
    taken: list[str] = []
    assert restarted.drain(lambda cb: taken.append(cb.task_id)) == 2
    assert sorted(taken) == ["from-101", "from-102"]


def test_a_full_spool_refuses(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=400, pid=lambda: 1)  # two lines of 161 bytes
    spool.append(callback("t0"))
    spool.append(callback("t1"))
    with pytest.raises(SpoolUnavailable, match="full"):
        spool.append(callback("t2"))
    assert spool.depth() == 2


def test_an_unwritable_spool_refuses(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")
    with pytest.raises(SpoolUnavailable, match="cannot write"):
        Spool(blocker, max_bytes=1 << 20).append(callback("t0"))


def test_an_unreadable_line_is_dropped_and_the_rest_drains(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, pid=lambda: 5)
    spool.append(callback("good-1"))
    with (tmp_path / "spool-5.jsonl").open("ab") as handle:
        handle.write(b'{"taskId": "../evil"}\n')
    spool.append(callback("good-2"))
    taken: list[str] = []
    assert spool.drain(lambda cb: taken.append(cb.task_id)) == 3
    assert taken == ["good-1", "good-2"]


def test_an_unreadable_line_is_logged_without_the_callback_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a spooled line torn by a crash, whose promptJson echoes the callBackUrl mjhook submit
    sent, MJHOOK_CALLBACK_TOKEN and all
    When the drain drops it
    Then the log has the line without that URL's value: the token is no log's to keep."""
    prompt = {"prompt": "a lake", "callBackUrl": "https://hooks.example/callbacks/midjourney?token=s3cret"}
    line = orjson.dumps({**callback("torn").to_message(), "promptJson": orjson.dumps(prompt).decode()})
    (tmp_path / "spool-5.jsonl").write_bytes(line[:-30] + b"\n")
    with caplog.at_level(logging.ERROR, logger="ingress.spool"):
        Spool(tmp_path, max_bytes=1 << 20, pid=lambda: 5).drain(lambda cb: None)
    [message] = [record.getMessage() for record in caplog.records]
    assert message.startswith("dropping an unreadable line of ")
    assert "a lake" in message
    assert "s3cret" not in message


#: Appends callbacks t0, t1, t2 (lines of one length) to a spool in argv[1] under a file size
#: limit of one and a half lines (SIGXFSZ ignored, so a write past it is cut short, then fails
#: with EFBIG, as on a disk filling up); prints which appends returned.
_APPEND_UNDER_LIMIT = """
import resource, signal, sys
from pathlib import Path
import orjson
from ingress.spool import Spool
from shared.callback import Callback
from shared.errors import SpoolUnavailable

def callback(task_id):
    return Callback(task_id=task_id, code=200, msg="success", prompt_json="{}",
                    result_urls=("https://example.com/a.png",), received_at="2026-11-25T00:00:00Z")

line = len(orjson.dumps(callback("t0").to_message())) + 1
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (line * 3 // 2, line * 3 // 2))
spool = Spool(Path(sys.argv[1]), max_bytes=1 << 20, pid=lambda: 1)
for task_id in ("t0", "t1", "t2"):
    try:
        spool.append(callback(task_id))
        print("appended", task_id)
    except SpoolUnavailable as exc:
        print("refused", task_id, exc)
"""


def test_an_append_the_disk_takes_only_part_of_is_refused_and_cut_off(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _APPEND_UNDER_LIMIT, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    outcomes = [row.split()[:2] for row in done.stdout.splitlines()]
    assert outcomes == [["appended", "t0"], ["refused", "t1"], ["refused", "t2"]], done.stdout
    kept = (tmp_path / "spool-1.jsonl").read_bytes()
    assert kept.count(b"\n") == 1  # nothing left of t1 or t2
    assert kept.endswith(b"\n")
    spool = Spool(tmp_path, max_bytes=1 << 20, pid=lambda: 1)
    spool.append(callback("t3"))  # room again: on a line of its own
    taken: list[str] = []
    assert spool.drain(lambda cb: taken.append(cb.task_id)) == 2
    assert taken == ["t0", "t3"]


def test_an_append_after_a_torn_line_starts_a_line_of_its_own(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, pid=lambda: 5)
    spool.append(callback("good-1"))
    with (tmp_path / "spool-5.jsonl").open("ab") as handle:
        handle.write(b'{"taskId": "torn", "co')  # a crash in the middle of a write
    spool.append(callback("good-2"))
    taken: list[str] = []
    spool.drain(lambda cb: taken.append(cb.task_id))
    assert taken == ["good-1", "good-2"]


def test_the_ingress_answers_200_while_redis_is_down_and_drains_when_it_returns(
    tmp_path: Path, client: redis.Redis, redis_server
) -> None:
    spool_dir = tmp_path / "spool"
    body = {"code": 200, "msg": "ok", "data": {"taskId": "t-outage", "resultUrls": []}}
    dead = connect_redis(DEAD_REDIS, timeout_s=0.2)
    down = build_ingress(Settings(redis_url=DEAD_REDIS, spool_dir=str(spool_dir)), redis_client=dead)
    response = testing.TestClient(down.app).simulate_post(
        "/callbacks/midjourney", body=orjson.dumps(body), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200
    assert down.spool is not None
    assert down.spool.depth() == 1
    assert os.listdir(spool_dir) == [f"spool-{os.getpid()}.jsonl"]
    # Redis is back: a (new) ingress drains the spool into the queue.
    up = build_ingress(Settings(redis_url=redis_server.url, spool_dir=str(spool_dir)), redis_client=client)
    assert up.spool is not None
    assert up.spool.drain(up.intake.enqueue) == 1
    assert client.llen("dramatiq:callbacks") == 1
    assert client.hget("mjhook:task:t-outage", "state") == b"received"


def test_a_full_spool_with_redis_down_is_a_503(tmp_path: Path) -> None:
    body = {"code": 200, "msg": "ok", "data": {"taskId": "t1", "resultUrls": []}}
    dead = connect_redis(DEAD_REDIS, timeout_s=0.2)
    ingress = build_ingress(
        Settings(redis_url=DEAD_REDIS, spool_dir=str(tmp_path), spool_max_bytes=10), redis_client=dead
    )
    response = testing.TestClient(ingress.app).simulate_post(
        "/callbacks/midjourney", body=orjson.dumps(body), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 503


def test_an_append_is_not_refused_because_another_file_was_drained_meanwhile(tmp_path: Path) -> None:
    """Given another process's spool file spooled and drained (removed) over and over, as drainer
    threads do while Redis comes and goes, when this process appends, then no append is refused:
    sizing the spool met files removed between listing and stat, and answered 503 for them."""
    other = Spool(tmp_path, max_bytes=1 << 30, pid=lambda: 999)
    mine = Spool(tmp_path, max_bytes=1 << 30, pid=lambda: 1)
    stop = threading.Event()
    counts = {"appended": 0, "drained": 0}

    def spool_and_drain() -> None:
        while not stop.is_set():
            other.append(callback("other"))
            counts["appended"] += 1
            counts["drained"] += other.drain(lambda _callback: None)  # this process's file too
            other.depth()

    churn = threading.Thread(target=spool_and_drain)
    churn.start()
    refused: list[str] = []
    try:
        for _ in range(3000):
            try:
                mine.append(callback("mine"))
            except SpoolUnavailable as exc:
                refused.append(str(exc))
    finally:
        stop.set()
        churn.join()
    assert refused == []
    assert counts["drained"] + mine.depth() == 3000 + counts["appended"]  # each line once


def test_a_drain_that_takes_nothing_leaves_the_file_as_it_is(tmp_path: Path) -> None:
    """While Redis is down every drain round fails on the first line: it must not copy, fsync and
    rename the whole file (up to MJHOOK_SPOOL_MAX_BYTES per round and process, on a disk that may
    be filling up) when nothing left it. (The first renames it, so that appends start a file of
    their own; the next ones leave even its name.)"""
    spool = Spool(tmp_path, max_bytes=1 << 30, pid=lambda: 7)
    for i in range(200):
        spool.append(callback(f"t{i}"))
    before = (tmp_path / "spool-7.jsonl").stat()

    def redis_down(_callback: Callback) -> None:
        raise QueueUnavailable("cannot record the task: ConnectionError")

    assert spool.drain(redis_down) == 0
    [path] = tmp_path.glob("spool-*.jsonl")
    assert spool.drain(redis_down) == 0
    assert list(tmp_path.glob("spool-*.jsonl")) == [path]
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    "poison",
    [
        pytest.param(lambda c: c.set(keys.task("poison"), "not a task record"), id="key-of-another-type"),
        pytest.param(lambda c: c.hset(keys.task("poison"), "state", "archived"), id="unknown-state"),
    ],
)
def test_a_spooled_callback_the_queue_refuses_for_good_is_set_aside_and_the_rest_drains(
    tmp_path: Path, client: redis.Redis, redis_server, poison: Callable[[redis.Redis], object]
) -> None:
    """Given spooled callbacks, the first of a task whose record Redis holds unusable (a key of
    another type, a state this version does not know)
    When drain rounds run
    Then that one is set aside in unqueued.jsonl, in the spool's own format (renamed to a spool
    file, it is drained again), with its message queued at most once, and the callbacks behind it
    are queued. It used to stop every drain there, for good, and queue its message once more on
    each try."""
    poison(client)
    spool_dir = tmp_path / "spool"
    settings = Settings(redis_url=redis_server.url, spool_dir=str(spool_dir))
    ingress = build_ingress(settings, redis_client=client)
    assert ingress.spool is not None
    ingress.spool.append(callback("poison"))
    ingress.spool.append(callback("innocent"))

    for _ in range(3):
        ingress.spool.drain(ingress.intake.enqueue)

    queued = [message["args"][0]["taskId"] for message in queued_messages(client)]  # type: ignore[index]
    assert "innocent" in queued
    assert queued.count("poison") <= 1
    assert ingress.spool.depth() == 0
    set_aside = (spool_dir / UNQUEUED_NAME).read_bytes().splitlines()
    assert [Callback.from_message(orjson.loads(line)).task_id for line in set_aside] == ["poison"]


def test_callbacks_set_aside_are_queued_once_requeued_after_their_cause_is_fixed(
    tmp_path: Path, client: redis.Redis, redis_server
) -> None:
    """Given a spooled callback set aside because its task's record was unusable
    When the record is mended and the set-aside callbacks are requeued
    Then the next drain queues it, and nothing is left aside or waiting."""
    client.set(keys.task("poison"), "not a task record")
    settings = Settings(redis_url=redis_server.url, spool_dir=str(tmp_path / "spool"))
    ingress = build_ingress(settings, redis_client=client)
    assert ingress.spool is not None
    ingress.spool.append(callback("poison"))
    ingress.spool.drain(ingress.intake.enqueue)
    assert (ingress.spool.unqueued(), ingress.spool.depth()) == (1, 0)
    client.delete(keys.task("poison"))

    assert ingress.spool.requeue_unqueued() == 1
    assert (ingress.spool.unqueued(), ingress.spool.depth()) == (0, 1)
    ingress.spool.drain(ingress.intake.enqueue)

    assert [message["args"][0]["taskId"] for message in queued_messages(client)] == ["poison"]  # type: ignore[index]
    assert (ingress.spool.unqueued(), ingress.spool.depth()) == (0, 0)
    assert ingress.spool.requeue_unqueued() == 0


def test_a_requeue_adds_to_lines_requeued_before_instead_of_replacing_them(tmp_path: Path) -> None:
    """Two requeues before any drain keep the lines of both."""
    spool = Spool(tmp_path, max_bytes=1 << 20, pid=lambda: 11)
    for task_id in ("a", "b"):
        (tmp_path / UNQUEUED_NAME).write_bytes(orjson.dumps(callback(task_id).to_message()) + b"\n")
        assert spool.requeue_unqueued() == 1
    taken: list[str] = []
    spool.drain(lambda cb: taken.append(cb.task_id))
    assert taken == ["a", "b"]


def test_a_requeue_during_a_drain_setting_a_requeued_line_aside_again_waits_for_it(tmp_path: Path) -> None:
    """Given a drain of the requeued file setting a line aside again (its cause is not fixed)
    When `mjhook spool requeue` runs meanwhile (another process)
    Then both finish, and every line ends requeued or set aside, once: they took the two files'
    locks in opposite orders and waited on each other for good (the CLI hung, and so did the
    drain thread)."""
    (tmp_path / REQUEUED_NAME).write_bytes(orjson.dumps(callback("earlier").to_message()) + b"\n")
    (tmp_path / UNQUEUED_NAME).write_bytes(orjson.dumps(callback("aside").to_message()) + b"\n")
    spool = Spool(tmp_path, max_bytes=1 << 20, pid=lambda: 1)
    program = (
        "from pathlib import Path; from ingress.spool import Spool; "
        f"print(Spool(Path({str(tmp_path)!r}), max_bytes=1 << 20).requeue_unqueued())"
    )
    requeue: list[subprocess.Popen[bytes]] = []

    def refuse_again(cb: Callback) -> None:
        # The drain holds the requeued file's lock now, and the operator runs the requeue.
        requeue.append(
            subprocess.Popen([sys.executable, "-c", program], cwd=REPO_ROOT, stdout=subprocess.PIPE)
        )
        with suppress(subprocess.TimeoutExpired):
            requeue[0].wait(timeout=2)  # it cannot finish while the drain holds the file
        raise RuntimeError("its task's record is still unusable")

    drainer = threading.Thread(target=spool.drain, args=(refuse_again,), daemon=True)
    drainer.start()
    try:
        drainer.join(timeout=15)
        assert not drainer.is_alive(), "the drain waits for the requeue's lock"
        out, _ = requeue[0].communicate(timeout=15)
    finally:
        for proc in requeue:
            if proc.poll() is None:
                proc.kill()  # releases its locks: the drain goes on
            proc.wait()
        drainer.join(timeout=30)
    # The requeue need not wait for the drain (which renamed the file it drains): "earlier" is
    # set aside again after it, or before it and requeued with "aside"; each line in one place.
    assert out.strip() in (b"1", b"2")
    kept = b"".join(
        path.read_bytes() for path in (tmp_path / REQUEUED_NAME, tmp_path / UNQUEUED_NAME) if path.exists()
    )
    assert sorted(Callback.from_message(orjson.loads(line)).task_id for line in kept.splitlines()) == [
        "aside",
        "earlier",
    ]


class SpoolWithABug(Spool):
    """A spool whose first drain round raises an error nobody foresaw (a bug, an odd record)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, max_bytes=1 << 20, pid=lambda: 11)
        self.rounds = 0

    def drain(self, accept: Callable[[Callback], None]) -> int:
        self.rounds += 1
        if self.rounds == 1:
            raise ValueError("'archived' is not a valid TaskState")
        return super().drain(accept)


def test_the_drainer_goes_on_after_a_round_that_raised(tmp_path: Path) -> None:
    """Given a drainer whose first round raises an unforeseen error
    When it runs on
    Then later rounds still drain: the thread alone drains its process's spool, and it used to end
    at the first error that was not an OSError, leaving callbacks answered 200 in the spool."""
    spool = SpoolWithABug(tmp_path)
    spool.append(callback("t1"))
    taken: list[str] = []
    drainer = SpoolDrainer(spool, lambda cb: taken.append(cb.task_id), interval_s=0.05)
    drainer.start()
    try:
        wait_for(lambda: taken == ["t1"], timeout_s=10, what="the second round's drain")
    finally:
        drainer.stop()
    assert spool.rounds >= 2


def spooling_app(tmp_path: Path, redis_server: RedisServer) -> falcon.asgi.App:  # type: ignore[type-arg]
    """The app of the contract's builder, `create_app(settings)`, spooling into ``tmp_path``."""
    settings = Settings(
        redis_url=redis_server.url,
        spool_dir=str(tmp_path / "spool"),
        spool_drain_interval_s=0.2,
        redis_timeout_s=0.5,
        s3_region="us-east-1",
    )
    return create_app(settings)


async def spooled_then_drained(
    app: falcon.asgi.App,
    redis_server: RedisServer,
    spool_dir: Path,
    task_id: str,  # type: ignore[type-arg]
) -> None:
    """Serve ``app`` for one lifespan (falcon's conductor runs it, as uvicorn or gunicorn's asgi
    worker do): a callback arriving while Redis is down is answered 200 from the spool, and once
    Redis is back, it is queued."""
    async with testing.ASGIConductor(app) as conductor:
        redis_server.kill()
        body = orjson.dumps({"code": 200, "msg": "success", "data": {"taskId": task_id, "resultUrls": []}})
        answer = await conductor.simulate_post(
            "/callbacks/midjourney", body=body, headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 200
        assert Spool(spool_dir, max_bytes=1 << 20).depth() == 1
        redis_server.start()
        client = redis_server.client()
        deadline = time.monotonic() + 30
        while not client.exists(keys.task(task_id)):
            assert time.monotonic() < deadline, "acknowledged from the spool, never drained"
            await asyncio.sleep(0.05)


def test_the_app_create_app_builds_drains_its_spool_while_an_asgi_server_serves_it(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Only ingress/wsgi.py started a drainer, so the app of the contract's builder, served by
    another ASGI server, kept what it acknowledged from the spool on disk for good."""
    asyncio.run(
        spooled_then_drained(spooling_app(tmp_path, redis_server), redis_server, tmp_path / "spool", "t1")
    )
    queued = [message["args"][0]["taskId"] for message in queued_messages(redis_server.client())]  # type: ignore[index]
    assert queued == ["t1"]


def test_the_app_drains_its_spool_in_a_second_lifespan_too(tmp_path: Path, redis_server: RedisServer) -> None:
    """An app served through a second lifespan (an embedding server restarting it) starts its
    drainer again: the first lifespan's shutdown stopped it, and a start after a stop did nothing."""
    app = spooling_app(tmp_path, redis_server)

    async def a_lifespan_without_callbacks() -> None:
        async with testing.ASGIConductor(app):
            pass  # startup, then shutdown: the drainer is stopped

    asyncio.run(a_lifespan_without_callbacks())
    asyncio.run(spooled_then_drained(app, redis_server, tmp_path / "spool", "t2"))


def recorded_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the files and directories fsync'd from now on, in order (fsync's effect shows
    only after a crash: the calls made are recorded)."""
    synced: list[str] = []
    fsync = os.fsync

    def recording(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    return synced


def test_new_directories_and_the_set_aside_file_are_fsynced_where_they_are_entered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A callback answered 200 must survive a power loss: the spool directory a first append
    creates is fsync'd in its parent (and so on up), and a set-aside line's file in the spool
    directory, before the line leaves the spool file. (fsync's effect shows only after a crash:
    the calls made are recorded, by path.)"""
    synced = recorded_fsyncs(monkeypatch)
    spool_dir = tmp_path / "data" / "spool"
    spool = Spool(spool_dir, max_bytes=1 << 20)
    # When the first callback is spooled into a directory that does not exist yet
    spool.append(callback("t1"))
    # Then each new directory's entry was fsync'd in its parent
    assert {str(tmp_path), str(tmp_path / "data")} <= set(synced)

    def refuse_for_good(_: Callback) -> None:
        raise RuntimeError("the queue refuses this one for good")

    # When a drain sets it aside
    synced.clear()
    spool.drain(refuse_for_good)
    # Then the set-aside file, and then its entry in the spool directory, were fsync'd
    unqueued = synced.index(str(spool_dir / UNQUEUED_NAME))
    assert str(spool_dir) in synced[unqueued + 1 :]


def test_an_append_fsyncs_the_spool_file_and_then_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a spool directory that exists, with no spool file of this process yet
    When a callback is spooled
    Then the spool file is fsync'd, and after it the directory holding the new file's entry: a
    power loss must not lose the file a 200 was answered for."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    synced = recorded_fsyncs(monkeypatch)

    Spool(spool_dir, max_bytes=1 << 20, pid=lambda: 3).append(callback("t1"))

    spool_file = synced.index(str(spool_dir / "spool-3.jsonl"))
    assert str(spool_dir) in synced[spool_file + 1 :]


def test_a_requeue_fsyncs_the_requeued_files_entry_before_it_removes_the_unqueued_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a callback set aside and no requeued spool file yet
    When it is requeued
    Then the spool directory (holding the new requeued file's entry) is fsync'd before the
    unqueued file is removed: a power loss between the two must not lose both. (The calls made
    are recorded, in order.)"""
    spool = Spool(tmp_path, max_bytes=1 << 20)
    (tmp_path / UNQUEUED_NAME).write_bytes(orjson.dumps(callback("aside").to_message()) + b"\n")
    calls: list[tuple[str, str]] = []
    fsync, unlink = os.fsync, os.unlink

    def recording_fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recording_unlink(path: str | os.PathLike[str], *args: Any, **kwargs: Any) -> None:
        calls.append(("unlink", os.fspath(path)))
        unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "unlink", recording_unlink)

    assert spool.requeue_unqueued() == 1

    removed = calls.index(("unlink", str(tmp_path / UNQUEUED_NAME)))
    assert ("fsync", str(tmp_path)) in calls[:removed]
    assert spool.depth() == 1


def test_a_spool_file_the_drain_cannot_open_is_skipped_and_the_newer_ones_drain(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given the oldest entry of the spool one the drain cannot open (a file of another user,
    mode 0600: here a directory named like a spool file, which not even root can open so) and a
    newer spool file of callbacks answered 200
    When a drain round runs
    Then the newer file is drained, and the one skipped is named in an error in the log: the
    drain stopped at the first, round after round, keeping every newer callback on disk."""
    stuck = tmp_path / "spool-stuck.jsonl"
    stuck.mkdir()
    os.utime(stuck, (1_000_000, 1_000_000))  # the oldest: the drain comes to it first
    spool = Spool(tmp_path, max_bytes=1 << 20, pid=lambda: 5)
    spool.append(callback("behind"))
    taken: list[str] = []

    with caplog.at_level(logging.ERROR, logger="ingress.spool"):
        drained = spool.drain(lambda cb: taken.append(cb.task_id))

    assert (drained, taken) == (1, ["behind"])
    assert not (tmp_path / "spool-5.jsonl").exists()
    assert stuck.is_dir()
    assert any("spool-stuck.jsonl" in record.getMessage() for record in caplog.records), caplog.text


@pytest.mark.skipif(os.geteuid() != 0, reason="only root makes files another user then owns")
def test_a_requeue_run_as_root_gives_the_requeued_file_to_the_spool_directorys_owner(tmp_path: Path) -> None:
    """Given a spool directory owned by the ingress's user (here 65534) holding a set-aside callback
    When `mjhook spool requeue` runs as root
    Then the requeued spool file belongs to the ingress's user and group, so that its drain can
    open it: made mode 0600 for root, it stopped every drain of that host at it."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    os.chown(spool_dir, 65534, 65534)
    (spool_dir / UNQUEUED_NAME).write_bytes(orjson.dumps(callback("aside").to_message()) + b"\n")
    os.chown(spool_dir / UNQUEUED_NAME, 65534, 65534)

    assert Spool(spool_dir, max_bytes=1 << 20).requeue_unqueued() == 1

    requeued = (spool_dir / REQUEUED_NAME).stat()
    assert (requeued.st_uid, requeued.st_gid) == (65534, 65534)


def test_an_append_during_a_drain_waits_for_no_enqueue_and_every_line_is_queued_once(
    tmp_path: Path,
) -> None:
    """Given this process's spool file with two callbacks, and a drain of it inside the enqueue of
    the first (the queue slow to answer)
    When the ingress spools another callback meanwhile (Redis down for its acknowledgement)
    Then the append returns, its line on disk, while that enqueue is still under way; and once
    the drain goes on, every callback is queued once, in order. The append used to wait on the
    file's lock for the drain of the whole file."""
    spool = Spool(tmp_path, max_bytes=1 << 20, pid=lambda: 7)
    spool.append(callback("t0"))
    spool.append(callback("t1"))
    events: list[str] = []
    inside, go_on, appended = threading.Event(), threading.Event(), threading.Event()
    taken: list[str] = []

    def slow_accept(cb: Callback) -> None:
        if cb.task_id == "t0":
            events.append("enqueue of t0 begins")
            inside.set()
            go_on.wait()
            events.append("enqueue of t0 ends")
        taken.append(cb.task_id)

    def append_late() -> None:
        spool.append(callback("late"))
        events.append("late appended")
        appended.set()

    drainer = threading.Thread(target=spool.drain, args=(slow_accept,), daemon=True)
    drainer.start()
    try:
        assert inside.wait(timeout=30)
        threading.Thread(target=append_late, daemon=True).start()
        appended.wait(timeout=10)  # a bound for a broken build, never reached by a working one
        on_disk = b"".join(path.read_bytes() for path in tmp_path.glob("spool-*.jsonl"))
    finally:
        go_on.set()
        drainer.join(timeout=30)
    assert events[:2] == ["enqueue of t0 begins", "late appended"]
    assert b'"late"' in on_disk
    assert appended.wait(timeout=30)
    spool.drain(lambda cb: taken.append(cb.task_id))
    assert taken == ["t0", "t1", "late"]
    assert spool.depth() == 0


def test_a_paused_drain_whose_rewrite_failed_after_replacing_the_file_loses_no_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given four spooled callbacks, a drain paused after the first, and the rewrite of the rest
    failing after its copy replaced the file (the directory's fsync: an I/O error)
    When the spool is drained again
    Then the three not queued are queued: the pause took the failure for a full disk and blanked
    the first bytes of the file in place, which were by then the lines it had kept (one lost)."""
    spool = Spool(tmp_path, max_bytes=1 << 20, pid=lambda: 7)
    for i in range(4):
        spool.append(callback(f"t{i}"))
    replaced = threading.Event()
    real_replace, real_fsync_dir = os.replace, spool_module._fsync_dir

    def replace(source: Any, target: Any) -> None:
        real_replace(source, target)
        replaced.set()

    def fsync_dir(directory: Path) -> None:
        if replaced.is_set():
            replaced.clear()
            raise OSError(5, "Input/output error")
        real_fsync_dir(directory)

    monkeypatch.setattr(spool_module.os, "replace", replace)
    monkeypatch.setattr(spool_module, "_fsync_dir", fsync_dir)
    taken: list[str] = []

    def accept(cb: Callback) -> None:
        if taken:
            raise QueueUnavailable("down again")
        taken.append(cb.task_id)

    spool.drain(accept)
    monkeypatch.undo()
    spool.drain(lambda cb: taken.append(cb.task_id))

    assert taken == ["t0", "t1", "t2", "t3"]


@pytest.mark.parametrize("rewrite", ["copied", "blanked in place"])
def test_what_a_paused_drain_left_is_drained_before_callbacks_spooled_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rewrite: str
) -> None:
    """Given three spooled callbacks, a drain that pauses at the second one while a fourth is
    spooled (a new file: the drain renamed the one it took), and the rest of the paused file
    rewritten, or blanked in place when there is no room for a copy
    When the spool is drained again
    Then the two left of the older file come before the newer callback: the rewrite keeps the
    file's time (it made the file look the newest, and its callbacks were queued last)."""
    spool = Spool(tmp_path, max_bytes=1 << 20, pid=lambda: 7)
    for i in range(3):
        spool.append(callback(f"a{i}"))
    os.utime(tmp_path / "spool-7.jsonl", (1000, 1000))
    if rewrite == "blanked in place":

        def no_room(path: Path, lines: list[bytes], *, times_ns: tuple[int, int]) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(spool_module, "_rewrite", no_room)
    taken: list[str] = []

    def accept(cb: Callback) -> None:
        if cb.task_id == "a1":
            spool.append(callback("a3"))
            os.utime(tmp_path / "spool-7.jsonl", (2000, 2000))  # spooled after a0..a2, before now
            raise QueueUnavailable("down again")
        taken.append(cb.task_id)

    spool.drain(accept)
    monkeypatch.undo()
    spool.drain(lambda cb: taken.append(cb.task_id))

    assert taken == ["a0", "a1", "a2", "a3"]


def test_a_count_that_meets_a_file_a_drain_just_renamed_counts_its_callbacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a spooled callback whose file a drain renames (taking it) between the count's listing
    of the directory and its reading of the file
    When the spool's depth in callbacks and in bytes is read
    Then the callback is counted: the file gone since the listing was taken for drained (0), and
    the metric of the spool's depth said 0 while a callback waited."""
    spool = Spool(tmp_path, max_bytes=1 << 20, pid=lambda: 7)
    spool.append(callback("t0"))
    listed = tmp_path / "spool-7.jsonl"
    size = listed.stat().st_size
    listed.rename(tmp_path / f"spool-7{DRAINING_MARK}8-1.jsonl")
    listings = [[listed], [listed]]
    real_files = spool._files
    monkeypatch.setattr(spool, "_files", lambda: listings.pop(0) if listings else real_files())

    assert spool.depth() == 1
    assert spool.depth_bytes() == size
