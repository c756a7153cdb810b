"""``mjhook get``: a task stored by the real worker pipeline, downloaded back from SeaweedFS and
checked against its manifest."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import orjson
import pytest

from shared.callback import Callback
from shared.settings import Settings
from shared.storage import ObjectStore
from shared.taskstate import TaskState
from tests.cli.conftest import RunCli
from tests.support.pipeline import queued_callback
from tests.support.servers import FileServer, png_bytes
from workers.runtime import build_parts, wait_for_bucket

pytestmark = pytest.mark.integration


@pytest.fixture
def store(app_env: dict[str, str], file_server: FileServer) -> ObjectStore:
    """Given task ``t-get`` stored by the worker pipeline: two PNGs and its manifest."""
    parts = build_parts(Settings.from_env(app_env))
    wait_for_bucket(parts.store, timeout_s=30)
    urls = [file_server.add(f"/img{i}.png", png_bytes(i)) for i in range(2)]
    callback = Callback.from_message(queued_callback("t-get", resultUrls=urls))
    assert parts.processor.process(callback) is TaskState.STORED
    return parts.store


def test_get_downloads_every_file_and_the_manifest_byte_for_byte(
    app_env: dict[str, str], store: ObjectStore, run_cli: RunCli, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = run_cli(app_env, "get", "t-get", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in out.iterdir()) == ["0.png", "1.png", "manifest.json"]
    for i in range(2):
        assert (out / f"{i}.png").read_bytes() == png_bytes(i)
    assert (out / "manifest.json").read_bytes() == store.get_bytes("tasks/t-get/manifest.json")
    assert "stored, 2 file(s)" in result.stdout


def test_a_file_that_does_not_match_its_sha256_is_refused(
    app_env: dict[str, str], store: ObjectStore, run_cli: RunCli, tmp_path: Path
) -> None:
    # Given one stored file replaced behind the manifest's back
    other = png_bytes(9)
    store.put_file(
        "tasks/t-get/1.png",
        io.BytesIO(other),
        size=len(other),
        content_type="image/png",
        sha256=hashlib.sha256(other).hexdigest(),
    )
    out = tmp_path / "out"
    result = run_cli(app_env, "get", "t-get", "--out", str(out))
    assert result.exit_code == 1
    assert "tasks/t-get/1.png: sha256" in result.stderr
    assert "does not match" in result.stderr
    assert sorted(path.name for path in out.iterdir()) == ["0.png", "manifest.json"]


def test_a_task_without_manifest_is_an_error(
    app_env: dict[str, str], store: ObjectStore, run_cli: RunCli, tmp_path: Path
) -> None:
    result = run_cli(app_env, "get", "t-unknown", "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "task t-unknown has no manifest" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_manifest_naming_a_file_outside_the_task_is_refused(
    app_env: dict[str, str], store: ObjectStore, run_cli: RunCli, tmp_path: Path
) -> None:
    manifest = orjson.loads(store.get_bytes("tasks/t-get/manifest.json") or b"")
    manifest["images"][0]["key"] = "tasks/t-get/../../etc/passwd"
    store.put_json("tasks/t-get/manifest.json", manifest)
    result = run_cli(app_env, "get", "t-get", "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "outside tasks/t-get/" in result.stderr


def test_an_invalid_task_id_is_a_usage_error(app_env: dict[str, str], run_cli: RunCli) -> None:
    assert run_cli(app_env, "get", "../etc").exit_code == 2


def test_a_missing_bucket_is_an_error_not_a_traceback(app_env: dict[str, str], run_cli: RunCli) -> None:
    result = run_cli({**app_env, "MJHOOK_S3_BUCKET": "no-such-bucket"}, "get", "t-get")
    assert result.exit_code == 1
    assert "NoSuchBucket" in result.stderr


def test_a_hostile_source_url_in_the_manifest_is_printed_without_its_terminal_controls(
    app_env: dict[str, str], file_server: FileServer, run_cli: RunCli, tmp_path: Path
) -> None:
    # Given a task stored with one good file and one whose URL carries terminal controls
    parts = build_parts(Settings.from_env(app_env))
    wait_for_bucket(parts.store, timeout_s=30)
    good = file_server.add("/good.png", png_bytes(3))
    hostile = file_server.url("/\x1b[2J\x1b]0;pwned\x07.png")
    callback = Callback.from_message(queued_callback("t-hostile-url", resultUrls=[good, hostile]))
    assert parts.processor.process(callback) is TaskState.PARTIAL
    # When an operator downloads it
    result = run_cli(app_env, "get", "t-hostile-url", "--out", str(tmp_path / "out"))
    # Then the file not stored is named, its controls shown as escapes, none of them sent
    assert result.exit_code == 0, result.output
    assert "not stored: #1 " in result.stdout
    assert "\\x1b[2J\\x1b]0;pwned\\x07.png" in result.stdout
    assert not {"\x1b", "\x07"} & set(result.stdout)
