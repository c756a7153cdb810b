"""``mjhook get``: a task stored by the real worker pipeline, downloaded back from SeaweedFS and
checked against its manifest."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import click
import orjson
import pytest

import cli.get
from shared.callback import Callback
from shared.settings import Settings
from shared.storage import ObjectStore, create_object_store
from shared.taskstate import TaskState
from tests.cli.conftest import RunCli
from tests.support.pipeline import queued_callback
from tests.support.servers import FileServer, png_bytes
from tests.support.stack import ready_bucket
from workers.runtime import build_parts

pytestmark = pytest.mark.integration


@pytest.fixture
def store(app_env: dict[str, str], file_server: FileServer) -> ObjectStore:
    """Given task ``t-get`` stored by the worker pipeline: two PNGs and its manifest."""
    parts = build_parts(Settings.from_env(app_env))
    ready_bucket(parts.store)
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


@pytest.mark.parametrize(
    "name",
    [
        "x/../../../etc/passwd",  # a path after a safe first character
        "0.png\n",  # a line break after a safe name
        "0.png\x1b]0;pwned\x07",  # terminal controls after a safe name
        "a" * 129,  # past the 128 characters a name may have
    ],
    ids=["path", "newline", "controls", "too-long"],
)
def test_a_manifest_name_safe_only_at_its_start_is_refused(name: str) -> None:
    """The whole name is checked against SAFE_FILE_NAME, not its first characters: a tampered
    manifest must not name a path, a line break or controls for `mjhook get` to write."""
    manifest = {"images": [{"key": f"tasks/t-get/{name}", "sha256": "0" * 64, "size": 1}]}
    with pytest.raises(click.ClickException, match="outside tasks/t-get/"):
        cli.get.manifest_files(manifest, "t-get")


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
    ready_bucket(parts.store)
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


#: Bytes of the file of ``t-big``: more than a write buffer, so a download writes it straight through.
BIG_FILE_BYTES = 256 * 1024


@pytest.fixture
def big_task(app_env: dict[str, str]) -> bytes:
    """Given task ``t-big`` in the bucket: one file of BIG_FILE_BYTES and its manifest; the file."""
    store = create_object_store(Settings.from_env(app_env))
    store.ensure_bucket()
    data = png_bytes(0) + bytes(BIG_FILE_BYTES)
    digest = hashlib.sha256(data).hexdigest()
    store.put_file(
        "tasks/t-big/0.png", io.BytesIO(data), size=len(data), content_type="image/png", sha256=digest
    )
    image = {"index": 0, "key": "tasks/t-big/0.png", "size": len(data), "sha256": digest}
    store.put_json("tasks/t-big/manifest.json", {"taskId": "t-big", "status": "stored", "images": [image]})
    return data


def test_an_out_directory_that_cannot_be_made_is_one_error_line_naming_it(
    app_env: dict[str, str], big_task: bytes, run_cli: RunCli, tmp_path: Path
) -> None:
    """Given a regular file where --out wants a directory (a typo, a wrong variable)
    When `mjhook get t-big --out FILE/out` runs
    Then it exits 1 with one `Error:` line naming the directory and why: no traceback."""
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    result = run_cli(app_env, "get", "t-big", "--out", str(blocker / "out"))
    assert result.exit_code == 1, result.output
    assert result.stderr == f"Error: cannot write {blocker / 'out'}: Not a directory\n"
    assert blocker.read_bytes() == b""


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to fill a disk")
def test_a_full_disk_is_one_error_line_naming_the_file_and_keeps_no_part_of_it(
    app_env: dict[str, str], big_task: bytes, run_cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given an --out directory whose disk is full for the file being downloaded (the .part file
    made for it writes to /dev/full)
    When `mjhook get t-big` writes it
    Then it exits 1 with one `Error:` line naming that file, not blaming object storage, and the
    .part file is gone, with no manifest written."""
    out = tmp_path / "out"
    out.mkdir()
    real_new_file = cli.get._new_file

    def full_disk(path: Path) -> int:
        os.close(real_new_file(path))
        return os.open("/dev/full", os.O_WRONLY)

    monkeypatch.setattr(cli.get, "_new_file", full_disk)
    result = run_cli(app_env, "get", "t-big", "--out", str(out))
    assert result.exit_code == 1, result.output
    assert (
        result.stderr.splitlines()[-1]
        == f"Error: cannot write {out / '.0.png.part'}: No space left on device"
    )
    assert "object storage" not in result.stderr
    assert list(out.iterdir()) == []


def test_a_directory_where_a_file_goes_is_one_error_line_naming_it(
    app_env: dict[str, str], big_task: bytes, run_cli: RunCli, tmp_path: Path
) -> None:
    """Given an --out directory holding a directory named like the task's file
    When `mjhook get t-big` runs: it is named as in the way; and with --force, which has
    downloaded the file and moves it into place
    Then it exits 1 with one `Error:` line naming that path, and keeps no .part file."""
    out = tmp_path / "out"
    (out / "0.png" / "inside").mkdir(parents=True)
    left = run_cli(app_env, "get", "t-big", "--out", str(out))
    assert left.exit_code == 1, left.output
    assert f"{out / '0.png'}: already there with other bytes, left as it is" in left.stderr
    (out / "manifest.json").unlink()
    result = run_cli(app_env, "get", "t-big", "--out", str(out), "--force")
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines()[-1] == f"Error: cannot write {out / '0.png'}: Is a directory"
    assert sorted(path.name for path in out.iterdir()) == ["0.png"]


def store_task(app_env: dict[str, str], task_id: str, files: dict[str, bytes], **image: object) -> None:
    """Given ``task_id`` in the bucket: ``files`` (name: bytes) and a manifest listing them in that
    order, each image entry with ``image``'s fields on top of what is true of it."""
    store = create_object_store(Settings.from_env(app_env))
    store.ensure_bucket()
    images = []
    for index, (name, data) in enumerate(files.items()):
        key, digest = f"tasks/{task_id}/{name}", hashlib.sha256(data).hexdigest()
        store.put_file(key, io.BytesIO(data), size=len(data), content_type="image/png", sha256=digest)
        images.append({"index": index, "key": key, "size": len(data), "sha256": digest, **image})
    store.put_json(
        f"tasks/{task_id}/manifest.json", {"taskId": task_id, "status": "stored", "images": images}
    )


def test_a_file_named_like_another_ones_download_keeps_both(
    app_env: dict[str, str], run_cli: RunCli, tmp_path: Path
) -> None:
    """Given a manifest listing 0.png.part and then 0.png (a name SAFE_FILE_NAME allows)
    When `mjhook get` downloads them
    Then both are kept, each with its own bytes: 0.png was downloaded into 0.png.part, over the
    file of that name, which was lost while 2 files were reported."""
    store_task(app_env, "t-part", {"0.png.part": png_bytes(1), "0.png": png_bytes(2)})
    out = tmp_path / "out"

    result = run_cli(app_env, "get", "t-part", "--out", str(out))

    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in out.iterdir()) == ["0.png", "0.png.part", "manifest.json"]
    assert (out / "0.png.part").read_bytes() == png_bytes(1)
    assert (out / "0.png").read_bytes() == png_bytes(2)
    assert "stored, 2 file(s)" in result.stdout


@pytest.mark.parametrize("size", ["12kB", [1], -1, True, 1.5])
def test_a_file_size_that_is_no_byte_count_is_one_error_line(
    app_env: dict[str, str], run_cli: RunCli, tmp_path: Path, size: object
) -> None:
    """Given a manifest whose file size is text, a list, negative, a boolean or a fraction
    When `mjhook get` reads it
    Then it exits 1 with one error line naming the file: a text or list was a traceback, the others
    were taken as sizes."""
    store_task(app_env, "t-size", {"0.png": png_bytes(1)}, size=size)

    result = run_cli(app_env, "get", "t-size", "--out", str(tmp_path / "out"))

    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: the manifest lists a file whose size is not a byte count: ")
    assert "tasks/t-size/0.png" in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_manifest_listing_a_file_twice_is_refused(
    app_env: dict[str, str], run_cli: RunCli, tmp_path: Path
) -> None:
    """Given a manifest listing one file twice, when `mjhook get` reads it, then it exits 1 naming
    the file: it wrote the file twice and counted it as two."""
    store_task(app_env, "t-twice", {"0.png": png_bytes(1)})
    store = create_object_store(Settings.from_env(app_env))
    manifest = orjson.loads(store.get_bytes("tasks/t-twice/manifest.json") or b"")
    manifest["images"] *= 2
    store.put_json("tasks/t-twice/manifest.json", manifest)

    result = run_cli(app_env, "get", "t-twice", "--out", str(tmp_path / "out"))

    assert result.exit_code == 1, result.output
    assert result.stderr == "Error: the manifest lists a file twice: tasks/t-twice/0.png\n"


@pytest.mark.parametrize(
    "sha256",
    ["\x1b]0;pwned\x07\x1b[2J" + "A" * 100_000, "A" * 64, "0" * 63],
    ids=["terminal-controls-and-megabytes", "uppercase", "too-short"],
)
def test_a_sha256_that_is_not_64_lowercase_hex_digits_is_one_error_line(
    app_env: dict[str, str], run_cli: RunCli, tmp_path: Path, sha256: str
) -> None:
    """Given a manifest whose sha256 is terminal controls and 100 kB of text, uppercase or short
    When `mjhook get` reads it
    Then it exits 1 with one line naming the file and downloads nothing: the text was taken as the
    sha256 to match, and printed raw in the mismatch line."""
    store_task(app_env, "t-sha", {"0.png": png_bytes(1)}, sha256=sha256)
    out = tmp_path / "out"

    result = run_cli(app_env, "get", "t-sha", "--out", str(out))

    assert result.exit_code == 1, result.output[:500]
    assert result.stderr == (
        "Error: the manifest lists a file without a sha256 of 64 lowercase hex digits: tasks/t-sha/0.png\n"
    )
    assert not out.exists()


def test_an_entry_outside_the_task_is_shown_escaped_and_shortened(
    app_env: dict[str, str], run_cli: RunCli, tmp_path: Path
) -> None:
    """Given a manifest entry naming another task's file, with a megabyte of URL and terminal
    controls in it
    When `mjhook get` reads it
    Then the error line shows the entry's first 200 characters, its controls as escapes: the
    whole entry reached the terminal."""
    store = create_object_store(Settings.from_env(app_env))
    store.ensure_bucket()
    entry = {"key": "tasks/other/0.png", "sourceUrl": "http://x/\x1b[2J" + "B" * 1_000_000}
    store.put_json(
        "tasks/t-entry/manifest.json", {"taskId": "t-entry", "status": "stored", "images": [entry]}
    )

    result = run_cli(app_env, "get", "t-entry", "--out", str(tmp_path / "out"))

    assert result.exit_code == 1, result.output[:500]
    start = "{'key': 'tasks/other/0.png', 'sourceUrl': 'http://x/\\x1b[2J"
    shown = start + "B" * (199 - len(start)) + "\u2026"  # 200 characters, the last an ellipsis
    assert result.stderr == f"Error: the manifest lists a file outside tasks/t-entry/: {shown}\n"


@pytest.mark.parametrize("planted", [".0.png.part", "manifest.json"])
def test_a_symbolic_link_planted_in_the_directory_is_never_written_through(
    app_env: dict[str, str], run_cli: RunCli, tmp_path: Path, planted: str
) -> None:
    """Given an --out directory others can write into, holding a link named like a download's part
    file or the manifest, to a file of the operator's
    When `mjhook get` runs there
    Then that file keeps its bytes: the part file is made anew, never through a link, and a link
    in the way of the manifest is left, named. (Both were written through the link.)"""
    store_task(app_env, "t-link", {"0.png": png_bytes(1)})
    out, victim = tmp_path / "shared", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_bytes(b"important\n")
    (out / planted).symlink_to(victim)

    result = run_cli(app_env, "get", "t-link", "--out", str(out))

    assert victim.read_bytes() == b"important\n"
    assert (out / "0.png").read_bytes() == png_bytes(1)
    if planted == "manifest.json":
        assert result.exit_code == 1, result.output
        assert "manifest.json: already there with other bytes" in result.stderr
    else:
        assert result.exit_code == 0, result.output


def test_files_of_the_same_names_with_other_bytes_are_replaced_only_with_force(
    app_env: dict[str, str], run_cli: RunCli, tmp_path: Path
) -> None:
    """Given an --out directory already holding a 0.png and a manifest.json of the operator's own
    When `mjhook get` runs there, then again with --force
    Then the first leaves both as they were and names them (exit 1); --force replaces them; and a
    third run, with every file there already, downloads nothing and exits 0."""
    store_task(app_env, "t-there", {"0.png": png_bytes(1)})
    out = tmp_path / "photos"
    out.mkdir()
    (out / "0.png").write_bytes(b"my own picture")
    (out / "manifest.json").write_bytes(b'{"taskId": "older"}')

    refused = run_cli(app_env, "get", "t-there", "--out", str(out))
    assert refused.exit_code == 1, refused.output
    assert (out / "0.png").read_bytes() == b"my own picture"
    assert (out / "manifest.json").read_bytes() == b'{"taskId": "older"}'
    assert f"{out / '0.png'}: already there with other bytes, left as it is" in refused.stderr
    assert "stored, 0 file(s)" in refused.stdout

    forced = run_cli(app_env, "get", "t-there", "--out", str(out), "--force")
    assert forced.exit_code == 0, forced.output
    assert (out / "0.png").read_bytes() == png_bytes(1)
    assert orjson.loads((out / "manifest.json").read_bytes())["taskId"] == "t-there"

    again = run_cli(app_env, "get", "t-there", "--out", str(out))
    assert again.exit_code == 0, again.output
    assert "stored, 1 file(s)" in again.stdout


def test_a_manifest_whose_errors_is_no_list_is_listed_without_them(
    app_env: dict[str, str], run_cli: RunCli, tmp_path: Path
) -> None:
    store_task(app_env, "t-errors", {"0.png": png_bytes(1)})
    store = create_object_store(Settings.from_env(app_env))
    manifest = orjson.loads(store.get_bytes("tasks/t-errors/manifest.json") or b"{}")
    store.put_json("tasks/t-errors/manifest.json", {**manifest, "errors": 5})

    result = run_cli(app_env, "get", "t-errors", "--out", str(tmp_path / "out"))

    assert result.exit_code == 0, result.output
    assert "stored, 1 file(s)" in result.stdout


def test_a_fifo_named_like_a_file_is_in_the_way_not_waited_on(
    app_env: dict[str, str], run_cli: RunCli, tmp_path: Path
) -> None:
    """Given an --out directory holding a FIFO named like the task's file
    Then `mjhook get` names it as in the way at once: opening it to compare its bytes waited for
    a writer that never comes."""
    store_task(app_env, "t-fifo", {"0.png": png_bytes(1)})
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "0.png")

    result = run_cli(app_env, "get", "t-fifo", "--out", str(out))

    assert result.exit_code == 1, result.output
    assert f"{out / '0.png'}: already there with other bytes, left as it is" in result.stderr
