"""The ceiling of the ingress: a bare Falcon app that parses the callback's JSON and answers 200,
with no checks and no Redis. Served with the ingress's own gunicorn settings (gunicorn's asyncio
``asgi`` worker, as the ingress):

    gunicorn bench.baselines.bare_falcon:app -c ingress/gunicorn_conf.py

``wsgi_app`` is the same app for WSGI: the ceiling of the ingress's earlier settings (gunicorn's
``gthread`` worker, 8 threads), which bench/ingress_ack.py also runs for comparison:

    gunicorn bench.baselines.bare_falcon:wsgi_app -c ingress/gunicorn_conf.py -k gthread --threads 8

``BARE_FALCON_JSON=stdlib`` parses with the standard library's json instead of orjson (the
ingress's parser), to see what the JSON library is worth.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import falcon
import falcon.asgi
import orjson

CALLBACK_PATH = "/callbacks/midjourney"


def _answer(resp: falcon.Response, loads: Callable[[bytes], Any], body: bytes) -> None:
    document = loads(body)
    resp.media = {"status": "received", "taskId": document["data"]["taskId"]}


class CallbackResource:
    def __init__(self, loads: Callable[[bytes], Any]) -> None:
        self._loads = loads

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        _answer(resp, self._loads, req.bounded_stream.read())


class AsyncCallbackResource(CallbackResource):
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:  # type: ignore[override]
        _answer(resp, self._loads, await req.stream.read())


class HealthResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class AsyncHealthResource:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"status": "ok"}


def _configure(app: falcon.App[Any, Any], stdlib_json: bool) -> None:
    if not stdlib_json:
        handler = falcon.media.JSONHandler(dumps=orjson.dumps, loads=orjson.loads)
        app.resp_options.media_handlers[falcon.MEDIA_JSON] = handler


def create_app(*, stdlib_json: bool = False) -> falcon.asgi.App:
    loads = json.loads if stdlib_json else orjson.loads
    return serving(AsyncCallbackResource(loads), stdlib_json=stdlib_json)


def serving(callbacks: object, *, stdlib_json: bool = False) -> falcon.asgi.App:
    """The bare ASGI app with ``callbacks`` as its callback resource (the reference receivers
    built on it: durable_falcon.py, grouped_falcon.py)."""
    app = falcon.asgi.App(media_type=falcon.MEDIA_JSON)
    _configure(app, stdlib_json)
    app.add_route(CALLBACK_PATH, callbacks)
    app.add_route("/healthz", AsyncHealthResource())
    return app


def create_wsgi_app(*, stdlib_json: bool = False) -> falcon.App[falcon.Request, falcon.Response]:
    app = falcon.App(media_type=falcon.MEDIA_JSON)
    _configure(app, stdlib_json)
    app.add_route(CALLBACK_PATH, CallbackResource(json.loads if stdlib_json else orjson.loads))
    app.add_route("/healthz", HealthResource())
    return app


_stdlib = os.environ.get("BARE_FALCON_JSON") == "stdlib"
app = create_app(stdlib_json=_stdlib)
wsgi_app = create_wsgi_app(stdlib_json=_stdlib)
