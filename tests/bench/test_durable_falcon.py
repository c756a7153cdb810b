"""bench/baselines/durable_falcon.py and grouped_falcon.py, the bare app plus one durable write
(one per callback, or one per group-commit round): each answers a callback only once the
callback's body is on the queue's list, against a real redis-server."""

from __future__ import annotations

import asyncio

import orjson
import redis
from falcon import testing

from bench.baselines.durable_falcon import QUEUE_KEY, create_app
from bench.baselines.grouped_falcon import create_app as create_grouped_app
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


def test_the_grouped_reference_answers_concurrent_callbacks_once_every_body_is_queued(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    """bench/baselines/grouped_falcon.py: the same write through mjhook's group commit."""
    bodies = [orjson.dumps({**CALLBACK, "data": {**CALLBACK["data"], "taskId": f"t-{n}"}}) for n in range(8)]

    async def post_all() -> list[testing.Result]:
        async with testing.ASGIConductor(create_grouped_app(redis_server.url)) as conductor:
            return await asyncio.gather(
                *(
                    conductor.simulate_post(
                        "/callbacks/midjourney", body=body, headers={"Content-Type": "application/json"}
                    )
                    for body in bodies
                )
            )

    answers = asyncio.run(post_all())

    expected = [{"status": "received", "taskId": f"t-{n}"} for n in range(8)]
    assert [answer.json for answer in answers] == expected
    assert sorted(client.lrange(QUEUE_KEY, 0, -1)) == sorted(bodies)
