"""GET /dashboard (the page) and GET /dashboard/status (queue depths, workers, task counts),
through falcon's TestClient against a real Redis."""

from __future__ import annotations

import base64
import hashlib
import re

import falcon
import pytest
import redis
from falcon import testing

from ingress.app import create_app
from ingress.dashboard import DashboardStatusResource
from shared.callback import Callback
from shared.queue import CALLBACK_QUEUE, create_broker, enqueue_callback
from shared.rejected import Rejection, RejectLog
from shared.settings import Settings
from shared.taskstate import TaskState, TaskStore
from tests.support.pipeline import queued_callback
from tests.support.procs import free_port
from tests.support.servers import RedisServer

TOKEN = "dash-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
S3_PUBLIC = "http://files.example.test:9000"


def settings_for(redis_url: str, **changes: object) -> Settings:
    return Settings(redis_url=redis_url, spool_dir="", s3_public_endpoint=S3_PUBLIC, **changes)  # type: ignore[arg-type]


def app_for(client: redis.Redis, redis_url: str, *, token: str = TOKEN) -> testing.TestClient:
    return testing.TestClient(create_app(settings_for(redis_url, api_token=token), redis_client=client))


@pytest.fixture
def app(client: redis.Redis, redis_server: RedisServer) -> testing.TestClient:
    return app_for(client, redis_server.url)


def test_the_page_is_served_as_html_that_runs_only_its_own_code(app: testing.TestClient) -> None:
    response = app.simulate_get("/dashboard", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "<title>mjhook dashboard</title>" in response.text
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-store"
    # The policy names the hash of each inline block, so an edit of the page cannot break it,
    # and lets images come from the endpoint presigned URLs point at.
    policy = response.headers["Content-Security-Policy"]
    blocks = re.findall(r"<(script|style)>(.*?)</\1>", response.text, re.DOTALL)
    assert {kind for kind, _ in blocks} == {"script", "style"}
    for _, body in blocks:
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in policy
    assert "img-src 'self' http://files.example.test:9000;" in policy
    assert "connect-src 'self';" in policy
    assert "default-src 'none';" in policy


def test_the_page_never_puts_data_into_html(app: testing.TestClient) -> None:
    script = app.simulate_get("/dashboard", headers=AUTH).text
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script


@pytest.mark.parametrize(
    ("path", "headers", "params"),
    [
        ("/dashboard", {}, {}),
        ("/dashboard", {"Authorization": "Bearer wrong"}, {}),
        ("/dashboard", {}, {"token": "wrong"}),
        ("/dashboard", {}, {"token": ""}),
        # ?token= is for the page a browser opens; the JSON endpoints take the header only.
        ("/dashboard/status", {}, {"token": TOKEN}),
        ("/tasks", {}, {"token": TOKEN}),
    ],
)
def test_the_dashboard_needs_the_api_token(
    app: testing.TestClient, path: str, headers: dict[str, str], params: dict[str, str]
) -> None:
    response = app.simulate_get(path, headers=headers, params=params)
    assert response.status_code == 401
    assert response.json == {"error": "missing or wrong API token"}


def test_the_page_takes_the_token_as_a_header_or_in_the_query(app: testing.TestClient) -> None:
    assert app.simulate_get("/dashboard", headers=AUTH).status_code == 200
    assert app.simulate_get("/dashboard", params={"token": TOKEN}).status_code == 200
    assert app.simulate_get("/dashboard/status", headers=AUTH).status_code == 200


def test_without_a_configured_token_the_dashboard_is_open(
    client: redis.Redis, redis_server: RedisServer
) -> None:
    open_app = app_for(client, redis_server.url, token="")
    assert open_app.simulate_get("/dashboard").status_code == 200
    assert open_app.simulate_get("/dashboard/status").status_code == 200


def test_status_has_queue_depths_workers_and_task_counts(
    app: testing.TestClient, client: redis.Redis, redis_server: RedisServer
) -> None:
    # Given three callbacks queued, one of them taken by a worker that has not acked it yet
    broker = create_broker(Settings(redis_url=redis_server.url), client=client, middleware=[])
    for i in range(3):
        enqueue_callback(broker, Callback.from_message(queued_callback(f"q{i}")))
    consumer = create_broker(Settings(redis_url=redis_server.url), client=client, middleware=[])
    next(iter(consumer.consume(CALLBACK_QUEUE, prefetch=1)))
    # and tasks in several states
    tasks = TaskStore(client, ttl_s=3600)
    for task_id, state in (("a", TaskState.STORED), ("b", TaskState.STORED), ("c", TaskState.FAILED)):
        tasks.move(task_id, state)
    # and a callback refused
    bad = app.simulate_post("/callbacks/midjourney", body=b"{", headers={"Content-Type": "application/json"})
    assert bad.status_code == 400
    # When
    response = app.simulate_get("/dashboard/status", headers=AUTH)
    # Then
    assert response.status_code == 200
    body = response.json
    queue = body["queues"][CALLBACK_QUEUE]
    assert (queue["ready"], queue["delayed"], queue["in_flight"], queue["dead"]) == (2, 0, 1, 0)
    assert body["workers"] == 1  # the consumer holds a message and beats
    assert body["tasks"] == {"received": 0, "processing": 0, "stored": 2, "partial": 0, "failed": 1}
    assert body["rejected"] == 1
    assert isinstance(body["taken_at_ms"], int)


def test_with_the_queue_outside_redis_status_has_task_counts_and_no_workers(client: redis.Redis) -> None:
    # Given a queue the ingress cannot read depths from (RabbitMQ), two tasks and a refusal
    tasks = TaskStore(client, ttl_s=3600)
    tasks.move("a", TaskState.STORED)
    tasks.move("b", TaskState.FAILED)
    RejectLog(client, keep=10, body_bytes=64).record(
        Rejection(
            status=415, reason="Content-Type", body=b"x", size=1, remote_addr="", content_type="text/plain"
        )
    )
    resource = DashboardStatusResource(
        queue_client=None, tasks=tasks, heartbeat_timeout_ms=1000, poll_grace_s=60
    )
    app = falcon.App()
    app.add_route("/status", resource)
    # When
    body = testing.TestClient(app).simulate_get("/status").json
    # Then
    assert body["queues"] == {}
    assert body["workers"] is None
    assert body["tasks"] == {"received": 0, "processing": 0, "stored": 1, "partial": 0, "failed": 1}
    assert body["rejected"] == 1


def test_status_is_503_while_redis_is_unreachable() -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"
    app = testing.TestClient(create_app(settings_for(down, api_token=TOKEN, redis_timeout_s=0.5)))
    response = app.simulate_get("/dashboard/status", headers=AUTH)
    assert response.status_code == 503
    assert response.json == {"error": "Redis unavailable"}
    # The page itself needs no Redis.
    assert app.simulate_get("/dashboard", headers=AUTH).status_code == 200
