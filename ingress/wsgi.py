"""gunicorn's entry point: ``gunicorn ingress.wsgi:app``. With ``ingress/gunicorn_conf.py``
(gunicorn's settings, which gunicorn loads before the app), the only ingress module that reads the
environment. It builds the app as :func:`ingress.app.create_app` does, plus the directory the
gunicorn workers share their metrics in."""

from __future__ import annotations

import os

from gunicorn.errors import AppImportError

from ingress.app import build_ingress
from ingress.wsgi_bridge import AsgiOrWsgi
from shared.errors import ConfigError
from shared.logs import configure_logging
from shared.metrics import MULTIPROC_ENV
from shared.settings import Settings

try:
    settings = Settings.from_env(os.environ)
    configure_logging(settings.log_level, settings.log_format)
    # gunicorn_conf.py gives the worker processes one directory to count metrics in, so that
    # /metrics, answered by any of them, adds up all of them.
    ingress = build_ingress(settings, metrics_dir=os.environ.get(MULTIPROC_ENV) or None)
except ConfigError as exc:
    # gunicorn prints this one line (not the import's traceback) and stops: "App failed to load",
    # rather than boot a worker process after another that fails the same way.
    raise AppImportError(f"Error: {exc}") from None
# gunicorn imports this module in each worker process (no preload), so each drains the spool.
# (The app starts the same drainer at the ASGI lifespan's startup; a WSGI worker sends none.)
drainer = ingress.start_drainer()
# The asgi worker (ingress/gunicorn_conf.py) calls the ASGI app as it is; gunicorn run without
# those settings (outside the project root, no -c) calls it as WSGI: see ingress/wsgi_bridge.py.
app = AsgiOrWsgi(ingress.app, max_body_bytes=settings.max_body_bytes)
