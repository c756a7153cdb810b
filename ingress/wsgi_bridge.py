"""The ingress (an ASGI app) under a WSGI worker.

gunicorn takes its settings, the asgi worker among them, from ``-c``, GUNICORN_CMD_ARGS or a
./gunicorn.conf.py in its working directory, all read before the app is imported: started as
the contract's plain ``gunicorn ingress.wsgi:app`` from any other directory (a systemd unit, a
supervisor) it runs its default sync worker, which calls the app as WSGI. Rather than answer
every request 500, such a call goes through a2wsgi's bridge, which runs the ASGI app on an event
loop of the process's own: the ingress serves, one request at a time per sync worker process,
and says in the log how to get its asgi worker and settings back."""

from __future__ import annotations

import io
import logging
import threading
from typing import Any

from a2wsgi import ASGIMiddleware

log = logging.getLogger(__name__)

WSGI_WORKER_WARNING = (
    "the ingress is served by a WSGI worker (gunicorn's default sync worker: no -c, and no "
    "./gunicorn.conf.py in the working directory), one request at a time per process and without "
    "ingress/gunicorn_conf.py's settings; start it as `gunicorn ingress.wsgi:app -c "
    "ingress/gunicorn_conf.py` (or `-c python:ingress.gunicorn_conf`) for its asgi worker"
)


class AsgiOrWsgi:
    """``asgi_app`` as both: an ASGI call (scope, receive, send) goes to it unchanged; a WSGI call
    (environ, start_response) to a2wsgi's bridge, made (with its event loop thread) at the first.
    A WSGI request body without a Content-Length (sent chunked) is read first, up to
    ``max_body_bytes`` + 1 bytes (enough for the app to refuse a larger one): a2wsgi reads a body
    only as long as CONTENT_LENGTH says, and a chunked callback was an empty body, refused."""

    def __init__(self, asgi_app: Any, *, max_body_bytes: int) -> None:
        self.asgi_app = asgi_app
        self._read_at_most = max_body_bytes + 1
        self._wsgi: ASGIMiddleware | None = None
        self._lock = threading.Lock()

    def __call__(self, *args: Any) -> Any:
        if len(args) == 3:
            return self.asgi_app(*args)
        environ, start_response = args
        if not environ.get("CONTENT_LENGTH") and (
            environ.get("wsgi.input_terminated")
            or "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        ):
            body = environ["wsgi.input"].read(self._read_at_most)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        return self._bridge()(environ, start_response)

    def _bridge(self) -> ASGIMiddleware:
        with self._lock:
            if self._wsgi is None:
                log.warning(WSGI_WORKER_WARNING)
                self._wsgi = ASGIMiddleware(self.asgi_app)
            return self._wsgi
