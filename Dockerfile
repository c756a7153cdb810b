# syntax=docker/dockerfile:1
# One image for both roles. The default command runs the ingress; the worker runs the same image
# with `python -m workers workers.tasks ...` (dramatiq, logging in MJHOOK_LOG_FORMAT; see
# docker-compose.yml, which also sets its healthcheck).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The processes run unprivileged; the code stays owned by root, so they cannot rewrite it.
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin mjhook

WORKDIR /app

# The dependencies first, read from pyproject.toml alone, so that a code change reuses this layer;
# each at the version constraints.txt pins (make lock), the one the tests ran (make venv uses it).
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the project itself (no dev extras); the dependencies above already satisfy it.
COPY shared/ shared/
COPY ingress/ ingress/
COPY workers/ workers/
COPY cli/ cli/
COPY simulator/ simulator/
# gunicorn reads it when no -c is given: a plain `gunicorn ingress.wsgi:app` gets the ingress's settings.
COPY gunicorn.conf.py ./
RUN pip install -c constraints.txt . \
    && rm -rf build ./*.egg-info

# The ingress's spool (a volume in docker-compose.yml) is the one place the processes write.
RUN mkdir -p /app/.data/spool && chown mjhook:mjhook /app/.data/spool

USER mjhook

EXPOSE 8000

# The ingress's liveness; the worker service overrides this check in docker-compose.yml.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["gunicorn", "ingress.wsgi:app", "-c", "ingress/gunicorn_conf.py", "-b", "0.0.0.0:8000"]
