"""What the CLI tests share: running ``mjhook`` in-process, dead letters made by real workers, and
a provider on loopback answering what a test says."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from click.testing import CliRunner, Result

from cli.main import main
from shared import keys
from shared.queue import BROKER_NAMESPACE, CALLBACK_QUEUE, PROCESS_CALLBACK, create_broker
from shared.settings import Settings
from tests.support.json_http import json_server
from tests.support.pipeline import wait_for
from tests.support.servers import RedisServer
from tests.support.stack import start_workers

RunCli = Callable[..., Result]


@pytest.fixture
def run_cli() -> RunCli:
    """``run_cli(env, *args)``: ``mjhook *args`` through click's CliRunner, seeing exactly the
    ``MJHOOK_*`` variables of ``env``, output not wrapped."""

    def run(env: Mapping[str, str], *args: str) -> Result:
        overrides: dict[str, str | None] = {key: None for key in os.environ if key.startswith("MJHOOK_")}
        overrides.update({key: value for key, value in env.items() if key.startswith("MJHOOK_")})
        overrides["COLUMNS"] = "200"  # rich tables at a width where no cell wraps
        return CliRunner().invoke(main, list(args), env=overrides, catch_exceptions=False)

    return run


def dead_letters_from_real_workers(
    env: Mapping[str, str], log_dir: Path, payloads: Iterable[dict[str, Any]]
) -> None:
    """Queue ``payloads`` (invalid callbacks: a permanent error) for a real ``dramatiq workers.tasks``,
    wait until it dead-lettered all of them, and stop it."""
    settings = Settings.from_env(env)
    client = redis.Redis.from_url(settings.redis_url)
    broker = create_broker(settings, client=client, middleware=[])
    payloads = list(payloads)
    with start_workers(env, log_dir, processes=1, threads=1):
        for payload in payloads:
            broker.enqueue(
                dramatiq.Message(
                    queue_name=CALLBACK_QUEUE,
                    actor_name=PROCESS_CALLBACK,
                    args=(payload,),
                    kwargs={},
                    options={},
                )
            )
        dead = keys.broker_dead(BROKER_NAMESPACE, CALLBACK_QUEUE)
        wait_for(lambda: client.zcard(dead) == len(payloads), timeout_s=30, what="the dead letters")
    client.close()


@pytest.fixture
def provider_answering() -> Iterator[Any]:
    """``provider_answering(body)``: the URL of a provider on loopback answering every POST so."""
    with ExitStack() as servers:
        yield lambda answer: servers.enter_context(json_server(lambda method, path: answer))


def submit_env(redis_server: RedisServer, provider_url: str) -> dict[str, str]:
    return {
        "MJHOOK_REDIS_URL": redis_server.url,
        "MJHOOK_PROVIDER_URL": provider_url,
        "MJHOOK_PROVIDER_API_KEY": "k",
        "MJHOOK_PUBLIC_URL": "https://hooks.example.com",
    }
