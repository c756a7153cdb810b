"""GET /metrics and what the ingress counts, with falcon's TestClient and a real Redis."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis
from falcon import testing

from ingress.app import create_app
from ingress.spool import UNQUEUED_NAME
from shared.callback import Callback
from shared.logs import JsonFormatter
from shared.queue import create_broker, enqueue_callback
from shared.settings import Settings
from tests.support.metrics import Samples, parse_metrics
from tests.support.pipeline import queued_callback
from tests.support.procs import free_port

PATH = "/callbacks/midjourney"
VALID = orjson.dumps(
    {
        "code": 200,
        "msg": "success",
        "data": {"taskId": "mj_task_1", "promptJson": "{}", "resultUrls": ["https://example.com/a.png"]},
    }
)
JSON = {"Content-Type": "application/json"}


def scrape(app: testing.TestClient) -> Samples:
    response = app.simulate_get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse_metrics(response.text)


def requests(endpoint: str, method: str, status: str) -> tuple[str, frozenset[tuple[str, str]]]:
    labels = {"endpoint": endpoint, "method": method, "status": status}
    return ("mjhook_http_requests_total", frozenset(labels.items()))


@pytest.fixture
def redis_url(redis_server) -> str:
    redis.Redis.from_url(redis_server.url).flushdb()
    return str(redis_server.url)


@pytest.mark.filterwarnings("ignore:Unknown REQUEST_METHOD")
def test_requests_are_counted_by_route_method_and_status_and_callbacks_timed(redis_url: str) -> None:
    app = testing.TestClient(create_app(Settings(redis_url=redis_url, spool_dir="")))
    assert app.simulate_post(PATH, body=VALID, headers=JSON).status_code == 200
    assert app.simulate_post(PATH, body=b"{not json", headers=JSON).status_code == 400
    assert app.simulate_post(PATH, body=VALID, headers={"Content-Type": "text/plain"}).status_code == 415
    assert app.simulate_get("/nowhere").status_code == 404
    app.simulate_request("BREW", "/healthz")

    served = scrape(app)
    assert served[requests(PATH, "POST", "200")] == 1
    assert served[requests(PATH, "POST", "400")] == 1
    assert served[requests(PATH, "POST", "415")] == 1
    assert served[requests("unmatched", "GET", "404")] == 1
    other = [
        v for (name, labels), v in served.items() if name.endswith("_total") and ("method", "other") in labels
    ]
    assert other == [1]
    assert served[("mjhook_callback_ack_seconds_count", frozenset())] == 3
    assert served[("mjhook_callbacks_rejected_total", frozenset({("status", "400")}))] == 1
    assert served[("mjhook_callbacks_rejected_total", frozenset({("status", "415")}))] == 1
    assert served[("mjhook_enqueue_failures_total", frozenset())] == 0


def test_while_redis_is_down_failures_spooled_callbacks_and_the_spool_depth_are_shown(tmp_path: Path) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    app = testing.TestClient(
        create_app(Settings(redis_url=dead_redis, spool_dir=str(tmp_path), redis_timeout_s=0.5))
    )
    assert app.simulate_post(PATH, body=VALID, headers=JSON).status_code == 200

    served = scrape(app)
    assert served[("mjhook_enqueue_failures_total", frozenset())] == 1
    assert served[("mjhook_callbacks_spooled_total", frozenset())] == 1
    assert served[("mjhook_spool_callbacks", frozenset())] == 1
    assert served[("mjhook_spool_bytes", frozenset())] > 0
    assert served[("mjhook_spool_set_aside", frozenset())] == 0


def test_callbacks_a_drain_set_aside_are_shown(tmp_path: Path) -> None:
    # Given an acknowledged callback a drain set aside (the queue refused it for good)
    app = testing.TestClient(
        create_app(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", spool_dir=str(tmp_path)))
    )
    (tmp_path / UNQUEUED_NAME).write_bytes(b'{"a spooled callback": 1}\n')
    # Then the ingress's metrics count it, for an alert: nothing else shows it but a log line
    assert scrape(app)[("mjhook_spool_set_aside", frozenset())] == 1


def test_the_queue_depths_are_served_by_the_ingress_too(redis_url: str) -> None:
    """README: the ingress's /metrics has the queue's depths. With every worker down (no worker
    /metrics at all) the queue growing is exactly what must show."""
    # Given two callbacks queued and no worker running
    client = redis.Redis.from_url(redis_url)
    broker = create_broker(Settings(redis_url=redis_url), client=client, middleware=[])
    for task_id in ("q0", "q1"):
        enqueue_callback(broker, Callback.from_message(queued_callback(task_id)))
    app = testing.TestClient(create_app(Settings(redis_url=redis_url, spool_dir=""), redis_client=client))
    # When the ingress is scraped
    served = scrape(app)
    # Then the ready queue's depth is there
    depth = frozenset({("queue", "callbacks"), ("state", "ready")})
    assert served[("mjhook_queue_messages", depth)] == 2
    assert served[("mjhook_queue_messages", frozenset({("queue", "callbacks"), ("state", "dead")}))] == 0


@pytest.fixture
def resource_log() -> Iterator[io.StringIO]:
    """The callback resource's log lines, in JSON."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("ingress.resources")
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def test_a_callback_log_line_carries_its_task_id(resource_log: io.StringIO) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    app = testing.TestClient(create_app(Settings(redis_url=dead_redis, spool_dir="", redis_timeout_s=0.5)))
    assert app.simulate_post(PATH, body=VALID, headers=JSON).status_code == 503
    [line] = [orjson.loads(text) for text in resource_log.getvalue().splitlines()]
    assert line["taskId"] == "mj_task_1"
    assert "not queued" in line["message"]
