"""gunicorn reads ./gunicorn.conf.py when no ``-c`` is given: so the contract's plain
``gunicorn ingress.wsgi:app``, run from the project's root, serves the ingress with its own
settings (gunicorn's asgi worker: the app is an ASGI app). The settings are in
ingress/gunicorn_conf.py."""

from ingress.gunicorn_conf import *  # noqa: F403
