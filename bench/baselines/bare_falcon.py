"""The ceiling of the ingress: a bare Falcon app that parses the callback's JSON and answers 200,
with no checks and no Redis. Served with the ingress's own gunicorn settings:

    gunicorn bench.baselines.bare_falcon:app -c ingress/gunicorn_conf.py

``BARE_FALCON_JSON=stdlib`` parses with the standard library's json instead of orjson (the
ingress's parser), to see what the JSON library is worth.
"""

from __future__ import annotations

import json
import os

import falcon
import orjson


class CallbackResource:
    def __init__(self, loads: object) -> None:
        self._loads = loads

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        document = self._loads(req.bounded_stream.read())  # type: ignore[operator]
        resp.media = {"status": "received", "taskId": document["data"]["taskId"]}


class HealthResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


def create_app(*, stdlib_json: bool = False) -> falcon.App[falcon.Request, falcon.Response]:
    app = falcon.App(media_type=falcon.MEDIA_JSON)
    if not stdlib_json:
        handler = falcon.media.JSONHandler(dumps=orjson.dumps, loads=orjson.loads)
        app.resp_options.media_handlers[falcon.MEDIA_JSON] = handler
    app.add_route("/callbacks/midjourney", CallbackResource(json.loads if stdlib_json else orjson.loads))
    app.add_route("/healthz", HealthResource())
    return app


app = create_app(stdlib_json=os.environ.get("BARE_FALCON_JSON") == "stdlib")
