"""Arguments and paths whose bytes are no UTF-8 text (Python hands them over with lone surrogates in
them): an argument sent on to the provider is a usage error, a path is shown with those bytes
escaped; neither is a traceback."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import RunCli, submit_env
from tests.support.json_http import json_server
from tests.support.servers import RedisServer


@pytest.fixture
def provider_asked(redis_server: RedisServer) -> Iterator[tuple[dict[str, str], list[str]]]:
    """The submit commands' environment, with a provider that notes every request it is sent."""
    asked: list[str] = []

    def answer(method: str, path: str) -> object:
        asked.append(path)
        return {"code": 200, "msg": "success", "data": {"taskId": "t-new"}}

    with json_server(answer) as url:
        yield submit_env(redis_server, url), asked


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        pytest.param(("submit", "caf\udce9 at night"), "'PROMPT': 'caf\\xe9 at night'", id="prompt"),
        pytest.param(
            ("submit", "a cat", "--file-url", "https://example.com/\udcff.png"),
            "'--file-url': 'https://example.com/\\xff.png'",
            id="file-url",
        ),
        pytest.param(
            ("submit", "a cat", "--aspect-ratio", "16:\udc89"), "'--aspect-ratio'", id="aspect-ratio"
        ),
        pytest.param(("submit", "a cat", "--version", "\udcb7"), "'--version'", id="version"),
        pytest.param(("upscale", "t\udcff", "0"), "'TASK_ID': 't\\xff'", id="upscale"),
        pytest.param(("vary", "t\udcff", "1"), "'TASK_ID': 't\\xff'", id="vary"),
    ],
)
def test_an_argument_that_is_no_utf8_is_a_usage_error(
    provider_asked: tuple[dict[str, str], list[str]], run_cli: RunCli, args: tuple[str, ...], shown: str
) -> None:
    env, asked = provider_asked
    # When an argument sent on to the provider holds bytes that are no UTF-8 (a terminal set to
    # Latin-1: "café" typed as b"caf\xe9")
    result = run_cli(env, *args)
    # Then a usage error names it, its bytes escaped (UnicodeEncodeError from httpx was raised),
    # and nothing was sent
    assert result.exit_code == 2, result.output
    assert f"Invalid value for {shown}" in result.stderr
    assert "is not UTF-8 text" in result.stderr
    assert asked == []


def test_a_utf8_prompt_is_still_submitted(
    provider_asked: tuple[dict[str, str], list[str]], run_cli: RunCli
) -> None:
    env, asked = provider_asked
    result = run_cli(env, "submit", "café at night")
    assert result.exit_code == 0, result.output
    assert result.stdout == "t-new\n"
    assert len(asked) == 1


def non_utf8_directory(tmp_path: Path) -> str:
    """A directory whose name ends in a byte that is no UTF-8 (``spool-\\xff``), as Python names it."""
    raw = os.fsencode(tmp_path) + b"/spool-\xff"
    os.mkdir(raw)
    return os.fsdecode(raw)


def test_spool_status_shows_a_directory_named_in_no_utf8(tmp_path: Path, run_cli: RunCli) -> None:
    # Given a spool directory whose name is no UTF-8 text (MJHOOK_SPOOL_DIR is any bytes)
    env = {"MJHOOK_SPOOL_DIR": non_utf8_directory(tmp_path)}
    shown = f"{tmp_path}/spool-\\xff"
    # When its status is asked
    as_json = run_cli(env, "spool", "status", "--json")
    text = run_cli(env, "spool", "status")
    # Then the name is shown with that byte escaped (JSON failed: "surrogates not allowed")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == {"directory": shown, "waiting": 0, "waitingBytes": 0, "setAside": 0}
    assert text.exit_code == 0, text.output
    assert text.stdout.startswith(f"spool {shown}: 0 callbacks waiting")
    missing = run_cli({"MJHOOK_SPOOL_DIR": env["MJHOOK_SPOOL_DIR"] + "/gone"}, "spool", "requeue")
    assert missing.exit_code == 1
    assert f"the spool directory {shown}/gone does not exist" in missing.stderr
