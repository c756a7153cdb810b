"""Blocking resources on the ingress's event loop: each responder runs in a worker thread.

The callback endpoint is asynchronous (its Redis round trip is shared by concurrent requests, see
ingress.group_commit); the read endpoints (task records, presigned URLs, the dashboard's status,
/metrics) call blocking clients, and run in a thread pool so that a slow read never holds up an
acknowledgement. The task and dashboard reads get a small pool of their own (ingress/app.py): a
slow object store under a busy dashboard then fills that pool, not the loop's default one, which
/readyz and the keeping of refused callbacks use."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

#: The responder methods falcon routes to (``on_get``, ``on_get_collection``, ...).
RESPONDER_PREFIX = "on_"


class Threaded:
    """``resource``'s responders as coroutines that run them in a worker thread: one of
    ``executor`` when given, else of the event loop's default pool."""

    def __init__(self, resource: object, *, executor: Executor | None = None) -> None:
        self.resource = resource
        for name in dir(resource):
            if name.startswith(RESPONDER_PREFIX) and callable(responder := getattr(resource, name)):
                setattr(self, name, _in_thread(responder, executor))


def _in_thread(func: Callable[..., Any], executor: Executor | None) -> Callable[..., Awaitable[Any]]:
    """``func`` as a coroutine function that runs it in ``executor`` (None: the loop's default)."""

    @functools.wraps(func)
    async def run(*args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            executor, functools.partial(func, *args, **kwargs)
        )

    return run
