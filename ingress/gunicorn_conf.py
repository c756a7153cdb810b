"""gunicorn settings for the ingress: ``gunicorn ingress.wsgi:app -c ingress/gunicorn_conf.py``.
Each can be overridden on the command line or with GUNICORN_CMD_ARGS."""

import multiprocessing

bind = "127.0.0.1:8000"
#: Acks are short and I/O bound (two Redis round trips): threads keep connections alive cheaply.
worker_class = "gthread"
workers = max(2, multiprocessing.cpu_count())
threads = 8
#: Bound slow or idle clients: the provider waits at most 15 s for an answer anyway.
timeout = 30
graceful_timeout = 20
keepalive = 5
limit_request_line = 8190
limit_request_fields = 50
limit_request_field_size = 8190
accesslog = None
#: gunicorn 27's control socket is one file per user (~/.gunicorn/gunicorn.ctl) shared by every
#: instance on the host; the ingress does not use it.
control_socket_disable = True
