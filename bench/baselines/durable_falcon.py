"""The ceiling of any ingress that queues durably in Redis: a bare Falcon app that parses the
callback's JSON, RPUSHes its body onto the queue's list (the benchmark's Redis: AOF,
``appendfsync always``, so Redis answers once the write is on disk) and answers 200 once Redis
answered. No checks, no dedup, no task state, no spool: one round trip per callback on a pooled
asyncio connection (hiredis parsing the answer). Served with the ingress's own gunicorn settings,
on the Redis of ``MJHOOK_REDIS_URL``, only when asked for (``--only ... durable_falcon``):

    gunicorn bench.baselines.durable_falcon:app -c ingress/gunicorn_conf.py

bench/ingress_ack.py reads mjhook against it, and it against the bare app, as reference ratios:
what the durable write alone costs, and what mjhook costs beyond it (bench/RESULTS.md).
"""

from __future__ import annotations

import os

import falcon
import falcon.asgi
import orjson
import redis.asyncio

from bench.baselines.bare_falcon import serving
from shared import keys
from shared.queue import BROKER_NAMESPACE, CALLBACK_QUEUE

#: The list the ingress queues onto, so that the benchmark's check (every acknowledged callback
#: queued) holds it to the same work.
QUEUE_KEY = keys.broker_queue(BROKER_NAMESPACE, CALLBACK_QUEUE)


class DurableCallbackResource:
    """Queues each callback's body, then answers. The client is made in the serving process, on
    its event loop (gunicorn forks after loading the app)."""

    def __init__(self, redis_url: str) -> None:
        self._redis_url = redis_url
        self._client: redis.asyncio.Redis | None = None

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        body = await req.stream.read()
        document = orjson.loads(body)
        if self._client is None:
            self._client = redis.asyncio.Redis.from_url(self._redis_url)
        await self._client.rpush(QUEUE_KEY, body)
        resp.media = {"status": "received", "taskId": document["data"]["taskId"]}


def create_app(redis_url: str) -> falcon.asgi.App:
    return serving(DurableCallbackResource(redis_url))


app = create_app(os.environ.get("MJHOOK_REDIS_URL", "redis://127.0.0.1:6379/0"))
