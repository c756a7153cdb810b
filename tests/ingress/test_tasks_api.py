"""GET /tasks/{taskId} and GET /tasks against a real Redis, SeaweedFS and stored files."""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import falcon
import httpx
import orjson
import pytest
import redis
from falcon import testing
from minio import Minio

from ingress.app import create_app
from ingress.tasks_api import MAX_LISTED_REASON_CHARS, TaskResource
from shared import keys
from shared.callback import Callback
from shared.errors import StorageUnavailable
from shared.settings import MAX_JSON_DEPTH, Settings
from shared.taskstate import TaskState, TaskStore
from simulator.video import mp4_bytes
from tests.ingress.test_callbacks import HeldReadsRedis
from tests.support.procs import free_port
from tests.support.servers import FileServer, png_bytes
from tests.support.stack import loopback_settings, ready_bucket
from workers.runtime import WorkerParts, build_parts

TOKEN = "read-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: What the dashboard's script asks for on every refresh (LIST_LIMIT in dashboard.html).
DASHBOARD_LIST_LIMIT = 50
#: A generous bound for one page of the dashboard's task list, bytes.
MAX_LIST_BYTES = 1024 * 1024
#: What a recorded reason may hold at most (workers/pipeline.py), characters.
MAX_RECORDED_REASON_CHARS = 1024


@dataclass
class Stack:
    app: testing.TestClient
    images: list[bytes]
    settings: Settings
    parts: WorkerParts
    files: FileServer


@pytest.fixture
def stack(redis_server, s3_server, s3_bucket, file_server: FileServer) -> Iterator[Stack]:
    settings = loopback_settings(redis_server.url, s3_server, s3_bucket, api_token=TOKEN, spool_dir="")
    parts = build_parts(settings)
    ready_bucket(parts.store)
    images = [png_bytes(seed) for seed in range(2)]
    urls = [file_server.add(f"/{i}.png", image) for i, image in enumerate(images)]
    for task_id, code in (("stored-1", 200), ("failed-1", 500)):
        parts.processor.process(
            Callback(
                task_id, code, "ok" if code == 200 else "boom", None, tuple(urls) if code == 200 else (), "t"
            )
        )
    client = redis.Redis.from_url(redis_server.url)
    yield Stack(
        testing.TestClient(create_app(settings, redis_client=client)), images, settings, parts, file_server
    )
    client.close()


def test_a_stored_task_comes_with_working_presigned_urls(stack: Stack) -> None:
    response = stack.app.simulate_get("/tasks/stored-1", headers=AUTH)
    assert response.status_code == 200
    body = response.json
    assert body["taskId"] == "stored-1"
    assert body["state"] == "stored"
    assert body["manifest"]["status"] == "stored"
    assert [image["key"] for image in body["images"]] == ["tasks/stored-1/0.png", "tasks/stored-1/1.png"]
    assert [image["contentType"] for image in body["images"]] == ["image/png", "image/png"]
    for image, original in zip(body["images"], stack.images, strict=True):
        downloaded = httpx.get(image["url"], timeout=10)
        assert downloaded.status_code == 200
        assert hashlib.sha256(downloaded.content).digest() == hashlib.sha256(original).digest()


def test_presigned_urls_stay_valid_for_presign_expiry_s(stack: Stack) -> None:
    """Given MJHOOK_PRESIGN_EXPIRY_S set to two minutes, when a stored task is read, then each of its
    URLs is signed for those two minutes."""
    settings = stack.settings.model_copy(update={"presign_expiry_s": 120})
    client = redis.Redis.from_url(settings.redis_url)
    app = testing.TestClient(create_app(settings, redis_client=client))

    images = app.simulate_get("/tasks/stored-1", headers=AUTH).json["images"]

    assert len(images) == 2
    for image in images:
        assert parse_qs(urlsplit(image["url"]).query)["X-Amz-Expires"] == ["120"]
    client.close()


def test_an_answer_with_presigned_urls_is_not_cached(stack: Stack) -> None:
    """The URLs are credentials for a while: no browser or proxy cache keeps them."""
    response = stack.app.simulate_get("/tasks/stored-1", headers=AUTH)
    assert response.headers["Cache-Control"] == "no-store"


def test_a_stored_video_says_it_is_a_video(stack: Stack) -> None:
    """Given a video task stored by the pipeline (0.mp4), when it is read, then its file comes with
    the manifest's content type, so that the dashboard shows it as a video, not a broken image."""
    url = stack.files.add("/v/0.mp4", mp4_bytes("video-1", 0), content_type="video/mp4")
    stack.parts.processor.process(Callback("video-1", 200, "success", None, (url,), "t"))
    images = stack.app.simulate_get("/tasks/video-1", headers=AUTH).json["images"]
    assert [(image["key"], image["contentType"]) for image in images] == [
        ("tasks/video-1/0.mp4", "video/mp4")
    ]


def test_only_files_under_the_tasks_own_prefix_are_presigned(stack: Stack) -> None:
    """Given a manifest that names, beside its own file, another task's file and a key outside
    every task (the bucket has other writers than the workers), when the task is read, then only
    its own file gets a presigned URL."""
    manifest = stack.parts.store.get_json("tasks/stored-1/manifest.json")
    own = manifest["images"][0]
    manifest["images"] = [
        own,
        {**own, "index": 1, "key": "tasks/stored-2/0.png"},
        {**own, "index": 2, "key": "secrets/credentials.json"},
        {**own, "index": 3, "key": "tasks/stored-10/0.png"},
    ]
    stack.parts.store.put_json("tasks/stored-1/manifest.json", manifest)
    body = stack.app.simulate_get("/tasks/stored-1", headers=AUTH).json
    assert [image["key"] for image in body["images"]] == ["tasks/stored-1/0.png"]
    assert len(body["manifest"]["images"]) == 4  # the manifest itself is shown as it is


def test_a_failed_task_says_why(stack: Stack) -> None:
    body = stack.app.simulate_get("/tasks/failed-1", headers=AUTH).json
    assert body["state"] == "failed"
    assert body["reason"] == "boom"
    assert body["images"] == []


def test_unknown_and_hostile_ids_are_404(stack: Stack) -> None:
    assert stack.app.simulate_get("/tasks/nope", headers=AUTH).status_code == 404
    assert stack.app.simulate_get("/tasks/..%2F..%2Fetc", headers=AUTH).status_code == 404


def test_recent_tasks_are_listed_by_state(stack: Stack) -> None:
    everything = stack.app.simulate_get("/tasks", headers=AUTH).json["tasks"]
    assert {task["taskId"] for task in everything} == {"stored-1", "failed-1"}
    stored = stack.app.simulate_get("/tasks", params={"state": "stored"}, headers=AUTH).json["tasks"]
    assert [task["taskId"] for task in stored] == ["stored-1"]
    assert stack.app.simulate_get("/tasks", params={"limit": "1"}, headers=AUTH).json["tasks"][0][
        "taskId"
    ] == ("failed-1")
    assert stack.app.simulate_get("/tasks", params={"state": "bogus"}, headers=AUTH).status_code == 400


def test_blank_list_parameters_mean_absent_ones(stack: Stack) -> None:
    """README spells the endpoint ``GET /tasks?state=&limit=``: blank, they are the defaults."""
    response = stack.app.simulate_get("/tasks", query_string="state=&limit=", headers=AUTH)
    assert response.status_code == 200
    assert {task["taskId"] for task in response.json["tasks"]} == {"stored-1", "failed-1"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Bearer {TOKEN[1:]}"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ],
    ids=["none", "wrong", "no-scheme", "empty", "scheme-only", "last-char-cut", "first-char-cut", "one-more"],
)
def test_read_endpoints_need_the_api_token(stack: Stack, headers: dict[str, str]) -> None:
    for path in ("/tasks/stored-1", "/tasks"):
        response = stack.app.simulate_get(path, headers=headers)
        assert response.status_code == 401
        assert response.json == {"error": "missing or wrong API token"}
        assert TOKEN not in response.text
    # The callback endpoint and the probes stay open.
    assert stack.app.simulate_get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "path",
    ["//tasks", "//tasks/stored-1", "///tasks", "/tasks/", "//dashboard", "//dashboard/status"],
)
def test_every_path_the_router_takes_to_a_read_endpoint_needs_the_api_token(stack: Stack, path: str) -> None:
    """The router strips extra leading slashes and a trailing one: the guard judges the route it
    matched, not the raw path (a doubled slash once reached every read endpoint without a token)."""
    response = stack.app.simulate_get(path)
    assert response.status_code == 401
    assert response.json == {"error": "missing or wrong API token"}
    assert stack.app.simulate_get(path, headers=AUTH).status_code != 401


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_bearer_scheme_is_case_insensitive(stack: Stack, scheme: str) -> None:
    """RFC 9110 section 11.1: the scheme name is case-insensitive; the token is not."""
    assert stack.app.simulate_get("/tasks", headers={"Authorization": f"{scheme} {TOKEN}"}).status_code == 200
    wrong_case = {"Authorization": f"{scheme} {TOKEN.upper()}"}
    assert stack.app.simulate_get("/tasks", headers=wrong_case).status_code == 401


def test_read_endpoints_answer_503_while_redis_is_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    """As /dashboard/status does, and /tasks/{id} when object storage is away: 503, not a 500
    "internal error" with a traceback logged at every dashboard refresh."""
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        spool_dir="",
        s3_endpoint="http://127.0.0.1:9",
        redis_timeout_s=0.5,
    )
    app = testing.TestClient(create_app(settings))
    for path in ("/tasks", "/tasks/some-task", "/dashboard/status"):
        response = app.simulate_get(path)
        assert response.status_code == 503
        assert response.json == {"error": "Redis unavailable"}
    assert not [record for record in caplog.records if record.exc_info]


def test_a_received_task_is_readable_before_any_worker_made_the_bucket(
    redis_server, s3_server, s3_bucket
) -> None:
    """A fresh deployment: the ingress acknowledged a callback, and no worker has started yet to
    make the bucket. The task reads as received, with no manifest (it was a 500)."""
    settings = Settings(
        redis_url=redis_server.url,
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        s3_bucket=s3_bucket,  # not made
        spool_dir="",
    )
    client = redis.Redis.from_url(redis_server.url)
    app = testing.TestClient(create_app(settings, redis_client=client))
    body = {
        "code": 200,
        "msg": "ok",
        "data": {"taskId": "fresh-1", "resultUrls": ["https://example.com/a.png"]},
    }
    assert app.simulate_post("/callbacks/midjourney", json=body).status_code == 200
    response = app.simulate_get("/tasks/fresh-1")
    assert response.status_code == 200
    assert (response.json["state"], response.json["manifest"], response.json["images"]) == (
        "received",
        None,
        [],
    )
    client.close()


def test_a_read_object_storage_refuses_is_a_503_naming_why(redis_server, s3_server, s3_bucket) -> None:
    """Keys the store does not accept (AccessDenied and the like): 503 with the S3 code, not a 500."""
    settings = Settings(
        redis_url=redis_server.url,
        s3_endpoint=s3_server.endpoint,
        s3_access_key="nobody",
        s3_secret_key="wrong-secret",
        s3_bucket=s3_bucket,
        spool_dir="",
    )
    client = redis.Redis.from_url(redis_server.url)
    TaskStore(client, ttl_s=3600).mark_received("t-1", "now")
    response = testing.TestClient(create_app(settings, redis_client=client)).simulate_get("/tasks/t-1")
    assert response.status_code == 503
    assert response.json["error"].startswith("object storage refused the request: ")
    client.close()


def test_a_failure_records_a_short_reason_and_keeps_the_whole_message(stack: Stack) -> None:
    """Given a failure callback whose msg is as long as the body limit allows (anyone's text),
    when the pipeline records it, then the task's reason is its first KiB with an ellipsis, and
    the whole message is in the manifest."""
    msg = "x" * (stack.settings.max_body_bytes - 1024)
    stack.parts.processor.process(Callback("forged-1", 501, msg, None, (), "t"))
    body = stack.app.simulate_get("/tasks/forged-1", headers=AUTH).json
    assert body["state"] == "failed"
    assert body["reason"] == "x" * (MAX_RECORDED_REASON_CHARS - 1) + "\u2026"
    assert body["manifest"]["msg"] == msg


def test_the_task_list_does_not_carry_whole_provider_messages(stack: Stack) -> None:
    """Given as many forged failure callbacks as the dashboard lists, each msg as long as the body
    limit allows (the ingress takes it as it is), when the dashboard's list is read, then it is a
    few KiB a task, not the messages whole (~13 MB at every refresh)."""
    msg = "x" * (stack.settings.max_body_bytes - 1024)
    body = orjson.dumps({"code": 501, "msg": msg, "data": {"taskId": "forged-0", "resultUrls": []}})
    accepted = stack.app.simulate_post(
        "/callbacks/midjourney", body=body, headers={"Content-Type": "application/json"}
    )
    assert accepted.status_code == 200
    for i in range(DASHBOARD_LIST_LIMIT):
        stack.parts.processor.process(Callback(f"forged-{i}", 501, msg, None, (), "t"))
    response = stack.app.simulate_get("/tasks", params={"limit": str(DASHBOARD_LIST_LIMIT)}, headers=AUTH)
    assert response.status_code == 200
    assert len(response.json["tasks"]) == DASHBOARD_LIST_LIMIT
    assert len(response.content) <= MAX_LIST_BYTES, f"one refresh of /tasks is {len(response.content)} bytes"


def test_the_task_list_shortens_a_long_reason_recorded_elsewhere(stack: Stack, redis_server) -> None:
    """Given a task whose recorded reason is long (written before reasons were capped, or by
    another writer than the pipeline), when the tasks are listed, then its reason is cut to
    MAX_LISTED_REASON_CHARS with an ellipsis, and a short reason is listed whole."""
    tasks = TaskStore(redis.Redis.from_url(redis_server.url), ttl_s=3600)
    tasks.move("long-1", TaskState.FAILED, reason="y" * 100_000)
    listed = {task["taskId"]: task for task in stack.app.simulate_get("/tasks", headers=AUTH).json["tasks"]}
    assert listed["long-1"]["reason"] == "y" * (MAX_LISTED_REASON_CHARS - 1) + "\u2026"
    assert listed["failed-1"]["reason"] == "boom"


def test_a_record_with_an_unreadable_time_is_listed_without_it(stack: Stack, redis_server) -> None:
    """Given a task record whose updatedAt is not whole milliseconds (written by hand or another
    version), when the tasks are listed, then the list answers, that task without its time (the
    whole list, and the dashboard with it, was a 500)."""
    client = redis.Redis.from_url(redis_server.url)
    client.hset(keys.task("failed-1"), "updatedAt", "1700000000000.5")
    response = stack.app.simulate_get("/tasks", headers=AUTH)
    assert response.status_code == 200
    listed = {task["taskId"]: task for task in response.json["tasks"]}
    assert listed["failed-1"]["updatedAt"] is None
    assert all(isinstance(task["updatedAt"], int) for key, task in listed.items() if key != "failed-1")


def test_reads_held_up_never_hold_up_readyz_or_a_refusal(redis_server) -> None:
    """Given a task-list read stuck on Redis in each thread of the event loop's default pool (one
    here), and more waiting (a slow store under a dashboard polling many tasks), when /readyz is
    asked and a malformed callback arrives, then both are answered: the read endpoints wait in a
    pool of their own, not in the one /readyz and the keeping of refusals use."""
    client = HeldReadsRedis.from_url(redis_server.url)
    client.release, client.reading = threading.Event(), threading.Event()
    app = create_app(Settings(redis_url=redis_server.url, spool_dir=""), redis_client=client)

    async def scenario() -> tuple[int, int, list[int]]:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
        waiting = ThreadPoolExecutor(max_workers=1)  # the test's own, outside both pools
        async with testing.ASGIConductor(app) as conductor:
            reads = [asyncio.create_task(conductor.simulate_get("/tasks")) for _ in range(3)]
            try:
                assert await loop.run_in_executor(waiting, client.reading.wait, 10)
                # Bounds well under the 10 s after which a held read gives up by itself
                ready = await asyncio.wait_for(conductor.simulate_get("/readyz"), timeout=5)
                refused = await asyncio.wait_for(
                    conductor.simulate_post(
                        "/callbacks/midjourney", body=b"{", headers={"Content-Type": "application/json"}
                    ),
                    timeout=5,
                )
            finally:
                client.release.set()
                waiting.shutdown()
            listed = [response.status_code for response in await asyncio.gather(*reads)]
            return ready.status_code, refused.status_code, listed

    ready, refused, listed = asyncio.run(scenario())
    assert (ready, refused) == (200, 400)
    assert listed == [200, 200, 200]
    client.close()


class PresignerAway:
    """A presigner whose store does not answer: minio asks AWS's global endpoint for a bucket's
    region before it presigns, when none is configured."""

    def presigned_url(self, key: str, *, expires_s: int, content_type: str | None = None) -> str:
        raise StorageUnavailable("the region lookup failed: connection refused")


def test_presigning_object_storage_cannot_serve_is_a_503(stack: Stack) -> None:
    """It was a 500 "internal error" with a traceback, while the manifest read meeting the same
    store answered 503."""
    resource = TaskResource(
        tasks=stack.parts.tasks, store=stack.parts.store, presigner=PresignerAway(), expiry_s=60
    )
    app = falcon.App()
    app.add_route("/tasks/{task_id}", resource)

    response = testing.TestClient(app).simulate_get("/tasks/stored-1")

    assert response.status_code == 503
    assert response.json["title"] == "object storage unavailable"


def put_raw(stack: Stack, key: str, data: bytes, content_type: str) -> None:
    """An object put in the task's bucket by another writer than the workers."""
    endpoint = urlsplit(stack.settings.s3_endpoint)
    s3 = Minio(
        endpoint.netloc,
        access_key=stack.settings.s3_access_key,
        secret_key=stack.settings.s3_secret_key,
        secure=False,
    )
    s3.put_object(stack.settings.s3_bucket, key, io.BytesIO(data), len(data), content_type=content_type)


@pytest.mark.parametrize(
    ("manifest", "status", "images"),
    [
        ([1, 2], 404, None),  # a JSON list: no manifest, and no record either
        ({"images": "abc"}, 200, []),
        ({"status": "stored", "images": [{"key": "tasks/odd-1/0.png"}]}, 200, []),  # no index
        ({"status": "stored", "images": [{"index": 0, "key": "tasks/odd-1/../stored-1/0.png"}]}, 200, []),
        ({"images": [None, {"index": 1, "key": "tasks/odd-1/1.png"}]}, 200, [1]),  # no status either
        ({"status": "stored", "images": [{"index": 0, "key": "tasks/odd-1/./0.png"}]}, 200, []),
        ({"status": "stored", "images": [{"index": True, "key": "tasks/odd-1/0.png"}]}, 200, []),
    ],
    ids=["list", "images-not-a-list", "no-index", "dot-dot", "no-status", "dot", "bool-index"],
)
def test_a_manifest_this_code_did_not_write_is_read_without_a_500(
    stack: Stack, manifest: object, status: int, images: list[int] | None
) -> None:
    """Given a manifest another writer of the bucket put there (its task has no record: expired),
    the task reads with the entries that are usable; each of these answered 500 with a traceback
    at every dashboard refresh."""
    stack.parts.store.put_json("tasks/odd-1/manifest.json", manifest)
    response = stack.app.simulate_get("/tasks/odd-1", headers=AUTH)
    assert response.status_code == status, response.text
    if images is not None:
        assert [image["index"] for image in response.json["images"]] == images


def test_a_manifest_that_is_not_json_reads_as_none(stack: Stack) -> None:
    put_raw(stack, "tasks/stored-1/manifest.json", b"not json", "application/json")
    response = stack.app.simulate_get("/tasks/stored-1", headers=AUTH)
    assert response.status_code == 200
    assert (response.json["state"], response.json["manifest"], response.json["images"]) == (
        "stored",
        None,
        [],
    )


def test_a_record_this_version_cannot_read_is_a_503_not_a_500(stack: Stack) -> None:
    client = redis.Redis.from_url(stack.settings.redis_url)
    client.hset("mjhook:task:stored-1", mapping={"state": "archived"})  # a newer version's state
    response = stack.app.simulate_get("/tasks/stored-1", headers=AUTH)
    assert response.status_code == 503
    assert "unusable" in response.json["error"]
    client.close()


def test_a_presigned_download_is_served_as_stored_media_or_as_an_attachment(stack: Stack) -> None:
    """Given an HTML file another writer put under the task's prefix and listed in its manifest,
    its presigned URL makes the store serve it as an attachment of no particular type, never a page
    rendered from the bucket's origin; a stored PNG is served as one."""
    put_raw(stack, "tasks/odd-2/0.html", b"<script>alert(1)</script>", "text/html")
    png = png_bytes(3)
    put_raw(stack, "tasks/odd-2/1.png", png, "image/png")
    stack.parts.store.put_json(
        "tasks/odd-2/manifest.json",
        {
            "status": "stored",
            "images": [
                {"index": 0, "key": "tasks/odd-2/0.html", "contentType": "text/html"},
                {"index": 1, "key": "tasks/odd-2/1.png", "contentType": "image/png"},
            ],
        },
    )
    html, image = stack.app.simulate_get("/tasks/odd-2", headers=AUTH).json["images"]
    served_html = httpx.get(html["url"])
    assert served_html.headers["content-type"] == "application/octet-stream"
    assert served_html.headers["content-disposition"] == "attachment"
    served_png = httpx.get(image["url"])
    assert (served_png.headers["content-type"], served_png.content) == ("image/png", png)


@pytest.mark.parametrize("path", ["/tasks", "/tasks/stored-1", "/dashboard/status"])
def test_read_answers_that_need_the_token_are_never_cached_nor_sniffed(stack: Stack, path: str) -> None:
    """They need the token, and carry text from callbacks (a reason, promptJson): no cache keeps
    them, no browser reads them as another type than JSON."""
    response = stack.app.simulate_get(path, headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"


def nested_json(depth: int) -> str:
    """A JSON object nested ``depth`` levels deep."""
    return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)


def test_the_deepest_manifest_a_worker_may_write_is_answered(stack: Stack) -> None:
    """Given workers allowed the deepest promptJson (MJHOOK_MAX_JSON_DEPTH at its most), a task's
    manifest holds it parsed, and GET /tasks/{taskId} answers it whole (with the limit at 253, as
    allowed before, the answer nested one past what orjson writes: an empty 500)."""
    settings = stack.settings.model_copy(update={"max_json_depth": MAX_JSON_DEPTH})
    prompt_json = nested_json(MAX_JSON_DEPTH)
    build_parts(settings).processor.process(Callback("deep-1", 200, "ok", prompt_json, (), "t"))

    response = stack.app.simulate_get("/tasks/deep-1", headers=AUTH)

    assert response.status_code == 200, response.text
    assert response.json["manifest"]["params"] == orjson.loads(prompt_json)


def test_a_manifest_nested_past_what_json_writers_write_is_answered_without_it(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """Given another writer's manifest nested 300 deep (readable, but past the 254 levels orjson
    writes), the task's answer is JSON without the manifest, said in the log: it was a 500 with
    an empty body, counted as a 200 by the request metrics."""
    put_raw(stack, "tasks/stored-1/manifest.json", nested_json(300).encode(), "application/json")

    response = stack.app.simulate_get("/tasks/stored-1", headers=AUTH)

    assert response.status_code == 200, response.text
    assert (response.json["state"], response.json["manifest"]) == ("stored", None)
    assert "its manifest cannot be answered" in caplog.text


def test_a_record_s_time_past_what_json_readers_take_is_listed_without_it(stack: Stack, redis_server) -> None:
    """An updatedAt of 20 digits (by hand, or another program) made the whole list a 500 with an
    empty body: orjson writes no integer past 64 bits, and JSON readers take none past 53 exactly."""
    client = redis.Redis.from_url(redis_server.url)
    client.hset(keys.task("failed-1"), "updatedAt", "9" * 20)
    client.hset(keys.task("stored-1"), "updatedAt", str(2**53))

    response = stack.app.simulate_get("/tasks", headers=AUTH)

    assert response.status_code == 200, response.text
    listed = {task["taskId"]: task["updatedAt"] for task in response.json["tasks"]}
    assert listed == {"failed-1": None, "stored-1": None}


def test_an_index_naming_a_task_id_that_is_no_text_leaves_it_out_of_the_list(
    stack: Stack, redis_server
) -> None:
    """A member of the recent index that is no UTF-8 (no id the ingress takes) made the list a 500."""
    redis.Redis.from_url(redis_server.url).zadd(keys.RECENT, {b"\xff\xfe": 10**13})

    response = stack.app.simulate_get("/tasks", headers=AUTH)

    assert response.status_code == 200, response.text
    assert {task["taskId"] for task in response.json["tasks"]} == {"stored-1", "failed-1"}


def test_a_list_by_state_has_only_tasks_now_in_it(stack: Stack) -> None:
    """A task whose record expired and was made anew by a later callback is still in its old
    state's index until the next task enters that state: listed by that state, it was returned
    with another state."""
    client = redis.Redis.from_url(stack.settings.redis_url)
    client.delete("mjhook:task:stored-1")
    TaskStore(client, ttl_s=3600).mark_received("stored-1", "2026-11-26T00:00:00.000Z")
    listed = stack.app.simulate_get("/tasks", params={"state": "stored"}, headers=AUTH).json["tasks"]
    assert [task["state"] for task in listed] == []
    client.close()
