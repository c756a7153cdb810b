"""``mjhook rejected``: callbacks the real ingress refused, listed with why, then replayed once
the cause is mended and stored by a real worker."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
import redis
from falcon import testing

from ingress.app import create_app
from shared.callback import CALLBACK_PATH
from shared.settings import Settings
from shared.taskstate import TaskState, TaskStore
from tests.cli.conftest import RunCli
from tests.support.pipeline import callback, read_manifest, wait_for
from tests.support.servers import FileServer, S3Server, png_bytes
from tests.support.stack import start_workers

pytestmark = pytest.mark.integration


def ingress(env: dict[str, str], **overrides: str) -> testing.TestClient:
    """The ingress app (in-process) for ``env`` plus ``overrides`` (``MJHOOK_*`` names)."""
    settings = Settings.from_env({**env, "MJHOOK_SPOOL_DIR": "", **overrides})
    return testing.TestClient(create_app(settings))


def test_callbacks_refused_for_a_wrong_token_are_listed_then_replayed_and_stored(
    app_env: dict[str, str],
    tmp_path: Path,
    run_cli: RunCli,
    file_server: FileServer,
    s3_server: S3Server,
    s3_bucket: str,
) -> None:
    # Given an ingress configured with a token the provider does not send
    image = png_bytes(7)
    body = orjson.dumps(callback("t-replay", [file_server.add("/t-replay/0.png", image)]))
    app = ingress(app_env, MJHOOK_CALLBACK_TOKEN="new-token")
    refused = app.simulate_post(
        CALLBACK_PATH, body=body, headers={"Content-Type": "application/json"}, query_string="token=old-token"
    )
    assert refused.status_code == 401
    not_json = app.simulate_post(CALLBACK_PATH, body=b"{oops", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 401  # the token is checked first

    # list: both, newest first, with the answer they got and their body
    result = run_cli(app_env, "rejected", "list", "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert listed["total"] == 2
    newest, oldest = listed["rejected"]
    assert newest["body"] == "{oops"
    assert (oldest["status"], oldest["reason"]) == (401, "missing or wrong token")
    assert oldest["body"].encode() == body
    assert oldest["bodySize"] == len(body)
    limited = json.loads(run_cli(app_env, "rejected", "list", "--json", "--limit", "1").stdout)
    assert limited["total"] == 2
    assert limited["rejected"] == [newest]
    human = run_cli(app_env, "rejected", "list")
    assert human.exit_code == 0, human.output
    assert oldest["id"] in human.stdout
    assert "missing or wrong token" in human.stdout

    # replay: the valid one is queued as received; the other is still invalid and stays kept
    result = run_cli(app_env, "rejected", "replay", oldest["id"], newest["id"])
    assert result.exit_code == 1
    assert f"replayed {oldest['id']}: task t-replay queued" in result.stdout
    assert f"cannot be replayed: {newest['id']}: still invalid: body is not valid JSON" in result.output
    record = TaskStore(redis.Redis.from_url(app_env["MJHOOK_REDIS_URL"]), ttl_s=3600).get("t-replay")
    assert record is not None
    assert record.state is TaskState.RECEIVED
    after = json.loads(run_cli(app_env, "rejected", "list", "--json").stdout)
    assert [entry["id"] for entry in after["rejected"]] == [newest["id"]]

    # and a real worker stores it, with the time it first arrived
    with_workers = start_workers(app_env, tmp_path, processes=1, threads=2)
    try:
        s3 = s3_server.client()
        manifest = wait_for(
            lambda: read_manifest(s3, s3_bucket, "t-replay"), timeout_s=60, what="the manifest"
        )
    finally:
        with_workers.terminate()
    assert manifest["status"] == TaskState.STORED.value
    assert manifest["receivedAt"] == oldest["at"]
    assert [image_entry["size"] for image_entry in manifest["images"]] == [len(image)]


def test_replay_needs_an_id_and_reports_unknown_ones(app_env: dict[str, str], run_cli: RunCli) -> None:
    assert run_cli(app_env, "rejected", "replay").exit_code == 2
    result = run_cli(app_env, "rejected", "replay", "0123456789abcdef")
    assert result.exit_code == 1
    assert "not kept: 0123456789abcdef" in result.output


def test_a_hostile_body_is_listed_without_its_terminal_controls(
    app_env: dict[str, str], run_cli: RunCli
) -> None:
    # Given a refused body written to take over the operator's terminal
    app = ingress(app_env)
    hostile = b'{"msg": "\x1b[2J\x1b]0;pwned\x07", "x": "\xe2\x80\xae"'
    assert (
        app.simulate_post(
            CALLBACK_PATH, body=hostile, headers={"Content-Type": "application/json"}
        ).status_code
        == 400
    )
    # When an operator lists the refused callbacks
    result = run_cli(app_env, "rejected", "list")
    # Then the body is shown, each control as its escape, none of them sent
    assert result.exit_code == 0, result.output
    assert "\\x1b[2J\\x1b]0;pwned\\x07" in result.stdout
    assert "\\u202e" in result.stdout
    assert not {"\x1b", "\x07", "\u202e"} & set(result.stdout)


def test_a_listed_body_does_not_show_the_callback_token_its_prompt_echoes(
    app_env: dict[str, str], run_cli: RunCli
) -> None:
    """The provider echoes the request in promptJson, callBackUrl and its ?token= included."""
    # Given a callback refused after a token rotation, its promptJson echoing the old callback URL
    prompt = orjson.dumps(
        {"prompt": "a cat", "callBackUrl": "https://me.example/cb?token=old-s3cret"}
    ).decode()
    body = orjson.dumps(callback("t-echo", ["http://127.0.0.1:9/0.png"], prompt=prompt))
    app = ingress(app_env, MJHOOK_CALLBACK_TOKEN="new-token")
    headers = {"Content-Type": "application/json"}
    refused = app.simulate_post(CALLBACK_PATH, body=body, headers=headers, query_string="token=old-s3cret")
    assert refused.status_code == 401
    # When an operator lists it, as a table or as JSON
    table = run_cli(app_env, "rejected", "list")
    listed = run_cli(app_env, "rejected", "list", "--json")
    # Then neither shows the token, and the rest of the prompt is there
    assert table.exit_code == listed.exit_code == 0
    assert "old-s3cret" not in table.output
    assert "old-s3cret" not in listed.output
    [entry] = json.loads(listed.stdout)["rejected"]
    assert json.loads(json.loads(entry["body"])["data"]["promptJson"]) == {"prompt": "a cat"}
