"""Blocking resources on the ingress's event loop: each responder runs in a worker thread.

The callback endpoint is asynchronous (its Redis round trip is shared by concurrent requests, see
ingress.group_commit); the read endpoints (task records, presigned URLs, the dashboard's status,
/metrics) call blocking clients, and run in the loop's thread pool so that a slow read never holds
up an acknowledgement."""

from __future__ import annotations

from falcon.util.sync import wrap_sync_to_async

#: The responder methods falcon routes to (``on_get``, ``on_get_collection``, ...).
RESPONDER_PREFIX = "on_"


class Threaded:
    """``resource``'s responders as coroutines that run them in a worker thread."""

    def __init__(self, resource: object) -> None:
        self.resource = resource
        for name in dir(resource):
            if name.startswith(RESPONDER_PREFIX) and callable(responder := getattr(resource, name)):
                setattr(self, name, wrap_sync_to_async(responder, threadsafe=True))
