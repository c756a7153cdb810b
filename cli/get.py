"""``mjhook get``: download a finished task's files and manifest from object storage, checking
each file against the sha256 its manifest records."""

from __future__ import annotations

import hashlib
import io
import re
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
@pass_settings
def get(settings: Settings, task_id: str, out_dir: Path | None) -> None:
    """Download TASK_ID's files and manifest.json from object storage, checking each file's sha256
    against the manifest.

    Exit code 1 when the task has no manifest (unknown, or not finished yet), or a file is missing
    or does not match; a file that does not match is not kept.
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
        problems = _download_all(store, files, directory)
    with writing(directory / MANIFEST_NAME):
        (directory / MANIFEST_NAME).write_bytes(body)
    status = printable(manifest.get("status"))
    click.echo(f"{task_id}: {status}, {len(files) - len(problems)} file(s) in {directory}")
    for error in manifest.get("errors") or []:
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


def _download_all(store: ObjectStore, files: Sequence[ManifestFile], directory: Path) -> list[str]:
    """Download every file with a progress bar on stderr; the problems, one line each."""
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
        with writing(part), _DownloadFile(part) as sink:
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
    """The ``.part`` file a download streams into. Its write errors are reported as this file's
    here: inside ``ObjectStore.stream_to`` an OSError would be taken for object storage's."""

    def __init__(self, path: Path) -> None:
        super().__init__(io.FileIO(path, "w"))
        self._path = path

    def write(self, data: ReadableBuffer, /) -> int:
        with writing(self._path):
            return super().write(data)
