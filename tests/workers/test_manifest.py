"""The manifest's fields and the task's outcome."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from shared.callback import Callback
from shared.json_limits import DEFAULT_MAX_JSON_DEPTH, document_depth
from shared.taskstate import TaskState
from tests.support.pipeline import nested_prompt_json
from workers.manifest import FileError, ImageEntry, build_manifest, newest_received_at, outcome


def callback(code: int = 200, prompt_json: str | None = '{"prompt": "a fox"}') -> Callback:
    return Callback(
        task_id="t1",
        code=code,
        msg="success" if code == 200 else "boom",
        prompt_json=prompt_json,
        result_urls=("http://a/0", "http://a/1"),
        received_at="2026-11-25T00:00:00.000Z",
    )


IMAGE = ImageEntry(1, "http://a/1", "tasks/t1/1.png", 10, "ab" * 32, "image/png")
ERROR = FileError(0, "http://a/0", "HTTP 404")


def test_outcome_is_stored_partial_or_failed() -> None:
    assert outcome(callback(), [IMAGE], []) is TaskState.STORED
    assert outcome(callback(), [IMAGE], [ERROR]) is TaskState.PARTIAL
    assert outcome(callback(), [], [ERROR]) is TaskState.FAILED
    assert outcome(callback(code=500), [], []) is TaskState.FAILED


def test_manifest_has_every_contract_field() -> None:
    manifest = build_manifest(
        callback(),
        status=TaskState.PARTIAL,
        images=[IMAGE],
        errors=[ERROR],
        completed_at="later",
        max_json_depth=DEFAULT_MAX_JSON_DEPTH,
    )
    assert manifest == {
        "taskId": "t1",
        "status": "partial",
        "code": 200,
        "msg": "success",
        "promptJson": '{"prompt": "a fox"}',
        "params": {"prompt": "a fox"},
        "prompt": "a fox",
        "images": [
            {
                "index": 1,
                "sourceUrl": "http://a/1",
                "key": "tasks/t1/1.png",
                "size": 10,
                "sha256": "ab" * 32,
                "contentType": "image/png",
            }
        ],
        "errors": [{"index": 0, "sourceUrl": "http://a/0", "reason": "HTTP 404"}],
        "receivedAt": "2026-11-25T00:00:00.000Z",
        "completedAt": "later",
    }


def test_malformed_prompt_json_stays_raw_with_null_params() -> None:
    manifest = build_manifest(
        callback(prompt_json="{oops"),
        status=TaskState.STORED,
        images=[IMAGE],
        errors=[],
        completed_at="x",
        max_json_depth=DEFAULT_MAX_JSON_DEPTH,
    )
    assert manifest["promptJson"] == "{oops"
    assert manifest["params"] is None
    assert manifest["prompt"] is None


def stored_manifest(prompt_json: str, *, max_json_depth: int = DEFAULT_MAX_JSON_DEPTH) -> dict[str, Any]:
    """The manifest of a stored task (one image) whose callback carries ``prompt_json``."""
    return build_manifest(
        callback(prompt_json=prompt_json),
        status=TaskState.STORED,
        images=[IMAGE],
        errors=[],
        completed_at="x",
        max_json_depth=max_json_depth,
    )


def test_the_callback_url_the_provider_echoes_in_prompt_json_stays_out_of_the_manifest() -> None:
    """The provider's promptJson holds the request's parameters, callBackUrl among them, and the
    one `mjhook submit` sends carries the callback token: anyone reading the task (GET /tasks,
    the bucket) could have forged callbacks with it. The polling fallback already removed it."""
    params = {"prompt": "a fox", "callBackUrl": "https://hooks.example/callbacks/midjourney?token=s3cr3t"}
    manifest = stored_manifest(orjson.dumps(params).decode())
    assert "s3cr3t" not in orjson.dumps(manifest).decode()
    assert manifest["params"] == {"prompt": "a fox"}
    assert orjson.loads(manifest["promptJson"]) == {"prompt": "a fox"}


@pytest.mark.parametrize(
    ("max_json_depth", "depth", "parsed"),
    [(8, 20, False), (8, 9, False), (8, 8, True), (64, 40, True)],
)
def test_prompt_json_is_parsed_only_up_to_the_given_depth(
    max_json_depth: int, depth: int, parsed: bool
) -> None:
    # Given a promptJson nesting `depth` levels (the default limit, 32, would decide 20 and 40
    # the other way round)
    prompt_json = nested_prompt_json(depth)
    assert document_depth(orjson.loads(prompt_json)) == depth
    # When the manifest is built with a limit of `max_json_depth`
    manifest = stored_manifest(prompt_json, max_json_depth=max_json_depth)
    # Then it is parsed when within the limit, and otherwise kept raw only
    assert manifest["promptJson"] == prompt_json
    assert manifest["params"] == (orjson.loads(prompt_json) if parsed else None)
    assert manifest["prompt"] == ("a fox" if parsed else None)


@pytest.mark.parametrize(
    "prompt_json",
    [
        # Malformed, as the provider's docs warn: a member cut short, then the text itself
        '{"prompt": "a fox", "callBackUrl": "https://hooks.example/cb?token=s3cr3t", "version": ',
        '{"prompt": "a fox", "callBackUrl" : "https://hooks.example/cb?token=s3cr3t',
        # Read by orjson (1024 levels) but not written again (254)
        '{"callBackUrl": "https://hooks.example/cb?token=s3cr3t", "deep": ' + "[" * 300 + "]" * 300 + "}",
    ],
    ids=["malformed", "cut-in-its-url", "too-deep-to-write"],
)
def test_the_callback_url_stays_out_of_a_prompt_json_that_is_no_json_mjhook_reads(prompt_json: str) -> None:
    manifest = stored_manifest(prompt_json)
    assert "s3cr3t" not in orjson.dumps(manifest).decode()
    assert manifest["promptJson"].startswith('{"')
    assert '"callBackUrl"' in manifest["promptJson"]  # its value emptied, the text's shape kept


@pytest.mark.parametrize(
    ("earlier", "expected"),
    [
        (None, "2026-11-25T00:00:01.000Z"),
        ({"receivedAt": "2026-11-25T00:00:00.500Z"}, "2026-11-25T00:00:01.000Z"),
        ({"receivedAt": "2026-11-25T00:00:02.000Z"}, "2026-11-25T00:00:02.000Z"),
        ({"receivedAt": "2026-11-25T01:00:00+01:00"}, "2026-11-25T00:00:01.000Z"),
        ({"receivedAt": "yesterday"}, "2026-11-25T00:00:01.000Z"),
        ({"receivedAt": "2026-11-25T00:00:02"}, "2026-11-25T00:00:01.000Z"),
        ({}, "2026-11-25T00:00:01.000Z"),
    ],
    ids=["none", "older", "newer", "older-with-offset", "no-date", "no-zone", "no-field"],
)
def test_a_new_manifest_takes_the_newer_received_at(earlier: dict[str, str] | None, expected: str) -> None:
    """The new manifest's receivedAt is its callback's unless the manifest it replaces names a
    later moment; one that is no zoned ISO time (written by hand) is not believed."""
    assert newest_received_at("2026-11-25T00:00:01.000Z", earlier) == expected


def test_a_callback_without_a_time_takes_the_earlier_manifests() -> None:
    """A callback kept without a time (a refused one an older version kept) does not blank the
    time of the manifest it replaces."""
    assert newest_received_at("", {"receivedAt": "2026-11-25T00:00:02.000Z"}) == "2026-11-25T00:00:02.000Z"
    assert newest_received_at("", None) == ""
