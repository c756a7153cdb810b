"""``mjhook get``: download a finished task's files and manifest from object storage, checking
each file against the sha256 its manifest records."""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from cli.services import reported_failures
from cli.settings import pass_settings
from shared.callback import TASK_ID_PATTERN
from shared.printable import printable, shortened
from shared.settings import Settings
from shared.storage import MANIFEST_NAME, ObjectStore, create_object_store, manifest_key, task_prefix

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

#: A file name taken from the manifest and written into the output directory: no separators, no
#: leading dot, so a tampered manifest cannot write outside it.
SAFE_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: A file is written under its name with a dot before and this suffix after, and renamed once its
#: sha256 matched: a hidden name, which no name SAFE_FILE_NAME allows can be (a manifest listing
#: ``0.png.part`` and ``0.png`` made one download land on the other).
PART_SUFFIX = ".part"
#: A file's sha256 as mjhook's manifests record it: 64 lowercase hex digits, so the manifest's own
#: text never reaches the terminal in a mismatch line.
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
#: Characters of a malformed manifest entry shown in its error line.
MAX_SHOWN_ENTRY_CHARS = 200


@dataclass(frozen=True, slots=True)
class ManifestFile:
    key: str
    #: Its name in the output directory: the key without the task's prefix.
    name: str
    size: int
    sha256: str


@click.command()
@click.argument("task_id")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory to write into, made if missing [default: ./TASK_ID].",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace files of the same names in the directory that hold other bytes.",
)
@pass_settings
def get(settings: Settings, task_id: str, out_dir: Path | None, force: bool) -> None:
    """Download TASK_ID's files and manifest.json from object storage, checking each file's sha256
    against the manifest.

    A file already in the directory with the manifest's sha256 is kept as it is (running it again
    downloads nothing); one holding other bytes is left alone and named, unless --force. Symbolic
    links in the directory are never followed: a link is replaced only with --force.

    Exit code 1 when the task has no manifest (unknown, or not finished yet), or a file is missing,
    does not match, or is in the way; a file that does not match is not kept.
    """
    if not TASK_ID_PATTERN.fullmatch(task_id):
        raise click.BadParameter("must be 1-128 letters, digits, '_' or '-'", param_hint="TASK_ID")
    directory = out_dir if out_dir is not None else Path(task_id)
    with reported_failures():
        store = create_object_store(settings)
        body = store.get_bytes(manifest_key(task_id))
        if body is None:
            raise click.ClickException(
                f"task {task_id} has no manifest in bucket {store.bucket!r}: "
                "it is unknown, or not finished yet"
            )
        manifest = _parse_manifest(body)
        files = manifest_files(manifest, task_id)
        with writing(directory):
            directory.mkdir(parents=True, exist_ok=True)
        problems = _download_all(store, files, directory, force=force)
    kept = len(files) - len(problems)
    if force or _sha256_of(directory / MANIFEST_NAME) in (None, hashlib.sha256(body).hexdigest()):
        _write_new(directory, MANIFEST_NAME, body)
    else:
        problems.append(_in_the_way(directory / MANIFEST_NAME))
    status = printable(manifest.get("status"))
    click.echo(f"{task_id}: {status}, {kept} file(s) in {directory}")
    errors = manifest.get("errors")
    for error in errors if isinstance(errors, list) else []:
        if isinstance(error, dict):
            index, url, reason = (printable(error.get(name)) for name in ("index", "sourceUrl", "reason"))
            click.echo(f"  not stored: #{index} {url}: {reason}")
    if problems:
        raise click.ClickException("\n".join(problems))


def _parse_manifest(body: bytes) -> dict[str, Any]:
    try:
        manifest = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise click.ClickException(f"the manifest is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise click.ClickException("the manifest is not a JSON object")
    return manifest


def manifest_files(manifest: dict[str, Any], task_id: str) -> list[ManifestFile]:
    """The stored files a manifest lists; a ClickException when an entry is malformed or its key
    lies outside ``tasks/{task_id}/``."""
    images = manifest.get("images")
    if not isinstance(images, list):
        raise click.ClickException("the manifest has no 'images' list")
    prefix = task_prefix(task_id)
    files: list[ManifestFile] = []
    names: set[str] = set()
    for entry in images:
        key = entry.get("key") if isinstance(entry, dict) else None
        if not isinstance(key, str):
            key = ""
        name = key[len(prefix) :] if key.startswith(prefix) else ""
        if not SAFE_FILE_NAME.fullmatch(name) or name == MANIFEST_NAME:
            shown = printable(shortened(repr(entry), MAX_SHOWN_ENTRY_CHARS))
            raise click.ClickException(f"the manifest lists a file outside {prefix}: {shown}")
        if name in names:  # downloaded twice into one file, and counted twice
            raise click.ClickException(f"the manifest lists a file twice: {key}")
        names.add(name)
        sha256 = entry.get("sha256")
        if not isinstance(sha256, str) or not SHA256_HEX.fullmatch(sha256):
            raise click.ClickException(
                f"the manifest lists a file without a sha256 of 64 lowercase hex digits: {key}"
            )
        size = entry.get("size")
        if size is None:
            size = 0  # unknown: it only sizes the progress bar
        elif isinstance(size, bool) or not isinstance(size, int) or size < 0:
            shown = printable(shortened(repr(size), 40))
            raise click.ClickException(
                f"the manifest lists a file whose size is not a byte count: {key}: {shown}"
            )
        files.append(ManifestFile(key=key, name=name, size=size, sha256=sha256))
    return files


def _download_all(
    store: ObjectStore, files: Sequence[ManifestFile], directory: Path, *, force: bool
) -> list[str]:
    """Download every file with a progress bar on stderr (one there already, with its sha256,
    is not downloaded again; one holding other bytes is replaced only when ``force``); the
    problems, one line each."""
    problems = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as progress:
        overall = progress.add_task("total", total=sum(file.size for file in files))
        for file in files:
            there = _sha256_of(directory / file.name)
            if there == file.sha256:
                progress.advance(overall, file.size)
                continue
            if there is not None and not force:
                problems.append(_in_the_way(directory / file.name))
                continue
            current = progress.add_task(file.name, total=file.size)

            def advance(chunk: bytes, current: Any = current) -> None:
                progress.advance(current, len(chunk))
                progress.advance(overall, len(chunk))

            problem = download_verified(store, file, directory, on_chunk=advance)
            if problem is not None:
                problems.append(problem)
    return problems


def download_verified(
    store: ObjectStore, file: ManifestFile, directory: Path, *, on_chunk: Callable[[bytes], None]
) -> str | None:
    """Stream ``file`` into ``directory``, keeping it only when its sha256 matches the manifest's;
    None when it was kept, else what went wrong."""
    part = directory / f".{file.name}{PART_SUFFIX}"
    digest = hashlib.sha256()

    def take(chunk: bytes) -> None:
        digest.update(chunk)
        on_chunk(chunk)

    try:
        with writing(part), _DownloadFile(part, _new_file(part)) as sink:
            found = store.stream_to(file.key, sink, on_chunk=take)
        if not found:
            return f"{file.key}: listed in the manifest but not in the bucket"
        if digest.hexdigest() != file.sha256:
            return f"{file.key}: sha256 {digest.hexdigest()} does not match the manifest's {file.sha256}"
        with writing(directory / file.name):
            part.replace(directory / file.name)
        return None
    finally:
        part.unlink(missing_ok=True)  # a file is kept only under its own name, once it matched


def _new_file(path: Path) -> int:
    """A descriptor of ``path`` made anew, empty, for writing: whatever had its name (a file a
    killed run left, a symbolic link planted there) is removed first, and the file is made only
    if nothing has the name then (O_EXCL), never through a link, so no write lands outside the
    directory."""
    path.unlink(missing_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)


def _write_new(directory: Path, name: str, data: bytes) -> None:
    """Write ``data`` as ``directory/name`` through a hidden part file renamed over it (a rename
    replaces a link of that name, never what it points to)."""
    part = directory / f".{name}{PART_SUFFIX}"
    try:
        with writing(part), os.fdopen(_new_file(part), "wb") as handle:
            handle.write(data)
        with writing(directory / name):
            part.replace(directory / name)
    finally:
        part.unlink(missing_ok=True)


def _sha256_of(path: Path) -> str | None:
    """The sha256 of the file at ``path``; None when nothing has that name; "" when something
    does that is not a regular file to read (a link, a directory, one not readable)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a FIFO: no wait
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return ""
    with os.fdopen(fd, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _in_the_way(path: Path) -> str:
    return f"{printable(path)}: already there with other bytes, left as it is (--force replaces it)"


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """A local file or directory that cannot be made or written (a file in the way, no permission,
    disk full) as one line naming ``path``, exit code 1."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or f"{type(exc).__name__}: {exc}"
        raise click.ClickException(f"cannot write {printable(path)}: {reason}") from exc


class _DownloadFile(io.BufferedWriter):
    """The ``.part`` file a download streams into (``fd``, open for writing). Its write errors are
    reported as this file's here: inside ``ObjectStore.stream_to`` an OSError would be taken for
    object storage's."""

    def __init__(self, path: Path, fd: int) -> None:
        super().__init__(io.FileIO(fd, "w"))
        self._path = path

    def write(self, data: ReadableBuffer, /) -> int:
        with writing(self._path):
            return super().write(data)
