"""The simulator's WSGI application factory."""

from __future__ import annotations

import time
from collections.abc import Callable

import falcon
import orjson
from falcon import media

from simulator.errors import ProviderError
from simulator.provider import Provider
from simulator.resources import (
    DeriveResource,
    DownloadUrlResource,
    FileResource,
    GenerateResource,
    ProviderErrorHandler,
    RecordInfoResource,
)
from simulator.tasks import UPSCALE_TASK_TYPE, VARY_TASK_TYPE

#: The provider's API routes.
GENERATE_PATH = "/api/v1/mj/generate"
UPSCALE_PATH = "/api/v1/mj/generateUpscale"
VARY_PATH = "/api/v1/mj/generateVary"
RECORD_INFO_PATH = "/api/v1/mj/record-info"
DOWNLOAD_URL_PATH = "/api/v1/common/download-url"


def create_app(
    provider: Provider, *, sleep: Callable[[float], None] = time.sleep
) -> falcon.App[falcon.Request, falcon.Response]:
    """The provider's API and its result files, served from ``provider``; ``sleep`` makes the
    pauses of a slow file, in seconds."""
    app = falcon.App(media_type=falcon.MEDIA_JSON)
    json_handler = media.JSONHandler(dumps=orjson.dumps, loads=orjson.loads)
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = json_handler
    errors = ProviderErrorHandler(mirror_code=provider.config.http_status_mirrors_code)
    app.add_error_handler(ProviderError, errors)
    app.add_error_handler(Exception, errors)
    app.add_error_handler(falcon.HTTPError, errors)

    app.add_route(GENERATE_PATH, GenerateResource(provider))
    app.add_route(UPSCALE_PATH, DeriveResource(provider, task_type=UPSCALE_TASK_TYPE))
    app.add_route(VARY_PATH, DeriveResource(provider, task_type=VARY_TASK_TYPE))
    app.add_route(RECORD_INFO_PATH, RecordInfoResource(provider))
    app.add_route(DOWNLOAD_URL_PATH, DownloadUrlResource(provider))
    app.add_route("/files/{task_id}/{name}", FileResource(provider, sleep=sleep))
    return app
