"""GET /dashboard (the page) and GET /dashboard/status (queue depths, workers, task counts),
through falcon's TestClient against a real Redis."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

import falcon
import pytest
import redis
import urllib3
from falcon import testing
from minio.error import S3Error

from ingress.app import DEFAULT_READ_THREADS, create_app
from ingress.dashboard import AWS_ORIGINS, DashboardStatusResource, presigned_origin
from shared.callback import Callback
from shared.errors import StorageUnavailable
from shared.queue import CALLBACK_QUEUE, create_broker, enqueue_callback
from shared.redis_durability import CANNOT_BE_CHECKED
from shared.rejected import Rejection, RejectLog
from shared.settings import Settings
from shared.storage import create_object_store
from shared.taskstate import TaskState, TaskStore
from tests.support.pipeline import queued_callback
from tests.support.procs import free_port
from tests.support.servers import RedisServer, start_redis

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
    assert "media-src http://files.example.test:9000;" in policy  # stored videos
    assert "connect-src 'self';" in policy
    assert "default-src 'none';" in policy


def directive(policy: str, name: str) -> list[str]:
    """The sources of directive ``name`` of a Content-Security-Policy."""
    return next(d.split()[1:] for d in policy.split(";") if d.split() and d.split()[0] == name)


@pytest.fixture
def no_name_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any name lookup but of the loopback (the tests' Redis) fails the test: nothing reaches out."""
    real_getaddrinfo = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host not in ("127.0.0.1", "localhost"):
            raise AssertionError(f"the test must not look up {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)


@pytest.mark.usefixtures("no_name_lookups")
@pytest.mark.parametrize("endpoint", ["https://s3.amazonaws.com", "https://s3.eu-west-1.amazonaws.com"])
def test_on_aws_the_page_allows_images_and_videos_from_where_presigned_urls_point(
    client: redis.Redis, redis_server: RedisServer, endpoint: str
) -> None:
    """Given AWS S3, where minio presigns virtual-hosted URLs (the bucket in the host), when the page
    is served, then its policy allows images and videos from the origin those URLs name, learnt
    without a request (presigning is local with the region configured)."""
    settings = Settings(
        redis_url=redis_server.url,
        s3_endpoint=endpoint,
        s3_region="eu-west-1",
        s3_access_key="AKIAEXAMPLE",
        s3_secret_key="secret",
        s3_bucket="midjourney",
        api_token=TOKEN,
        spool_dir="",
    )
    app = testing.TestClient(create_app(settings, redis_client=client))
    policy = app.simulate_get("/dashboard", params={"token": TOKEN}).headers["Content-Security-Policy"]

    # The URL GET /tasks/{taskId} hands the page, made the way ingress/app.py makes its presigner
    url = urlsplit(create_object_store(settings).presigned_url("tasks/t1/0.png", expires_s=3600))
    image_origin = f"{url.scheme}://{url.netloc}"
    assert image_origin == "https://midjourney.s3.eu-west-1.amazonaws.com"
    assert image_origin in directive(policy, "img-src")
    assert directive(policy, "media-src") == [image_origin]


def test_without_a_region_and_the_store_away_the_page_allows_the_endpoint(
    client: redis.Redis, redis_server: RedisServer
) -> None:
    """Given no region configured (minio must ask the store for it to presign) and a store that
    does not answer, when the ingress starts, then it serves all the same, and the page allows
    images from the endpoint's origin."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    settings = Settings(
        redis_url=redis_server.url,
        s3_endpoint=endpoint,
        s3_region="",
        s3_access_key="key",
        s3_secret_key="secret",
        api_token=TOKEN,
        spool_dir="",
    )
    app = testing.TestClient(create_app(settings, redis_client=client))
    policy = app.simulate_get("/dashboard", headers=AUTH).headers["Content-Security-Policy"]
    assert directive(policy, "img-src") == ["'self'", endpoint]
    assert directive(policy, "media-src") == [endpoint]


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


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        # Falcon reads the last value, URLSearchParams.get (the page's script) the first.
        (f"token=wrong&token={TOKEN}", {}),
        (f"token=&token={TOKEN}", {}),
        # Identical repeats too: any repeat is refused, whatever the values.
        (f"token={TOKEN}&token={TOKEN}", {}),
        # Even with a good header: the page's script does not act on such a URL either.
        ("token=wrong&token=wrong", AUTH),
    ],
)
def test_the_page_refuses_a_token_given_more_than_once_in_the_query(
    app: testing.TestClient, query: str, headers: dict[str, str]
) -> None:
    response = app.simulate_get("/dashboard", query_string=query, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json == {"error": "API token given more than once"}


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
        queue_client=None,
        tasks=tasks,
        durability_clients={"": client},
        heartbeat_timeout_ms=1000,
        poll_grace_s=60,
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


def test_status_says_what_in_redis_can_lose_acknowledged_callbacks(
    app: testing.TestClient, client: redis.Redis
) -> None:
    # Given the test's Redis as redis-server starts by default: the append-only file off
    assert client.config_get("appendonly") == {"appendonly": "no"}
    # When
    response = app.simulate_get("/dashboard/status", headers=AUTH)
    # Then it says so, in the sentence mjhook status --json gives
    assert response.status_code == 200
    [problem] = response.json["redis_durability"]
    assert problem.startswith("appendonly is no: a Redis restart or crash loses every acknowledged")


def test_status_has_no_durability_problem_with_a_durable_redis(
    app: testing.TestClient, client: redis.Redis
) -> None:
    # Given a Redis writing each command to its append-only file, fsync'd before it answers
    # (maxmemory-policy is noeviction by default)
    client.config_set("appendonly", "yes")
    client.config_set("appendfsync", "always")
    # When
    response = app.simulate_get("/dashboard/status", headers=AUTH)
    # Then
    assert response.status_code == 200
    assert response.json["redis_durability"] == []


def test_a_redis_refusing_config_is_a_sentence_in_the_status_not_a_503(tmp_path: Path) -> None:
    # Given a Redis that refuses CONFIG, as managed services do
    server = start_redis(tmp_path / "no-config", extra_args=["--rename-command", "CONFIG", ""])
    client = redis.Redis.from_url(server.url)
    try:
        # When
        response = app_for(client, server.url).simulate_get("/dashboard/status", headers=AUTH)
    finally:
        client.close()
        server.kill()
    # Then the numbers are there, and the durability cannot be checked
    assert response.status_code == 200
    assert response.json["tasks"]["stored"] == 0
    [note] = response.json["redis_durability"]
    assert note.startswith(f"{CANNOT_BE_CHECKED} (ResponseError: ")


class HungStore:
    """An S3 endpoint on 127.0.0.1 that takes connections and never answers; counts them."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self.connections.append(connection)

    def close(self) -> None:
        self._listener.close()
        for connection in self.connections:
            connection.close()


def test_a_hung_object_store_leaves_the_dashboards_numbers_and_list_answering(
    client: redis.Redis, redis_server: RedisServer
) -> None:
    """Given an object store that takes connections and never answers, and as many task reads
    waiting on it as the read threads (the page asks for up to 50 a refresh), when the page asks
    for its numbers and its list (Redis alone), then they are answered while every one of those
    reads still waits: they shared the read threads, and waited behind the store for minutes."""
    store = HungStore()
    settings = settings_for(redis_server.url, api_token=TOKEN, s3_endpoint=f"http://127.0.0.1:{store.port}")
    app = create_app(settings, redis_client=client)

    async def scenario() -> tuple[int, int, int, list[int]]:
        async with testing.ASGIConductor(app) as conductor:
            hung = [
                asyncio.create_task(conductor.simulate_get(f"/tasks/t-{i}", headers=AUTH))
                for i in range(DEFAULT_READ_THREADS)
            ]
            while len(store.connections) < DEFAULT_READ_THREADS:  # every read thread waits on the store
                await asyncio.sleep(0.02)
            status = await conductor.simulate_get("/dashboard/status", headers=AUTH)
            listed = await conductor.simulate_get("/tasks", headers=AUTH)
            still_waiting = sum(not task.done() for task in hung)
            answers = await asyncio.gather(*hung)
        return status.status_code, listed.status_code, still_waiting, [a.status_code for a in answers]

    try:
        status, listed, still_waiting, answers = asyncio.run(scenario())
    finally:
        store.close()
    assert (status, listed) == (200, 200)
    assert still_waiting == DEFAULT_READ_THREADS
    assert answers == [503] * DEFAULT_READ_THREADS  # the store's read timed out: said, not hung


class StoreAway:
    """A presigner whose store does not answer (minio asks AWS's global endpoint for a bucket's
    region before it presigns, when none is configured)."""

    def presigned_url(self, key: str, *, expires_s: int, content_type: str | None = None) -> str:
        raise StorageUnavailable("the region lookup failed: connection refused")


class StoreRefuses:
    """A presigner whose store refuses the region lookup (wrong keys, no GetBucketLocation)."""

    def presigned_url(self, key: str, *, expires_s: int, content_type: str | None = None) -> str:
        response = urllib3.HTTPResponse(body=b"", status=403)
        raise S3Error(response, "AccessDenied", "Access Denied", "/midjourney", "req-1", "host-1")


@pytest.mark.parametrize("store", [StoreAway(), StoreRefuses()], ids=["away", "refuses"])
def test_a_store_that_cannot_presign_at_start_leaves_the_fallback_origin(store: object) -> None:
    """A refusal (S3Error) raised out of the dashboard's set-up: the ingress did not start, and
    took no callback."""
    fallback = "https://s3.amazonaws.com"
    assert presigned_origin(store, fallback=fallback) == AWS_ORIGINS  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fallback", "allowed"),
    [
        ("https://s3.amazonaws.com", AWS_ORIGINS),  # later URLs name the bucket's regional host
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
    ],
    ids=["aws", "elsewhere"],
)
def test_the_image_origin_when_no_url_could_be_presigned_at_start(fallback: str, allowed: str) -> None:
    """On AWS's global endpoint without a region, AWS unreachable when the ingress started: the
    page allowed https://s3.amazonaws.com, and the presigned URLs made later name
    https://BUCKET.s3.REGION.amazonaws.com: every thumbnail was blocked until a restart."""
    assert presigned_origin(StoreAway(), fallback=fallback) == allowed  # type: ignore[arg-type]
