"""POST /callbacks/midjourney with falcon's TestClient, a real Redis and dramatiq's Redis broker."""

from __future__ import annotations

import asyncio
import gzip
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
import redis
from falcon import testing

from ingress import resources
from ingress.app import create_app
from ingress.metrics import CountingRejectLog
from ingress.resources import PARSE_ON_LOOP_MAX_BYTES
from shared import keys
from shared.callback import CallbackLimits, parse_callback
from shared.queue import BROKER_NAMESPACE, CALLBACK_QUEUE, PROCESS_CALLBACK, create_broker
from shared.redis_client import connect_redis
from shared.rejected import Rejection, list_rejected, replay_rejected
from shared.settings import Settings
from shared.taskstate import TaskState, TaskStore
from tests.support.servers import RedisServer

PATH = "/callbacks/midjourney"
JSON = {"Content-Type": "application/json"}
QUEUE_KEY = f"{BROKER_NAMESPACE}:{CALLBACK_QUEUE}"


def success(task_id: str = "mj_task_12345") -> dict[str, object]:
    return {
        "code": 200,
        "msg": "success",
        "data": {
            "taskId": task_id,
            "promptJson": '{"prompt":"a beautiful landscape","model":"midjourney"}',
            "resultUrls": [f"https://example.com/mj_result{i}.png" for i in range(1, 5)],
        },
    }


def make_app(client: redis.Redis, **settings: object) -> testing.TestClient:
    url = client.get_connection_kwargs()
    redis_url = f"redis://{url['host']}:{url['port']}/0"
    settings.setdefault("spool_dir", "")
    config = Settings(redis_url=redis_url, **settings)  # type: ignore[arg-type]
    return testing.TestClient(create_app(config, redis_client=client))


def queued_messages(client: redis.Redis) -> list[dict[str, object]]:
    ids = client.lrange(QUEUE_KEY, 0, -1)
    bodies = client.hmget(f"{QUEUE_KEY}.msgs", ids) if ids else []
    return [orjson.loads(body) for body in bodies]


def post(app: testing.TestClient, body: bytes, *, content_type: str = "application/json", query: str = ""):
    return app.simulate_post(PATH, body=body, headers={"Content-Type": content_type}, query_string=query)


def test_a_valid_callback_is_queued_and_acknowledged(client: redis.Redis) -> None:
    app = make_app(client)
    response = post(app, orjson.dumps(success()))
    assert response.status_code == 200
    assert response.json == {"status": "received", "taskId": "mj_task_12345"}
    [message] = queued_messages(client)
    assert message["actor_name"] == PROCESS_CALLBACK
    assert message["queue_name"] == CALLBACK_QUEUE
    payload = message["args"][0]  # type: ignore[index]
    assert payload["taskId"] == "mj_task_12345"
    assert payload["resultUrls"] == success()["data"]["resultUrls"]  # type: ignore[index]
    record = TaskStore(client, ttl_s=60).get("mj_task_12345")
    assert record is not None
    assert record.state is TaskState.RECEIVED


def test_a_duplicate_is_queued_again_and_dedup_is_left_to_the_worker(client: redis.Redis) -> None:
    app = make_app(client)
    assert post(app, orjson.dumps(success())).status_code == 200
    assert post(app, orjson.dumps(success())).status_code == 200
    assert len(queued_messages(client)) == 2


@pytest.mark.parametrize(
    ("body", "content_type", "status", "reason"),
    [
        (b"{not json", "application/json", 400, "not valid JSON"),
        (orjson.dumps({"code": 200, "data": {"taskId": "../x"}}), "application/json", 400, "taskId"),
        (orjson.dumps({"code": "200", "data": {"taskId": "ok"}}), "application/json", 400, "'code'"),
        (orjson.dumps(success()), "text/plain", 415, "Content-Type"),
        (orjson.dumps(success()), "application/x-www-form-urlencoded", 415, "Content-Type"),
        (b"x" * 300_000, "application/json", 413, "larger than"),
    ],
)
def test_bad_input_gets_a_clear_4xx_is_kept_and_queues_nothing(
    client: redis.Redis, body: bytes, content_type: str, status: int, reason: str
) -> None:
    app = make_app(client)
    response = post(app, body, content_type=content_type)
    assert response.status_code == status
    assert reason in response.json["error"]
    assert queued_messages(client) == []
    [kept] = [orjson.loads(entry) for entry in client.lrange(keys.REJECTED, 0, -1)]
    assert kept["status"] == status
    assert reason in kept["reason"]
    assert kept["bodySize"] == len(body)
    # A body under the kept limit is kept whole; a longer one, its first rejected_body_bytes.
    assert kept["body"].encode() == body[: Settings().rejected_body_bytes]


def test_a_body_without_a_content_type_gets_a_415_and_queues_nothing(client: redis.Redis) -> None:
    app = make_app(client)
    response = app.simulate_post(PATH, body=orjson.dumps(success()))
    assert response.status_code == 415
    assert "Content-Type" in response.json["error"]
    assert queued_messages(client) == []


def test_a_json_media_type_with_a_structured_suffix_is_taken(client: redis.Redis) -> None:
    """RFC 6839: ``application/<anything>+json`` is JSON."""
    app = make_app(client)
    assert post(app, orjson.dumps(success()), content_type="application/vnd.x+json").status_code == 200
    assert len(queued_messages(client)) == 1


def test_a_body_of_exactly_the_size_limit_is_taken_and_one_byte_more_is_a_413(client: redis.Redis) -> None:
    app = make_app(client, max_body_bytes=2048)
    body = orjson.dumps(success())
    exact = body + b" " * (2048 - len(body))
    assert post(app, exact).status_code == 200
    assert post(app, exact + b" ").status_code == 413
    assert len(queued_messages(client)) == 1


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br, gzip"])
def test_a_compressed_body_gets_a_415_naming_its_encoding(client: redis.Redis, encoding: str) -> None:
    """A body sent with a Content-Encoding was read as JSON and refused 400 as text that is not
    UTF-8, its kept copy lossy; it is a 415 saying the encoding is not supported."""
    app = make_app(client)
    body = gzip.compress(orjson.dumps(success()))
    response = app.simulate_post(
        PATH, body=body, headers={"Content-Type": "application/json", "Content-Encoding": encoding}
    )
    assert response.status_code == 415
    assert f"Content-Encoding {encoding!r} is not supported" in response.json["error"]
    assert queued_messages(client) == []
    identity = app.simulate_post(
        PATH, body=orjson.dumps(success()), headers={**JSON, "Content-Encoding": "Identity"}
    )
    assert identity.status_code == 200


@pytest.mark.parametrize("codings", ["gzip, chunked", "deflate,chunked", "x-custom"])
def test_a_transfer_coding_other_than_chunked_gets_a_415_naming_it(client: redis.Redis, codings: str) -> None:
    """gunicorn undoes only the chunked transfer coding and passes the others on: a body sent
    ``gzip, chunked`` was read as JSON as it was (acknowledged 200 when its bytes happened to be
    JSON; a compressed one refused 400 as text that is not UTF-8). It is a 415 naming them."""
    app = make_app(client)
    response = app.simulate_post(
        PATH, body=orjson.dumps(success()), headers={**JSON, "Transfer-Encoding": codings}
    )
    assert response.status_code == 415
    assert "Transfer-Encoding" in response.json["error"]
    assert queued_messages(client) == []
    chunked = app.simulate_post(
        PATH, body=orjson.dumps(success()), headers={**JSON, "Transfer-Encoding": "Chunked"}
    )
    assert chunked.status_code == 200


def test_refusals_of_senders_without_the_token_cannot_push_out_a_genuine_one(client: redis.Redis) -> None:
    """Given a token-protected ingress keeping 3 refusals in each list, and a genuine refusal (a
    callback that carried the token, refused as malformed), when someone without the token sends
    5 bodies, over the size limit or not, then the genuine refusal is still kept: the token is
    checked before the size (a 413 of a sender without it went to the genuine ones' list)."""
    app = make_app(client, callback_token="s3cret", rejected_keep=3, max_body_bytes=2048)
    assert post(app, b'{"code": 200, "data": {"taskId": "../x"}}', query="token=s3cret").status_code == 400
    for junk in (b"x" * 5000, b"{", b"x" * 5000, orjson.dumps(success()), b"x" * 5000):
        assert post(app, junk).status_code == 401
    listed = list_rejected(client)
    assert [entry.status for entry in listed] == [401, 401, 401, 400]


def test_with_only_a_webhook_key_every_refusal_before_the_signature_is_kept_apart(
    client: redis.Redis,
) -> None:
    """A body refused before its signature could be checked (malformed: no taskId to check it for)
    comes from a sender nobody vouched for: kept in the list anyone can fill."""
    app = make_app(client, webhook_hmac_key="k" * 32, rejected_keep=3)
    assert post(app, b"{not json").status_code == 400
    assert client.llen(keys.REJECTED) == 0
    assert client.llen(keys.REJECTED_UNAUTHENTICATED) == 1


def test_a_callback_whose_task_record_is_unusable_is_kept_for_a_replay(client: redis.Redis) -> None:
    """Given a task record Redis holds in a state this version does not know (a newer version
    wrote it), when its callback arrives, then it is answered 503 as before, and kept with its
    reason in the rejected list: once the record is mended, `mjhook rejected replay` queues it
    (it was kept nowhere, lost once the provider's three retries had failed too)."""
    client.hset(keys.task("odd"), mapping={"state": "archived", "updatedAt": "1"})
    app = make_app(client)
    body = orjson.dumps(success("odd"))

    assert post(app, body).status_code == 503

    [entry] = list_rejected(client)
    assert (entry.status, entry.body.encode()) == (503, body)
    assert "archived" in entry.reason
    client.delete(keys.task("odd"))
    queued: list[str] = []
    replayed = replay_rejected(
        client, [entry.id], limits=CallbackLimits(), queue=lambda callback: queued.append(callback.task_id)
    )
    assert replayed.replayed == [(entry.id, "odd")]
    assert queued == ["odd"]


def test_a_body_over_the_limit_is_kept_marked_as_cut_short(client: redis.Redis) -> None:
    # Given a reject log that would keep far more than the ingress reads of a body over its limit
    app = make_app(client, max_body_bytes=2000, rejected_body_bytes=1 << 20)
    body = orjson.dumps(success()) + b" " * 5000
    assert post(app, body).status_code == 413
    [kept] = [orjson.loads(entry) for entry in client.lrange(keys.REJECTED, 0, -1)]
    # Then what was read (the limit + 1 byte) is kept, and marked as not the whole body
    assert len(kept["body"]) == 2001
    assert kept["truncated"] is True


class ThreadRecordingRedis(redis.Redis):
    """A client that notes which thread opened each pipeline (the reject log writes through one)."""

    pipeline_threads: list[str]

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        self.pipeline_threads.append(threading.current_thread().name)
        return super().pipeline(*args, **kwargs)


def test_a_rejection_is_kept_from_a_thread_not_on_the_event_loop(redis_server: RedisServer) -> None:
    """Keeping a refused body is a Redis write: it runs in a worker thread, so a slow Redis stalls
    no other request of the process (the TestClient runs the app's loop in this thread)."""
    client = ThreadRecordingRedis.from_url(redis_server.url)
    client.pipeline_threads = []
    app = make_app(client)
    assert post(app, b"{").status_code == 400
    assert client.llen(keys.REJECTED) == 1
    assert client.pipeline_threads
    assert threading.current_thread().name not in client.pipeline_threads


@pytest.mark.parametrize(("padding", "on_loop"), [(100, True), (PARSE_ON_LOOP_MAX_BYTES, False)])
def test_only_a_large_body_is_parsed_off_the_event_loop(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch, padding: int, on_loop: bool
) -> None:
    """A large body (nested arrays anyone may send: ~30 ms to walk at 256 KiB) is parsed and
    checked in a thread, so the loop answers other callbacks meanwhile; a callback of the usual
    size is parsed on the loop (a thread hop would cost every acknowledgement). The TestClient
    runs the app's loop in this thread."""
    threads: list[str] = []

    def recording_parse(body: bytes, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return parse_callback(body, **kwargs)

    monkeypatch.setattr(resources, "parse_callback", recording_parse)
    body = success()
    body["extra"] = [[0] * 10] * (padding // 20)
    app = make_app(client)
    assert post(app, orjson.dumps(body)).status_code == 200
    assert (threads == [threading.current_thread().name]) is on_loop
    assert len(threads) == 1


def test_refusals_waiting_on_a_hung_redis_hold_up_no_large_callback(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given refusals (anyone can send them) whose keeping waits on a Redis that does not answer,
    as many as the loop's default pool has threads (one here)
    When a genuine callback larger than PARSE_ON_LOOP_MAX_BYTES arrives
    Then it is acknowledged meanwhile: refusals are kept from a pool of their own, and the large
    body's parse, in the default pool, waits on none of them. (It waited until Redis answered.)"""
    released, keeping = threading.Event(), threading.Event()
    real_record = CountingRejectLog.record

    def hung_record(self: CountingRejectLog, rejection: Rejection) -> None:
        keeping.set()
        assert released.wait(30), "never released"
        real_record(self, rejection)

    monkeypatch.setattr(CountingRejectLog, "record", hung_record)
    app = make_app(client)
    large = success("large-1")
    large["extra"] = [[0] * 10] * (PARSE_ON_LOOP_MAX_BYTES // 20)

    async def scenario() -> int:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))
        async with testing.ASGIConductor(app.app) as conductor:
            refused = asyncio.create_task(conductor.simulate_post(PATH, body=b"junk", headers=JSON))
            await asyncio.to_thread(keeping.wait, 10)
            try:
                genuine = await asyncio.wait_for(
                    conductor.simulate_post(PATH, body=orjson.dumps(large), headers=JSON), 10
                )
            finally:
                released.set()
            assert (await refused).status_code == 400
            return genuine.status_code

    assert asyncio.run(scenario()) == 200
    assert len(queued_messages(client)) == 1


def test_the_reject_log_is_capped(client: redis.Redis) -> None:
    app = make_app(client, rejected_keep=3)
    for _ in range(5):
        assert post(app, b"nope").status_code == 400
    assert client.llen(keys.REJECTED) == 3


def test_a_token_is_required_when_configured(client: redis.Redis) -> None:
    app = make_app(client, callback_token="s3cret,previous")
    body = orjson.dumps(success())
    assert post(app, body).status_code == 401
    assert post(app, body, query="token=wrong").status_code == 401
    assert post(app, body, query="token=s3cret").status_code == 200
    assert post(app, body, query="token=previous").status_code == 200
    assert len(queued_messages(client)) == 2


@pytest.mark.parametrize(
    "given", ["s3cre", "s", "s3cretX", ""], ids=["prefix", "first-char", "one-more", "empty"]
)
def test_only_the_whole_token_passes(client: redis.Redis, given: str) -> None:
    app = make_app(client, callback_token="s3cret")
    assert post(app, orjson.dumps(success()), query=f"token={given}").status_code == 401
    assert queued_messages(client) == []


def test_an_unreachable_redis_without_a_spool_is_a_503_so_the_provider_retries() -> None:
    dead = connect_redis("redis://127.0.0.1:1/0", timeout_s=0.2)
    config = Settings(redis_url="redis://127.0.0.1:1/0", spool_dir="")
    broker = create_broker(config, client=dead, middleware=[])
    app = testing.TestClient(create_app(config, redis_client=dead, broker=broker))
    response = post(app, orjson.dumps(success()))
    assert response.status_code == 503
    assert "retry" in response.json["error"]
    # A malformed callback is still a 400, although it cannot be kept.
    assert post(app, b"{").status_code == 400


def test_health_and_readiness(client: redis.Redis) -> None:
    app = make_app(client)
    assert app.simulate_get("/healthz").status_code == 200
    assert app.simulate_get("/readyz").status_code == 200
    dead = connect_redis("redis://127.0.0.1:1/0", timeout_s=0.2)
    down = testing.TestClient(
        create_app(Settings(redis_url="redis://127.0.0.1:1/0", spool_dir=""), redis_client=dead)
    )
    assert down.simulate_get("/healthz").status_code == 200
    assert down.simulate_get("/readyz").status_code == 503


def test_the_ack_is_one_redis_round_trip(client: redis.Redis) -> None:
    app = make_app(client)
    post(app, orjson.dumps(success("warm-up")))  # loads the script
    client.config_resetstat()
    assert post(app, orjson.dumps(success())).status_code == 200
    stats = client.info("commandstats")
    # One script call from the client (the commands run inside it are counted by name too).
    assert stats["cmdstat_evalsha"]["calls"] == 1
    assert stats["cmdstat_rpush"]["calls"] == 1
    # and the message is one dramatiq can read
    [_, message] = queued_messages(client)
    assert message["options"]["redis_message_id"]


class HeldReadsRedis(redis.Redis):
    """A client whose ZREVRANGE (the task list's read) waits until the test lets it go."""

    release: threading.Event
    reading: threading.Event

    def zrevrange(self, *args: Any, **kwargs: Any) -> Any:
        self.reading.set()
        assert self.release.wait(10), "never released"
        return super().zrevrange(*args, **kwargs)


def test_a_slow_read_endpoint_holds_up_no_acknowledgement(redis_server: RedisServer) -> None:
    """The read endpoints call blocking clients in a thread (ingress/threaded.py): while a task
    list waits on a stuck Redis read, callbacks on the same event loop are still acknowledged."""
    client = HeldReadsRedis.from_url(redis_server.url)
    client.release, client.reading = threading.Event(), threading.Event()
    app = make_app(client)

    async def scenario() -> tuple[list[int], bool, int]:
        async with testing.ASGIConductor(app.app) as conductor:
            listing = asyncio.create_task(conductor.simulate_get("/tasks"))
            await asyncio.to_thread(client.reading.wait, 10)
            acks = []
            for n in range(3):
                ack = await conductor.simulate_post(
                    PATH, body=orjson.dumps(success(f"during-{n}")), headers=JSON
                )
                acks.append(ack.status_code)
            still_waiting = not listing.done()
            client.release.set()
            return acks, still_waiting, (await listing).status_code

    acks, still_waiting, listed = asyncio.run(scenario())
    assert acks == [200, 200, 200]
    assert still_waiting
    assert listed == 200
    assert len(queued_messages(client)) == 3
