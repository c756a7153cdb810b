"""The ingress's local durable spool: where callbacks go when Redis cannot take them.

One JSON-lines file per gunicorn worker process (``spool-{pid}.jsonl``), each append written and
fsync'd before the provider gets its 200. Any process may drain any file (a restarted ingress has
new pids), so every access takes an exclusive ``flock`` and checks it still holds the file that
is at the path (a drainer may have replaced, renamed or removed it meanwhile). A drain first
renames the file it takes (:data:`DRAINING_MARK`) and lets its lock go, and only then queues its
lines under the lock of the renamed file: an append waiting on the lock finds its path free and
starts a new file, instead of waiting for every line's enqueue."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import orjson

from shared.callback import Callback, without_callback_url
from shared.errors import MjhookError, QueueUnavailable, SpoolUnavailable
from shared.periodic import PeriodicThread

log = logging.getLogger(__name__)

SPOOL_GLOB = "spool-*.jsonl"
#: Where the drain sets aside a spooled callback the queue refuses for good (its task's record is
#: unusable, an unforeseen error): in the spool's own format, so that its lines can be handed
#: back to the drain once the cause is fixed (:meth:`Spool.requeue_unqueued`, ``mjhook spool
#: requeue``).
UNQUEUED_NAME = "unqueued.jsonl"
#: The spool file :meth:`Spool.requeue_unqueued` moves set-aside lines into: no process appends
#: to it otherwise, and every drain takes it like any other spool file.
REQUEUED_NAME = "spool-requeued.jsonl"
#: Listings of the spool directory one count of its callbacks or bytes takes at most
#: (:meth:`Spool._total`).
TOTAL_LISTINGS = 3
#: Bytes a paused drain blanks per write when it cannot rewrite a file (:func:`_keep_undrained`).
BLANKING_CHUNK_BYTES = 1 << 20
#: In the name a drain gives a spool file it takes (``spool-7.draining-{pid}-{ns}.jsonl``): no
#: process appends to it, and it is still a spool file, which a later drain takes as it is
#: should this one stop (the queue unavailable, a crash) before every line left it.
DRAINING_MARK = ".draining-"


class Spool:
    """Appends callbacks durably; drains them into ``accept`` when it works again."""

    def __init__(self, directory: Path, *, max_bytes: int, pid: Callable[[], int] = os.getpid) -> None:
        self.directory = Path(directory)
        self._max_bytes = max_bytes
        self._pid = pid

    def append(self, callback: Callback) -> None:
        """Write ``callback`` and fsync it; raise :class:`SpoolUnavailable` when it cannot be
        written (disk full, size limit reached, no permission)."""
        line = orjson.dumps(callback.to_message()) + b"\n"
        try:
            _make_dir(self.directory)
            if self.depth_bytes() + len(line) > self._max_bytes:
                raise SpoolUnavailable(f"spool is full ({self._max_bytes} bytes)")
            path = self.directory / f"spool-{self._pid()}.jsonl"
            with _locked(path, create=True) as fd:
                _append_whole(fd, line)
            _fsync_dir(self.directory)
        except OSError as exc:
            raise SpoolUnavailable(f"cannot write the spool: {exc.strerror or exc}") from exc

    def depth_bytes(self) -> int:
        """Bytes waiting in every spool file of the directory."""
        return self._total(_size)

    def depth(self) -> int:
        """Callbacks waiting in every spool file of the directory."""
        return self._total(_lines)

    def _total(self, measure: Callable[[Path], int | None]) -> int:
        """The sum of ``measure`` over the spool files, None for a file gone since the listing.
        One gone may have been renamed by a drain taking it (its callbacks now under another
        name): the directory is listed again, a few times at most; one drained and removed is not
        listed then."""
        for _ in range(TOTAL_LISTINGS):
            measures = [measure(path) for path in self._files()]
            if None not in measures:
                break
        return sum(value for value in measures if value is not None)

    def unqueued(self) -> int:
        """Callbacks the drain set aside in the unqueued file."""
        return _lines(self.directory / UNQUEUED_NAME) or 0

    def requeue_unqueued(self) -> int:
        """Hand the callbacks set aside in the unqueued file back to the drain (once what refused
        them is fixed): they move, fsync'd, into a spool file that the next drain of any ingress
        process queues (a line refused again is set aside again). Returns how many moved. A crash
        between the two writes leaves a line in both: queued twice at worst, which the workers
        deduplicate, never lost."""
        if not (self.directory / UNQUEUED_NAME).exists():
            return 0
        # The requeued file first, then the unqueued one: the order a drain of the requeued file
        # takes them in (setting a line aside again), so neither waits on the other for good.
        with _locked(self.directory / REQUEUED_NAME, create=True) as target:
            _owned_like(target, self.directory)
            try:
                with _locked(self.directory / UNQUEUED_NAME, create=False) as fd:
                    lines = [line for line in _read_all(fd).splitlines() if line.strip()]
                    if lines:
                        _append_whole(target, b"".join(line + b"\n" for line in lines))
                    # The requeued file may be new: its entry too, before the lines leave.
                    _fsync_dir(self.directory)
                    (self.directory / UNQUEUED_NAME).unlink()
            except FileNotFoundError:
                return 0  # taken meanwhile
        _fsync_dir(self.directory)
        return len(lines)

    def drain(self, accept: Callable[[Callback], None]) -> int:
        """Hand every spooled callback to ``accept`` in order, oldest file first; stop at the first
        failure and keep what is left. Returns how many were accepted."""
        drained = 0
        for path in sorted(self._files(), key=_modified):
            done, finished = self._drain_file(path, accept)
            drained += done
            if not finished:
                break
        return drained

    def _drain_file(self, path: Path, accept: Callable[[Callback], None]) -> tuple[int, bool]:
        with ExitStack() as stack:
            try:
                if DRAINING_MARK in path.name:
                    fd = stack.enter_context(_locked(path, create=False, blocking=False))
                else:
                    path = _take_apart(path)
                    # Held for the moment an append that waited on the old lock needs to see the
                    # file moved, or for the drain of another process that found it renamed
                    fd = stack.enter_context(_locked(path, create=False))
            except (FileNotFoundError, BlockingIOError):
                return 0, True  # gone, or another process is draining it
            except OSError as exc:
                # Not one this process may open (another user's file, 0600: one `mjhook spool
                # requeue` run as root made before it gave its files the directory's owner, say):
                # the files behind it, callbacks answered 200 too, must not wait on it for good.
                log.error(
                    "spool drain skips %s: it cannot be opened (%s: %s); the drain goes on with the others",
                    path.name,
                    type(exc).__name__,
                    exc.strerror or exc,
                )
                return 0, True
            lines = _spooled_lines(_read_all(fd))
            done = 0
            try:
                while done < len(lines) and _hand_over(
                    lines[done][0], accept, source=path.name, set_aside=self._set_aside
                ):
                    done += 1
            finally:
                if 0 < done < len(lines):  # a round that took nothing leaves the file as it is
                    _keep_undrained(
                        path, fd, [line for line, _ in lines[done:]], queued_bytes=lines[done - 1][1]
                    )
            if done < len(lines):
                return done, False
            path.unlink()
            with suppress(FileNotFoundError):
                _tmp_of(path).unlink()  # a rewrite's copy a crash left behind
            return done, True

    def _set_aside(self, line: bytes) -> None:
        """Append ``line`` to the unqueued file, fsync'd (an error stops the drain there)."""
        with _locked(self.directory / UNQUEUED_NAME, create=True) as fd:
            _append_whole(fd, line + b"\n")
        _fsync_dir(self.directory)  # the file may be new: its entry too, before the line leaves

    def _files(self) -> list[Path]:
        return list(self.directory.glob(SPOOL_GLOB)) if self.directory.exists() else []


def _take_apart(path: Path) -> Path:
    """Rename the spool file ``path`` (under its lock: no append is half-way) to a name of its
    own for one drain (:data:`DRAINING_MARK`), the new entry fsync'd; its new path. Raises
    :class:`BlockingIOError` when another process holds it (draining it)."""
    with _locked(path, create=False, blocking=False):
        apart = path.with_name(f"{path.stem}{DRAINING_MARK}{os.getpid()}-{time.time_ns()}{path.suffix}")
        os.rename(path, apart)
        _fsync_dir(path.parent)
    return apart


def _spooled_lines(data: bytes) -> list[tuple[bytes, int]]:
    """The callbacks (non-blank lines) of a spool file's ``data``, each with the offset just past
    its newline (or its end)."""
    lines = []
    end = 0
    for line in data.split(b"\n"):
        end = min(end + len(line) + 1, len(data))
        if line.strip():
            lines.append((line, end))
    return lines


def _lines(path: Path) -> int | None:
    """The callbacks (non-blank lines) in ``path``; None once it is gone (drained, or renamed)."""
    with suppress(FileNotFoundError), path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())
    return None


def _size(path: Path) -> int | None:
    """``path``'s size; None once it is gone (drained, or renamed)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _modified(path: Path) -> float:
    """When ``path`` was last written; removed meanwhile, it sorts first and is found gone."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _hand_over(
    line: bytes, accept: Callable[[Callback], None], *, source: str, set_aside: Callable[[bytes], None]
) -> bool:
    """Pass one spooled line on; False when ``accept`` could not take it (the queue unavailable:
    try again later). An unreadable line cannot become readable: it is logged in full (without
    its ``callBackUrl``) and dropped. One the queue refuses for good (its task's record is
    unusable, an unforeseen error) would stop every drain there, and each try could queue its
    message once more: it is set aside in the unqueued file, with an error in the log, and the
    drain goes on."""
    try:
        callback = Callback.from_message(orjson.loads(line))
    except (orjson.JSONDecodeError, MjhookError, AttributeError):
        # Without its callBackUrl: a line torn by a crash still holds the token the provider echoes.
        text = without_callback_url(line.decode("utf-8", "replace"))
        log.error("dropping an unreadable line of %s: %r", source, text)
        return True
    try:
        accept(callback)
    except QueueUnavailable as exc:
        log.info("spool drain paused: %s", exc)
        return False
    except Exception as exc:
        log.error(
            "setting aside spooled callback %s in %s: it cannot be queued (%s: %s)",
            callback.task_id,
            UNQUEUED_NAME,
            type(exc).__name__,
            exc,
            exc_info=not isinstance(exc, MjhookError),
        )
        set_aside(line)
    return True


class SpoolDrainer:
    """Drains the spool at start-up and then every ``interval_s`` seconds, in a daemon thread
    (whatever a round meets, the next one comes: it alone drains this process's spool)."""

    def __init__(self, spool: Spool, accept: Callable[[Callback], None], *, interval_s: float) -> None:
        self._spool = spool
        self._accept = accept
        self._thread = PeriodicThread(
            self._drain, interval_s=interval_s, name="spool-drainer", what="spool drain", first_at_once=True
        )

    def start(self) -> None:
        """Start draining; a drainer started before (by the ASGI lifespan and by ingress/wsgi.py)
        goes on as it is."""
        self._thread.start()

    def stop(self, *, wait: bool = True) -> None:
        """Stop after the round running now (if any); ``wait``: until then."""
        self._thread.stop(wait=wait)

    def _drain(self) -> None:
        drained = self._spool.drain(self._accept)
        if drained:
            log.info("drained %d spooled callbacks into the queue", drained)


@contextmanager
def _locked(path: Path, *, create: bool, blocking: bool = True) -> Iterator[int]:
    """An fd on ``path`` under an exclusive flock, and still the file at ``path`` once locked."""
    flags = os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0)
    while True:
        fd = os.open(path, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and current.st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)  # replaced or removed while we waited: start over on the new file
        if not create:
            raise FileNotFoundError(path)
    try:
        yield fd
    finally:
        os.close(fd)


def _owned_like(fd: int, directory: Path) -> None:
    """Give the file ``fd`` the owner and group of ``directory`` (the ingress's user, whose
    processes drain it) when it has others and this process may change them: a file made by
    `mjhook spool requeue` run as root, mode 0600, would stay unreadable to every drain."""
    if os.geteuid() != 0:
        return  # only root makes files for another user; anyone else makes their own
    wanted, current = os.stat(directory), os.fstat(fd)
    if (current.st_uid, current.st_gid) != (wanted.st_uid, wanted.st_gid):
        os.fchown(fd, wanted.st_uid, wanted.st_gid)


def _append_whole(fd: int, line: bytes) -> None:
    """Append ``line`` to the locked spool file ``fd`` and fsync it, all of it or nothing.

    A write can take only part of the line (the disk filled up meanwhile, a file size limit):
    the rest is written in further calls, and if the file takes no more, what was written of the
    line is cut off again before the error is raised, so the provider gets a 503 (not a 200 for
    a line the drainer would drop as unreadable) and the next append starts on a clean line. A
    file that does not end with a newline (a write torn by a crash) gets one first, so the torn
    line cannot swallow this one."""
    start = os.lseek(fd, 0, os.SEEK_END)
    if start and os.pread(fd, 1, start - 1) != b"\n":
        line = b"\n" + line
    try:
        written = 0
        while written < len(line):
            done = os.write(fd, line[written:])
            if done <= 0:
                raise OSError(errno.ENOSPC, "the spool file takes no more bytes")
            written += done
        os.fsync(fd)
    except BaseException:
        with suppress(OSError):
            os.ftruncate(fd, start)
            os.fsync(fd)
        raise


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _keep_undrained(path: Path, fd: int, lines: list[bytes], *, queued_bytes: int) -> None:
    """Leave in the spool file ``path``, locked and read through ``fd``, only ``lines``, those a
    paused drain did not queue: the file rewritten with them, or, when the disk has no room for
    the copy, its first ``queued_bytes`` (the lines queued) overwritten with blanks in place.
    Either way the next drain does not queue those again, and takes the file in its turn (its
    modification time kept: the oldest file first). A crash while blanking leaves at worst a line
    queued and torn, which the next drain drops as unreadable."""
    read = os.fstat(fd)
    try:
        _rewrite(path, lines, times_ns=(read.st_atime_ns, read.st_mtime_ns))
    except OSError as exc:
        blank = os.open(path, os.O_WRONLY)  # not O_APPEND, under which pwrite appends
        try:
            if not os.path.sameopenfile(blank, fd):
                # The copy took its place, and only what followed failed (the directory's fsync):
                # blanking it would blank the lines kept
                log.warning("spool file %s rewritten, its directory entry not fsync'd: %s", path.name, exc)
                return
            log.warning("blanking the queued lines of %s in place: cannot rewrite it (%s)", path.name, exc)
            # One blank line in their place (the last of them ends with its newline still)
            for start in range(0, queued_bytes - 1, BLANKING_CHUNK_BYTES):
                os.pwrite(blank, b" " * min(BLANKING_CHUNK_BYTES, queued_bytes - 1 - start), start)
            os.fsync(blank)
            os.utime(blank, ns=(read.st_atime_ns, read.st_mtime_ns))
        finally:
            os.close(blank)


def _tmp_of(path: Path) -> Path:
    """Where :func:`_rewrite` writes the copy that replaces ``path``."""
    return path.with_suffix(".tmp")


def _rewrite(path: Path, lines: list[bytes], *, times_ns: tuple[int, int]) -> None:
    """Replace ``path`` atomically with ``lines`` (the part not drained yet), mode 0600 like every
    spool file: a spooled line may hold the callback's token (its promptJson echoes the URL).
    ``times_ns``: the access and modification times the copy keeps (nanoseconds)."""
    tmp = _tmp_of(path)
    # One a crash left behind may have another mode (or be a link): made anew, never reused.
    with suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(b"".join(line + b"\n" for line in lines))
            handle.flush()
            os.fsync(handle.fileno())
        os.utime(tmp, ns=times_ns)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()  # what the full disk took of it: room for the blanks' fsync
        raise
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _make_dir(directory: Path) -> None:
    """Create ``directory`` and its missing parents, each new entry fsync'd in its parent (a
    callback appended and answered 200 must not vanish with a directory a crash forgot)."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for new in reversed(missing):
        new.mkdir(exist_ok=True)
        _fsync_dir(new.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
