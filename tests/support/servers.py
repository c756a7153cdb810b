"""Real servers for tests: Redis, SeaweedFS (S3) and a scriptable HTTP file server.

All of them listen on 127.0.0.1 only, on ports chosen free at start.
"""

from __future__ import annotations

import glob
import io
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import redis
import urllib3
from minio import Minio
from PIL import Image

from .procs import ManagedProcess, free_port, free_ports, venv_bin, wait_until

REDIS_START_TIMEOUT_S = 10.0
REDIS_STOP_TIMEOUT_S = 10.0
# A first start takes ~3 s; the deadline covers a slow CI disk and volume growth lag.
S3_START_TIMEOUT_S = 60.0
S3_PROBE_BUCKET = "probe"
# Small volumes so that every bucket (a SeaweedFS collection) finds room.
S3_VOLUME_SIZE_LIMIT_MB = 64


class RedisServer:
    """A private redis-server on 127.0.0.1; `stop()`/`start()` keep port and directory.

    Without `appendonly` nothing is persisted, so a restart comes back empty; with it
    the AOF in `directory` brings the data back. `extra_args` go to redis-server after
    the others (e.g. `["--rename-command", "CONFIG", ""]`).
    """

    def __init__(self, directory: Path, *, appendonly: bool = False, extra_args: Sequence[str] = ()) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.extra_args = list(extra_args)
        self.port = free_port()
        self.proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5.0)

    def _argv(self) -> list[str]:
        return [
            venv_bin("redis-server"),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--daemonize", "no",
            *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout_s: float = REDIS_START_TIMEOUT_S) -> None:
        """Start (or restart) the server and wait until PING answers."""
        if self.proc is None:
            self.proc = ManagedProcess(self._argv(), log_path=self.directory / "redis.log")
        else:
            self.proc.start()
        client = redis.Redis(port=self.port, socket_connect_timeout=1.0, socket_timeout=1.0)
        try:
            wait_until(lambda: bool(client.ping()), timeout_s, what="redis PING", proc=self.proc)
        finally:
            client.close()

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.is_running()

    def stop(self, timeout_s: float = REDIS_STOP_TIMEOUT_S) -> None:
        """Shut down gracefully (SIGTERM: the AOF, if any, is flushed)."""
        if self.proc is not None:
            self.proc.terminate(timeout_s)

    def kill(self) -> None:
        """SIGKILL, as in a crash."""
        if self.proc is not None:
            self.proc.kill()


def start_redis(tmpdir: Path, *, appendonly: bool = False, extra_args: Sequence[str] = ()) -> RedisServer:
    """Start a redis-server with its files in `tmpdir`; ready when this returns."""
    server = RedisServer(tmpdir, appendonly=appendonly, extra_args=extra_args)
    server.start()
    return server


def _minio_client(endpoint_host: str, access_key: str, secret_key: str, **http: object) -> Minio:
    return Minio(
        endpoint_host,
        access_key=access_key,
        secret_key=secret_key,
        secure=False,
        http_client=urllib3.PoolManager(**http) if http else None,  # type: ignore[arg-type]
    )


class S3Server:
    """A single-process SeaweedFS (master, volume, filer, S3 gateway) on 127.0.0.1.

    `kill()`/`start()` keep every port and the data directory. SeaweedFS keeps
    its gRPC Unix sockets in /tmp whatever TMPDIR says; `kill()` removes ours.
    """

    _PORT_NAMES = (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
        "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "metricsPort",
    )  # fmt: skip

    def __init__(self, directory: Path, *, access_key: str, secret_key: str) -> None:
        self.directory = Path(directory)
        self.data_dir = self.directory / "data"
        self.config_dir = self.directory / "config"
        self.access_key = access_key
        self.secret_key = secret_key
        self.ports = dict(zip(self._PORT_NAMES, free_ports(len(self._PORT_NAMES)), strict=True))
        self.proc: ManagedProcess | None = None
        self._write_config()

    @property
    def port(self) -> int:
        return self.ports["s3.port"]

    @property
    def host(self) -> str:
        """host:port, as the `minio.Minio` constructor wants it."""
        return f"127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}"

    def client(self) -> Minio:
        """A `minio.Minio` client with the server's credentials (default retries)."""
        return _minio_client(self.host, self.access_key, self.secret_key)

    def _write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_dir.mkdir(parents=True, exist_ok=True)
        identity = {
            "name": "mjhook-tests",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        (self.config_dir / "s3.json").write_text(json.dumps({"identities": [identity]}))
        # One volume per new bucket instead of 7: each bucket is a collection with its
        # own volumes, and 7 each would exhaust the volume slots after ~180 buckets.
        (self.config_dir / "master.toml").write_text(
            "[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 1\ncopy_3 = 1\ncopy_other = 1\n"
        )

    def _argv(self) -> list[str]:
        ports = [f"-{name}={port}" for name, port in self.ports.items()]
        return [
            venv_bin("weed"),
            "-logtostderr",  # else glog writes files into /tmp
            f"-config_dir={self.config_dir}",
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.data_dir}",
            "-filer",
            "-s3",
            *ports,
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.config_dir / 's3.json'}",
            f"-master.volumeSizeLimitMB={S3_VOLUME_SIZE_LIMIT_MB}",
            "-volume.max=0",
            # It would report usage to a public server.
            "-master.telemetry=false",
            # Resuming raft state makes a restart wait ~15 s for a leader election;
            # the topology is rebuilt from the volume server's heartbeats anyway.
            "-master.resumeState=false",
            "-volume.preStopSeconds=0",
        ]

    def start(self, timeout_s: float = S3_START_TIMEOUT_S) -> None:
        """Start (or restart) and wait until listing buckets and a PUT both work."""
        if self.proc is None:
            self.proc = ManagedProcess(self._argv(), log_path=self.directory / "weed.log", cwd=self.directory)
        else:
            self.proc.start()
        # No client retries: urllib3's backoff would add seconds to every poll.
        probe = _minio_client(
            self.host,
            self.access_key,
            self.secret_key,
            retries=False,
            timeout=urllib3.Timeout(connect=1.0, read=5.0),
        )
        wait_until(
            lambda: _can_write(probe),
            timeout_s,
            what=f"SeaweedFS S3 at {self.endpoint} to list buckets and accept a PUT",
            proc=self.proc,
            interval_s=0.1,
        )

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.is_running()

    def kill(self) -> None:
        """SIGKILL: instant. Acknowledged writes survive a restart all the same."""
        if self.proc is not None:
            self.proc.kill()
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        for port in self.ports.values():
            for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                Path(path).unlink(missing_ok=True)


def _can_write(client: Minio) -> bool:
    client.list_buckets()
    if not client.bucket_exists(S3_PROBE_BUCKET):
        client.make_bucket(S3_PROBE_BUCKET)
    client.put_object(S3_PROBE_BUCKET, "probe", io.BytesIO(b"ok"), 2)
    client.remove_object(S3_PROBE_BUCKET, "probe")
    client.remove_bucket(S3_PROBE_BUCKET)
    return True


def start_seaweedfs(
    tmpdir: Path, *, access_key: str = "mjhook", secret_key: str = "mjhook-secret"
) -> S3Server:
    """Start SeaweedFS with its files in `tmpdir`; ready for PUTs when this returns."""
    server = S3Server(tmpdir, access_key=access_key, secret_key=secret_key)
    server.start()
    return server


@dataclass(frozen=True)
class _Route:
    body: bytes
    status: int
    content_type: str
    delay_s: float
    chunk_delay_s: float
    chunk_size: int
    headers: Mapping[str, str]


@dataclass(frozen=True)
class _Redirect:
    target_path: str
    status: int


@dataclass
class _FileServerState:
    routes: dict[str, _Route | _Redirect] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _FileRequestHandler(BaseHTTPRequestHandler):
    server: _FileHTTPServer

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _respond(self, *, send_body: bool) -> None:
        path = urlsplit(self.path).path
        state = self.server.state
        with state.lock:
            state.hits[path] += 1
            route = state.routes.get(path)
        if route is None:
            self._send_simple(404, b"not found\n", send_body)
        elif isinstance(route, _Redirect):
            self.send_response(route.status)
            self.send_header("Location", route.target_path)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send_route(route, send_body)

    def _send_simple(self, status: int, body: bytes, send_body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _send_route(self, route: _Route, send_body: bool) -> None:
        if route.delay_s:
            time.sleep(route.delay_s)
        self.send_response(route.status)
        headers = {"Content-Type": route.content_type, "Content-Length": str(len(route.body))}
        overridden = {name.lower() for name in route.headers}
        headers = {name: value for name, value in headers.items() if name.lower() not in overridden}
        for name, value in {**headers, **route.headers}.items():
            self.send_header(name, value)
        self.end_headers()
        if not send_body:
            return
        try:
            for start in range(0, len(route.body), route.chunk_size):
                if start and route.chunk_delay_s:
                    time.sleep(route.chunk_delay_s)
                self.wfile.write(route.body[start : start + route.chunk_size])
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, which is what slow-download tests provoke


class _FileHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, state: _FileServerState) -> None:
        self.state = state
        super().__init__(("127.0.0.1", 0), _FileRequestHandler)


class FileServer:
    """An HTTP server on 127.0.0.1 standing in for the provider's image CDN.

    Requests are matched on the path alone (query strings are ignored); an
    unregistered path gets 404. `hits` counts requests (any method) per path.
    """

    DEFAULT_CHUNK_SIZE = 16 * 1024

    def __init__(self) -> None:
        self._state = _FileServerState()
        self._httpd = _FileHTTPServer(self._state)
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},  # shutdown() waits up to one interval
            name="file-server",
            daemon=True,
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def hits(self) -> Counter[str]:
        """A snapshot of requests counted per path."""
        with self._state.lock:
            return Counter(self._state.hits)

    def add(
        self,
        path: str,
        body: bytes,
        *,
        status: int = 200,
        content_type: str = "image/png",
        delay_s: float = 0.0,
        chunk_delay_s: float = 0.0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Serve `body` at `path`; returns its URL.

        `delay_s` seconds pass before the status line; with `chunk_delay_s` the body
        goes out in `chunk_size`-byte pieces with that pause between two pieces.
        `headers` are added and replace the defaults of the same name (so a
        Content-Length can lie about the size).
        """
        route = _Route(body, status, content_type, delay_s, chunk_delay_s, chunk_size, dict(headers or {}))
        with self._state.lock:
            self._state.routes[path] = route
        return self.url(path)

    def add_redirect(self, path: str, target_path: str, *, status: int = 302) -> str:
        """Answer `path` with a redirect to `target_path` (a path or an absolute URL)."""
        with self._state.lock:
            self._state.routes[path] = _Redirect(target_path, status)
        return self.url(path)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> FileServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def png_bytes(seed: int, width: int = 256, height: int = 256) -> bytes:
    """A decodable RGB PNG of seeded noise; the same seed gives the same bytes."""
    noise = random.Random(seed).randbytes(width * height * 3)
    image = Image.frombytes("RGB", (width, height), noise)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
