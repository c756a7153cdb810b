"""GET /tasks/{taskId} and GET /tasks against a real Redis, SeaweedFS and stored files."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis
from falcon import testing

from ingress.app import create_app
from shared.callback import Callback
from shared.settings import Settings
from shared.taskstate import TaskStore
from tests.support.procs import free_port
from tests.support.servers import FileServer, png_bytes
from workers.runtime import build_parts, wait_for_bucket

TOKEN = "read-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Stack:
    app: testing.TestClient
    images: list[bytes]


@pytest.fixture
def stack(redis_server, s3_server, s3_bucket, file_server: FileServer) -> Iterator[Stack]:
    settings = Settings(
        redis_url=redis_server.url,
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        s3_bucket=s3_bucket,
        fetch_allow=("127.0.0.1",),
        api_token=TOKEN,
        spool_dir="",
    )
    parts = build_parts(settings)
    wait_for_bucket(parts.store, timeout_s=30)
    images = [png_bytes(seed) for seed in range(2)]
    urls = [file_server.add(f"/{i}.png", image) for i, image in enumerate(images)]
    for task_id, code in (("stored-1", 200), ("failed-1", 500)):
        parts.processor.process(
            Callback(
                task_id, code, "ok" if code == 200 else "boom", None, tuple(urls) if code == 200 else (), "t"
            )
        )
    client = redis.Redis.from_url(redis_server.url)
    yield Stack(testing.TestClient(create_app(settings, redis_client=client)), images)
    client.close()


def test_a_stored_task_comes_with_working_presigned_urls(stack: Stack) -> None:
    response = stack.app.simulate_get("/tasks/stored-1", headers=AUTH)
    assert response.status_code == 200
    body = response.json
    assert body["taskId"] == "stored-1"
    assert body["state"] == "stored"
    assert body["manifest"]["status"] == "stored"
    assert [image["key"] for image in body["images"]] == ["tasks/stored-1/0.png", "tasks/stored-1/1.png"]
    for image, original in zip(body["images"], stack.images, strict=True):
        downloaded = httpx.get(image["url"], timeout=10)
        assert downloaded.status_code == 200
        assert hashlib.sha256(downloaded.content).digest() == hashlib.sha256(original).digest()


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


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}])
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
