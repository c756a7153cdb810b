"""bench/baselines/durable_falcon.py, the bare app plus one durable write: it answers a callback
only once the callback's body is on the queue's list, against a real redis-server."""

from __future__ import annotations

import orjson
import redis
from falcon import testing

from bench.baselines.durable_falcon import QUEUE_KEY, create_app
from tests.support.servers import RedisServer

CALLBACK = {
    "code": 200,
    "msg": "success",
    "data": {"taskId": "t-1", "promptJson": "{}", "resultUrls": ["https://example.com/a.png"]},
}


def test_a_callback_is_answered_once_its_body_is_queued(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    body = orjson.dumps(CALLBACK)

    answer = testing.TestClient(create_app(redis_server.url)).simulate_post(
        "/callbacks/midjourney", body=body, headers={"Content-Type": "application/json"}
    )

    assert answer.status_code == 200
    assert answer.json == {"status": "received", "taskId": "t-1"}
    assert client.lrange(QUEUE_KEY, 0, -1) == [body]
