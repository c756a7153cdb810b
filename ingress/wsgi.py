"""gunicorn's entry point: ``gunicorn ingress.wsgi:app``. The only ingress module that reads
the environment."""

from __future__ import annotations

import os

from ingress.app import create_app
from shared.logs import configure_logging
from shared.settings import Settings

settings = Settings.from_env(os.environ)
configure_logging(settings.log_level)
app = create_app(settings)
