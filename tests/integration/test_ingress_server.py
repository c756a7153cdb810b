"""The ingress as gunicorn serves it: the contract's plain command, and what the asyncio worker
must still do (acknowledge concurrent callbacks each once, keep serving reads)."""

from __future__ import annotations

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from shared.taskstate import TaskStore
from tests.ingress.test_callbacks import queued_messages, success
from tests.support.procs import ManagedProcess, free_port, venv_bin, wait_for_http
from tests.support.raw_http import read_until_closed, send_post
from tests.support.servers import RedisServer
from tests.support.stack import REPO_ROOT, _gunicorn_isolation_args, start_ingress


def start_plain_gunicorn(
    redis_server: RedisServer, *, cwd: Path, log_path: Path
) -> tuple[ManagedProcess, str]:
    """The contract's plain ``gunicorn ingress.wsgi:app`` (no ``-c``) run in ``cwd``; its base URL."""
    port = free_port()
    argv = [venv_bin("gunicorn"), "ingress.wsgi:app", "-b", f"127.0.0.1:{port}", *_gunicorn_isolation_args()]
    env = {name: value for name, value in os.environ.items() if not name.startswith("MJHOOK_")}
    env |= {"MJHOOK_REDIS_URL": redis_server.url, "MJHOOK_SPOOL_DIR": ""}
    return ManagedProcess(argv, log_path=log_path, cwd=cwd, env=env), f"http://127.0.0.1:{port}"


def test_the_plain_contract_command_serves_the_ingress_with_its_settings(
    redis_server: RedisServer, client: redis.Redis, tmp_path: Path
) -> None:
    """``gunicorn ingress.wsgi:app`` without ``-c`` (the contract's command), run from the project
    root: gunicorn reads ./gunicorn.conf.py, so the ASGI app gets its asgi worker, and callbacks
    sent at once over many connections are each acknowledged, recorded and queued once."""
    proc, base_url = start_plain_gunicorn(redis_server, cwd=REPO_ROOT, log_path=tmp_path / "ingress.log")
    try:
        wait_for_http(f"{base_url}/healthz", 30.0, proc=proc)
        task_ids = [f"plain-{n}" for n in range(48)]

        def post(task_id: str) -> int:
            with httpx.Client(base_url=base_url) as http:
                response = http.post(
                    "/callbacks/midjourney",
                    content=orjson.dumps(success(task_id)),
                    headers={"Content-Type": "application/json"},
                )
            return response.status_code

        with ThreadPoolExecutor(max_workers=16) as pool:
            assert list(pool.map(post, task_ids)) == [200] * len(task_ids)
        assert httpx.get(f"{base_url}/readyz").status_code == 200  # its Redis PING runs in a thread
    finally:
        proc.terminate()
    assert "Using worker: ingress.gunicorn_worker.BoundedASGIWorker" in (tmp_path / "ingress.log").read_text()
    queued = sorted(message["args"][0]["taskId"] for message in queued_messages(client))  # type: ignore[index]
    assert queued == sorted(task_ids)
    tasks = TaskStore(client, ttl_s=3600)
    assert all(tasks.get(task_id) is not None for task_id in task_ids)


def test_the_plain_contract_command_serves_outside_the_project_root_and_says_how_to_do_better(
    redis_server: RedisServer, client: redis.Redis, tmp_path: Path
) -> None:
    """Given ``gunicorn ingress.wsgi:app`` without ``-c`` run from another directory (a systemd
    unit, a supervisor: no ./gunicorn.conf.py there, so gunicorn's default sync worker calls the
    app as WSGI), when callbacks and reads arrive, then each is answered as under the asgi worker
    (not 500), every callback is recorded and queued once, and the log names the ``-c`` to use."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc, base_url = start_plain_gunicorn(redis_server, cwd=elsewhere, log_path=tmp_path / "ingress.log")
    task_ids = [f"elsewhere-{n}" for n in range(8)]
    try:
        wait_for_http(f"{base_url}/healthz", 30.0, proc=proc)
        with httpx.Client(base_url=base_url) as http:
            acks = [
                http.post(
                    "/callbacks/midjourney",
                    content=orjson.dumps(success(task_id)),
                    headers={"Content-Type": "application/json"},
                )
                for task_id in task_ids
            ]
            # A body sent chunked (no Content-Length): a2wsgi read it as empty, refused 400
            chunked = http.post(
                "/callbacks/midjourney",
                content=iter([orjson.dumps(success("elsewhere-chunked"))]),
                headers={"Content-Type": "application/json"},
            )
            chunked_too_large = http.post(
                "/callbacks/midjourney",
                content=iter([b" " * (300 * 1024), orjson.dumps(success("elsewhere-large"))]),
                headers={"Content-Type": "application/json"},
            )
            malformed = http.post(
                "/callbacks/midjourney", content=b"{", headers={"Content-Type": "application/json"}
            )
            ready = http.get("/readyz")
            metrics = http.get("/metrics")
    finally:
        proc.terminate()
    assert [ack.status_code for ack in acks] == [200] * len(task_ids)
    assert acks[0].json() == {"status": "received", "taskId": task_ids[0]}
    assert chunked.request.headers.get("transfer-encoding") == "chunked"
    assert (chunked.status_code, chunked.json()) == (
        200,
        {"status": "received", "taskId": "elsewhere-chunked"},
    )
    assert chunked_too_large.status_code == 413  # read up to the limit, not cut into a body
    assert malformed.status_code == 400
    assert "error" in malformed.json()
    assert (ready.status_code, metrics.status_code) == (200, 200)
    assert "mjhook" in metrics.text
    log = (tmp_path / "ingress.log").read_text()
    assert "Using worker: sync" in log
    assert "-c ingress/gunicorn_conf.py" in log
    queued = sorted(message["args"][0]["taskId"] for message in queued_messages(client))  # type: ignore[index]
    assert queued == sorted([*task_ids, "elsewhere-chunked"])


def ingress_only(redis_server: RedisServer, tmp_path: Path, *extra_args: str) -> tuple[ManagedProcess, int]:
    """The ingress as compose runs it (``-c ingress/gunicorn_conf.py``), one worker process, on
    this test's Redis; its port."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("MJHOOK_")}
    env |= {"MJHOOK_REDIS_URL": redis_server.url, "MJHOOK_SPOOL_DIR": str(tmp_path / "spool")}
    proc, base_url = start_ingress(env, tmp_path, extra_args=["--workers", "1", *extra_args])
    return proc, int(base_url.rsplit(":", 1)[1])


def post_on(sock: socket.socket, task_id: str) -> bytes:
    """POST a valid callback on ``sock`` and read the answer until the server closes."""
    send_post(sock, "/callbacks/midjourney", orjson.dumps(success(task_id)), close=True)
    return read_until_closed(sock)


@pytest.mark.parametrize("sent", [b"", b"POST /callbacks/midj"], ids=["nothing", "half a request line"])
def test_a_connection_that_never_completes_its_headers_is_closed(
    redis_server: RedisServer, tmp_path: Path, sent: bytes
) -> None:
    """Given the ingress with gunicorn's timeout at 2 s (the headers' deadline is 10 s, or that
    when shorter), when a client connects and sends nothing, or half a request line, then the
    ingress closes the connection; gunicorn's asgi worker held it for good (it bounds a body and
    a second request, not the first request's headers), so such clients used up its sockets."""
    proc, port = ingress_only(redis_server, tmp_path, "--timeout", "2")
    try:
        with socket.create_connection(("127.0.0.1", port)) as idle:
            idle.sendall(sent)
            idle.settimeout(30)
            assert idle.recv(4096) == b""  # closed by the server (a timeout here raises)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            assert post_on(sock, "after-idle").startswith(b"HTTP/1.1 200")
    finally:
        proc.terminate()


def test_connections_over_the_cap_are_closed_and_the_ones_within_it_served(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Given one worker process allowed 4 connections (worker_connections, which gunicorn's asgi
    worker did not enforce: idle connections piled up until its open files ran out), when 4 are
    open and idle, then a fifth is closed as soon as it is made, while the open ones are served
    a callback each; once they are gone, a new connection is served."""
    # timeout 30: the headers' deadline (10 s) is far off, so only the cap can close the fifth
    # within the 2 s it is given.
    proc, port = ingress_only(redis_server, tmp_path, "--worker-connections", "4", "--timeout", "30")
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(4)]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as over:
            try:
                refused = over.recv(4096)
            except ConnectionResetError:
                refused = b""
            assert refused == b""
        assert all(post_on(sock, f"held-{n}").startswith(b"HTTP/1.1 200") for n, sock in enumerate(held))
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 10
        while True:  # the server counts a connection gone once it has seen it close
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                try:
                    answer = post_on(sock, "after")
                except ConnectionResetError:
                    answer = b""
            if answer or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert answer.startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()
        proc.terminate()
