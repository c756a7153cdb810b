"""Run the simulator in this process: a threaded WSGI server on a background thread."""

from __future__ import annotations

import logging
import secrets
import socket
import socketserver
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import falcon
import httpx

from simulator.admission import Admission
from simulator.app import create_app
from simulator.callbacks import CallbackDelivery, DeliveryAttempt
from simulator.config import DEFAULT_MAX_CONNECTIONS, DEFAULT_REQUEST_TIMEOUT_S, SimulatorConfig
from simulator.control import LOADS_PATH, LoadsResource
from simulator.deadline import DeadlineTransport
from simulator.faults import FaultPlan
from simulator.files import FileCache, expected_file
from simulator.links import LinkSigner
from simulator.provider import Provider
from simulator.resources import CONNECTION_ENV
from simulator.scheduler import Scheduler
from simulator.tasks import Task

log = logging.getLogger(__name__)

#: How often :meth:`RunningSimulator.wait_settled` looks at its tasks, seconds.
SETTLED_POLL_S = 0.02
#: On stop, how long running callback deliveries may take to finish, seconds.
STOP_GRACE_S = 2.0
#: Threads completing tasks, apart from the delivery threads (each may wait seconds on a slow
#: receiver). Completing is quick: the results, their links, the callbacks queued.
GENERATION_THREADS = 2
#: Connections the kernel holds for the server until it accepts them (socketserver's default is
#: 5). Every API call and result file is a connection of its own (HTTP/1.0): a burst beyond the
#: backlog (mjhook's workers fetch 4 files per task at once) has its SYNs dropped, and each
#: dropped one costs its client a retransmission, a second or more.
LISTEN_BACKLOG = 1024
#: How often the accept loop, waiting for a connection to end (all ``max_connections`` served),
#: looks whether the server is stopping, seconds.
SLOT_POLL_S = 0.1


class SimulatorHTTPServer(socketserver.ThreadingMixIn, WSGIServer):
    """The simulator's HTTP server: a thread per connection, at most ``max_connections`` at once
    (the next ones wait in the listen backlog), each hung up on when its client stalls
    ``request_timeout_s`` seconds; no host name lookup."""

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG
    # A slow-file fault keeps a request thread busy for seconds; stopping must not wait for it.
    block_on_close = False
    allow_reuse_address = True

    def __init__(
        self,
        server_address: tuple[str, int],
        handler: type[WSGIRequestHandler],
        *,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self._request_timeout_s = request_timeout_s
        self._slots = threading.BoundedSemaphore(max_connections)
        self._closing = threading.Event()
        super().__init__(server_address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        # Every read and write of the connection then waits at most this long: a client sending
        # a byte now and then of a body it never finishes does not hold its thread for good. A
        # result file is written in slices (resources.SEND_SLICE_BYTES), each bounded on its own.
        connection.settimeout(self._request_timeout_s)
        return connection, address

    def process_request(self, request: Any, client_address: Any) -> None:
        # All connections served: the accept loop waits for one to end; new ones wait in the backlog.
        while not self._slots.acquire(timeout=SLOT_POLL_S):
            if self._closing.is_set():
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that stalled past the timeout or hung up is its own business, not a traceback.
        if isinstance(sys.exc_info()[1], OSError):
            log.debug("connection from %s ended: %s", client_address, sys.exc_info()[1])
            return
        super().handle_error(request, client_address)

    def shutdown(self) -> None:
        self._closing.set()
        super().shutdown()

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (socket.getfqdn), which may leave the
        # machine; the bound address is all we need.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
        self.setup_environ()


class _QuietHandler(WSGIRequestHandler):
    """Requests logged at debug level, the client's socket in the environ (a result file counts as
    downloaded once its bytes left the socket's send queue, not once written into it)."""

    def get_environ(self) -> dict[str, Any]:
        environ = super().get_environ()
        environ[CONNECTION_ENV] = self.connection
        return environ

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class RunningSimulator:
    """A simulator serving on ``base_url`` until :meth:`stop`."""

    def __init__(
        self,
        *,
        config: SimulatorConfig,
        provider: Provider,
        server: SimulatorHTTPServer,
        app: falcon.App[falcon.Request, falcon.Response],
        generation: Scheduler,
        deliveries: Scheduler,
        client: httpx.Client,
        base_url: str,
    ) -> None:
        self.config = config
        self.provider = provider
        self.base_url = base_url
        self._server = server
        self._generation = generation
        self._deliveries = deliveries
        self._client = client
        # The simulator's own control routes need the running simulator; added before it serves.
        app.add_route(LOADS_PATH, loads := LoadsResource(self))
        app.add_route(LOADS_PATH + "/{load_id}", loads, suffix="load")
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="simulator-http", daemon=True
        )
        self._thread.start()

    @property
    def api_key(self) -> str:
        return self.config.api_key

    @property
    def port(self) -> int:
        return self._server.server_port

    def task(self, task_id: str) -> Task:
        return self.provider.task(task_id)

    def attempts(self, task_id: str | None = None) -> list[DeliveryAttempt]:
        """Callback delivery attempts so far, oldest first (all, or one task's)."""
        return self.provider.delivery.attempts(task_id)

    def expected_file(self, task_id: str, index: int) -> bytes:
        """The exact bytes served for result ``index`` of ``task_id``."""
        return self.provider.expected_file(task_id, index)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no task is generating and no callback is pending or being sent; False
        when ``timeout_s`` seconds passed first."""
        deadline = time.monotonic() + timeout_s
        # In this order: completing a task queues its callbacks, a callback queues no task.
        return self._generation.wait_idle(timeout_s) and self._deliveries.wait_idle(
            max(0.0, deadline - time.monotonic())
        )

    def wait_settled(self, task_ids: Collection[str], timeout_s: float) -> bool:
        """Wait until the tasks of ``task_ids`` completed and each of their callbacks was
        acknowledged or given up on, whatever else the simulator is doing (a ``serve`` shared with
        other clients); False when ``timeout_s`` seconds passed first."""
        deadline = time.monotonic() + timeout_s
        # A settled task stays settled: each look goes on from the first one that was not, so a
        # run of many tasks is not read whole every SETTLED_POLL_S.
        pending = deque(task_ids)
        while pending:
            if self.provider.settled(pending[0]):
                pending.popleft()
            elif time.monotonic() >= deadline:
                return False
            else:
                time.sleep(SETTLED_POLL_S)
        return True

    def stop(self) -> None:
        """Stop sending, stop serving, close the port. Pending callbacks are dropped."""
        self._generation.stop()
        self._deliveries.stop()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)
        self._deliveries.wait_idle(STOP_GRACE_S)
        self._client.close()

    def __enter__(self) -> RunningSimulator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def run_simulator(
    config: SimulatorConfig | None = None,
    *,
    clock: Callable[[], float] = time.time,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> RunningSimulator:
    """Start a simulator on ``config.host``:``config.port`` (default 127.0.0.1 and a free port)
    in background threads and return its handle. ``clock`` gives Unix seconds (link expiry,
    task times, signature timestamps); ``transport`` replaces the callback client's network
    (default: a :class:`DeadlineTransport`, which stops waiting for an answer after
    ``config.callback_timeout_s`` in all); ``sleep`` makes the pauses of a slow file, in seconds."""
    config = config or SimulatorConfig()
    server = SimulatorHTTPServer(
        (config.host, config.port),
        _QuietHandler,
        request_timeout_s=config.request_timeout_s,
        max_connections=config.max_connections,
    )
    base_url = config.public_url.rstrip("/") or f"http://{config.host}:{server.server_port}"
    generation = Scheduler(threads=GENERATION_THREADS, name="simulator-generation")
    deliveries = Scheduler(threads=config.delivery_threads, name="simulator-delivery")
    # trust_env off: no proxy from the environment decides where callbacks go. The timeout bounds
    # each connect, read and write; the deadline of CallbackDelivery bounds the whole answer.
    limits = httpx.Limits(max_connections=config.delivery_threads)
    client = httpx.Client(
        timeout=config.callback_timeout_s,
        follow_redirects=False,
        trust_env=False,
        transport=transport or DeadlineTransport(limits=limits),
        headers={"User-Agent": "mjhook-simulator/0.1"},
    )
    provider = Provider(
        config,
        links=LinkSigner(
            secret=(config.url_secret or secrets.token_hex(16)).encode(), base_url=base_url, clock=clock
        ),
        files=FileCache(
            _file_maker(config), max_files=config.file_cache_size, max_bytes=config.file_cache_bytes
        ),
        faults=FaultPlan(config.faults),
        delivery=CallbackDelivery(
            scheduler=deliveries,
            client=client,
            retry_delays_s=config.scaled_retry_delays_s,
            timeout_s=config.callback_timeout_s,
            hmac_key=config.hmac_key,
            clock=clock,
        ),
        generation=generation,
        admission=Admission(
            rate_limit=config.rate_limit, window_s=config.rate_window_s, credits=config.credits
        ),
        task_id_prefix=config.task_id_prefix or f"mjsim-{secrets.token_hex(4)}-",
        clock=clock,
    )
    app = create_app(provider, sleep=sleep)
    server.set_app(app)
    return RunningSimulator(
        config=config,
        provider=provider,
        server=server,
        app=app,
        generation=generation,
        deliveries=deliveries,
        client=client,
        base_url=base_url,
    )


def _file_maker(config: SimulatorConfig) -> Callable[[str, int, str], bytes]:
    def make(task_id: str, index: int, ext: str) -> bytes:
        return expected_file(
            task_id,
            index,
            ext=ext,
            width=config.image_width,
            height=config.image_height,
            video_bytes=config.video_bytes,
        )

    return make
