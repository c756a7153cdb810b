"""The ingress as gunicorn serves it: the contract's plain command, and what the asyncio worker
must still do (acknowledge concurrent callbacks each once, keep serving reads)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import redis

from shared.taskstate import TaskStore
from tests.ingress.test_callbacks import queued_messages, success
from tests.support.procs import ManagedProcess, free_port, venv_bin, wait_for_http
from tests.support.servers import RedisServer
from tests.support.stack import REPO_ROOT, _gunicorn_isolation_args


def test_the_plain_contract_command_serves_the_ingress_with_its_settings(
    redis_server: RedisServer, client: redis.Redis, tmp_path: Path
) -> None:
    """``gunicorn ingress.wsgi:app`` without ``-c`` (the contract's command), run from the project
    root: gunicorn reads ./gunicorn.conf.py, so the ASGI app gets its asgi worker, and callbacks
    sent at once over many connections are each acknowledged, recorded and queued once."""
    port = free_port()
    argv = [venv_bin("gunicorn"), "ingress.wsgi:app", "-b", f"127.0.0.1:{port}", *_gunicorn_isolation_args()]
    env = {name: value for name, value in os.environ.items() if not name.startswith("MJHOOK_")}
    env |= {"MJHOOK_REDIS_URL": redis_server.url, "MJHOOK_SPOOL_DIR": ""}
    proc = ManagedProcess(argv, log_path=tmp_path / "ingress.log", cwd=REPO_ROOT, env=env)
    base_url = f"http://127.0.0.1:{port}"
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
    assert "Using worker: asgi" in (tmp_path / "ingress.log").read_text()
    queued = sorted(message["args"][0]["taskId"] for message in queued_messages(client))  # type: ignore[index]
    assert queued == sorted(task_ids)
    tasks = TaskStore(client, ttl_s=3600)
    assert all(tasks.get(task_id) is not None for task_id in task_ids)
