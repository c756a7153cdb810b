"""A connection of the kind the ingress's acknowledgements hold (asyncio, taken from the pool and
kept), for tests of :meth:`TaskStore.mark_received_many`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio.connection import AbstractConnection

from shared.redis_client import connect_redis_async

T = TypeVar("T")


def with_ack_connection(redis_url: str, use: Callable[[AbstractConnection], Awaitable[T]]) -> T:
    """Run ``use`` on a held asyncio connection to ``redis_url`` in a new event loop."""

    async def run() -> T:
        acks = connect_redis_async(redis_url)
        connection = await acks.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            return await use(connection)
        finally:
            await acks.aclose()

    return asyncio.run(run())
