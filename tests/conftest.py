"""Fixtures that run real servers: Redis, SeaweedFS (S3) and an HTTP file server.

Each server is started only when a test asks for it, listens on 127.0.0.1 on a free
port, and is stopped at teardown whatever the test's outcome.
"""

from __future__ import annotations

import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

REPO_ROOT = Path(__file__).resolve().parent.parent
# `tests.support` is imported by path from the repository root, whichever import mode
# pytest uses and whether or not tests/ is a package.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.provider import StartSimulator, simulators  # noqa: E402
from tests.support.servers import (  # noqa: E402
    FileServer,
    RedisServer,
    S3Server,
    start_redis,
    start_seaweedfs,
)
from tests.support.stack import app_environment  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    # A background job of a non-interactive shell (`make test &` in a script) starts with SIGINT
    # ignored, and every process it starts inherits that: the servers and CLIs the tests run
    # would then shrug off the Ctrl-C some tests send them. Give them the default, as a
    # terminal would.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    config.addinivalue_line(
        "markers",
        "integration: runs real processes (redis-server, SeaweedFS, gunicorn, dramatiq)",
    )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS for the whole session, of each test process (it takes ~3 s to start)."""
    server = start_seaweedfs(tmp_path_factory.mktemp("s3"))
    try:
        yield server
    finally:
        # The data is thrown away, so skip the ~16 s graceful shutdown.
        server.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh, empty redis-server for each test (~0.1 s to start and stop)."""
    server = start_redis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    """An HTTP server on 127.0.0.1 serving the files a test registers."""
    server = FileServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A bucket name unique to the test; the bucket itself is not created."""
    if not s3_server.is_running():
        # An earlier test stopped the shared server and did not bring it back.
        s3_server.start()
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def app_env(redis_server: RedisServer, s3_server: S3Server, s3_bucket: str) -> dict[str, str]:
    """Environment for mjhook processes wired to this test's servers (see
    `tests.support.stack.app_environment`)."""
    return app_environment(
        redis_url=redis_server.url,
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        s3_bucket=s3_bucket,
    )


@pytest.fixture
def aof_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server with the append-only file on (as production runs it), for restart tests."""
    server = start_redis(tmp_path / "aof-redis", appendonly=True)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def aof_app_env(aof_redis_server: RedisServer, s3_server: S3Server, s3_bucket: str) -> dict[str, str]:
    """Like ``app_env``, wired to ``aof_redis_server``."""
    return app_environment(
        redis_url=aof_redis_server.url,
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        s3_bucket=s3_bucket,
    )


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of this test's own, empty redis-server."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def start_simulator() -> Iterator[StartSimulator]:
    """``start_simulator(**config)`` runs a fast provider simulator; all stop after the test."""
    with simulators() as start:
        yield start
