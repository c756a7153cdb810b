"""The best case of any ingress that queues durably in Redis: ``durable_falcon`` with mjhook's own
group commit. A bare Falcon app that parses the callback's JSON and hands its body to
:class:`ingress.group_commit.GroupCommit`, whose flusher RPUSHes every body waiting at once onto
the queue's list in one command, on a connection it holds (packed by hiredis, as mjhook's round
is), and answers 200 once Redis answered (the benchmark's Redis fsyncs before it answers:
``appendfsync always``). No checks, no dedup, no task state, no message envelope, no metrics, no
spool: only what makes a callback durable, at the fewest round trips. Served with the ingress's
own gunicorn settings, on the Redis of ``MJHOOK_REDIS_URL``, only when asked for (``--only ...
grouped_falcon``):

    gunicorn bench.baselines.grouped_falcon:app -c ingress/gunicorn_conf.py

bench/ingress_ack.py reads it against the bare app, and mjhook against it, as reference ratios:
if it stays under 0.7x the bare app, no Redis-backed ingress can reach the target on that machine.
"""

from __future__ import annotations

import os

import falcon
import falcon.asgi
import hiredis
import orjson
import redis.asyncio
from redis.asyncio.connection import AbstractConnection

from bench.baselines.bare_falcon import serving
from bench.baselines.durable_falcon import QUEUE_KEY
from ingress.group_commit import GroupCommit


class GroupedCallbackResource:
    """Queues each callback's body in the round of the bodies waiting with it, then answers. The
    client and its held connection are made in the serving process, on its event loop (gunicorn
    forks after loading the app)."""

    def __init__(self, redis_url: str) -> None:
        self._redis_url = redis_url
        self._connection: AbstractConnection | None = None
        self._group: GroupCommit[bytes, int] = GroupCommit(self._push)

    async def _push(self, bodies: list[bytes]) -> list[int]:
        if self._connection is None:
            client = redis.asyncio.Redis.from_url(self._redis_url)
            self._connection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        await self._connection.send_packed_command(hiredis.pack_command(("RPUSH", QUEUE_KEY, *bodies)))
        length: int = await self._connection.read_response()
        return [length] * len(bodies)

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        body = await req.stream.read()
        document = orjson.loads(body)
        await self._group.submit(body)
        resp.media = {"status": "received", "taskId": document["data"]["taskId"]}


def create_app(redis_url: str) -> falcon.asgi.App:
    return serving(GroupedCallbackResource(redis_url))


app = create_app(os.environ.get("MJHOOK_REDIS_URL", "redis://127.0.0.1:6379/0"))
