"""Property tests: random and hostile bodies, headers and query strings never get a 5xx, never
raise, and every refusal is a 4xx with a JSON reason that queued nothing."""

from __future__ import annotations

import json
import string
from collections.abc import Iterator

import pytest
import redis
from falcon import testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingress.app import create_app
from shared.settings import Settings

PATH = "/callbacks/midjourney"
QUEUE = "dramatiq:callbacks"

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=30,
)
task_ids = st.one_of(
    st.text(max_size=140),
    st.sampled_from(["../x", "a/b", "..", "ok-id", "%00", "a\u202eb", "x" * 200, "mj_task_1"]),
)
callback_like = st.fixed_dictionaries(
    {},
    optional={
        "code": st.one_of(st.integers(), st.text(max_size=5), st.booleans(), st.none()),
        "msg": json_values,
        "data": st.one_of(
            json_values,
            st.fixed_dictionaries(
                {},
                optional={
                    "taskId": st.one_of(task_ids, json_values),
                    "task_id": task_ids,
                    "promptJson": st.one_of(st.text(max_size=100), json_values),
                    "resultUrls": st.one_of(st.lists(st.text(max_size=50), max_size=20), json_values),
                },
            ),
        ),
    },
)


def dumps(value: object) -> bytes:
    # The standard library writes what orjson refuses (integers beyond 64 bits): the ingress
    # must refuse those bodies cleanly too.
    return json.dumps(value).encode()


bodies = st.one_of(
    callback_like.map(dumps),
    json_values.map(dumps),
    st.binary(max_size=300),
    st.integers(min_value=1, max_value=200).map(lambda n: b"[" * n + b"]" * n),
)
header_text = st.text(alphabet=string.printable.replace("\r", "").replace("\n", ""), max_size=60)


@pytest.fixture
def app_and_redis(redis_server) -> Iterator[tuple[testing.TestClient, redis.Redis]]:
    client = redis.Redis.from_url(redis_server.url)
    config = Settings(
        redis_url=redis_server.url,
        spool_dir="",
        callback_token="right",
        webhook_hmac_key="key",
        max_body_bytes=4096,
    )
    yield testing.TestClient(create_app(config, redis_client=client)), client
    client.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=bodies,
    content_type=st.one_of(st.sampled_from(["application/json", "text/plain", ""]), header_text),
    query=st.one_of(st.just("token=right"), header_text.map(lambda q: q.lstrip("?"))),
    timestamp=st.one_of(st.none(), header_text, st.integers().map(str)),
    signature=st.one_of(st.none(), header_text),
)
def test_hostile_requests_never_get_a_5xx_and_queue_nothing(
    app_and_redis: tuple[testing.TestClient, redis.Redis],
    body: bytes,
    content_type: str,
    query: str,
    timestamp: str | None,
    signature: str | None,
) -> None:
    app, client = app_and_redis
    before = client.llen(QUEUE)
    headers = {"Content-Type": content_type}
    if timestamp is not None:
        headers["X-Webhook-Timestamp"] = timestamp
    if signature is not None:
        headers["X-Webhook-Signature"] = signature
    response = app.simulate_post(PATH, body=body, headers=headers, query_string=query)
    # Without a valid signature nothing can be accepted, so every answer here is a refusal.
    assert 400 <= response.status_code < 500
    assert isinstance(response.json["error"], str)
    assert response.json["error"]
    assert client.llen(QUEUE) == before
    assert b"key" not in response.content.replace(b"keys", b"")  # the HMAC key is never echoed


@pytest.fixture
def open_app_and_redis(redis_server) -> Iterator[tuple[testing.TestClient, redis.Redis]]:
    client = redis.Redis.from_url(redis_server.url)
    config = Settings(redis_url=redis_server.url, spool_dir="", max_body_bytes=4096)
    yield testing.TestClient(create_app(config, redis_client=client)), client
    client.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_every_body_is_either_queued_once_or_refused_with_a_reason(
    open_app_and_redis: tuple[testing.TestClient, redis.Redis], body: bytes
) -> None:
    app, client = open_app_and_redis
    before = client.llen(QUEUE)
    response = app.simulate_post(PATH, body=body, headers={"Content-Type": "application/json"})
    if response.status_code == 200:
        assert response.json["status"] == "received"
        assert client.llen(QUEUE) == before + 1
    else:
        assert 400 <= response.status_code < 500
        assert response.json["error"]
        assert client.llen(QUEUE) == before
