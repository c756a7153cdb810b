"""Process one callback: dedup under a lease, fetch every result file in one concurrent batch,
upload each, write the manifest last, record the outcome."""

from __future__ import annotations

import contextvars
import logging
import re
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future, wait
from typing import Any

import orjson

from shared import storage
from shared.callback import Callback
from shared.clock import utc_iso
from shared.errors import (
    DownloadFailed,
    DownloadRefused,
    FreshLinkPending,
    MjhookError,
    ObjectChanged,
    StorageUnavailable,
    TaskBusy,
    TransientError,
)
from shared.json_limits import DEFAULT_MAX_JSON_DEPTH
from shared.metrics import WorkerMetrics, create_worker_metrics
from shared.printable import shortened
from shared.storage import ObjectStore, Precondition
from shared.submitted import SubmittedTasks
from shared.taskstate import FINAL_STATES, MAX_REASON_CHARS, OUTCOME_FIELD, TaskState, TaskStore
from workers.fetch import ByteBudget, ResultFetcher
from workers.lease import Lease, LeaseManager
from workers.manifest import FileError, ImageEntry, build_manifest, newest_received_at, outcome
from workers.verify import ResultVerifier

log = logging.getLogger(__name__)

#: Most bytes one task's files may add up to, by default (4 GiB).
DEFAULT_MAX_TASK_BYTES = 4 << 30

#: ``{index}.{ext}`` under a task's prefix: the files a previous attempt already stored.
_STORED_FILE = re.compile(r"(\d+)\.([a-z0-9]+)")


#: States of a task whose next move is a queued message's (a task handed back to the polling
#: fallback, then queued again by a poll or a callback).
_AWAITING_A_MESSAGE = frozenset({TaskState.RECEIVED, TaskState.SUBMITTED})
_FINAL_VALUES = frozenset(state.value for state in FINAL_STATES)
#: The states a manifest may give a task that a failure cannot take away.
_OUTCOME_VALUES = frozenset({TaskState.STORED.value, TaskState.PARTIAL.value})


class CallbackProcessor:
    """The worker's whole job for one callback. ``clock`` returns Unix seconds; ``timer`` seconds
    from any origin (it times downloads and uploads for ``metrics``, default: new ones);
    ``max_json_depth`` is the deepest ``promptJson`` parsed into the manifest's ``params``, in levels;
    ``poll_later`` takes over a task whose result ``verifier`` could not check, or whose expired links
    the provider could not renew, on its last attempt; ``downloads_within_s``: seconds (``timer``'s)
    after an attempt starts by which its downloads end, each given up for now (transient) when
    still running or not yet started then, but on the last attempt (None: only each download's
    own bound)."""

    def __init__(
        self,
        *,
        tasks: TaskStore,
        leases: LeaseManager,
        store: ObjectStore,
        fetcher: ResultFetcher,
        pool: Executor,
        clock: Callable[[], float] = time.time,
        metrics: WorkerMetrics | None = None,
        timer: Callable[[], float] = time.perf_counter,
        verifier: ResultVerifier | None = None,
        poll_later: SubmittedTasks | None = None,
        max_task_bytes: int = DEFAULT_MAX_TASK_BYTES,
        max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
        downloads_within_s: float | None = None,
    ) -> None:
        self._tasks = tasks
        self._leases = leases
        self._store = store
        self._fetcher = fetcher
        self._pool = pool
        self._clock = clock
        self._metrics = create_worker_metrics() if metrics is None else metrics
        self._timer = timer
        self._verifier = verifier
        self._poll_later = poll_later
        self._max_task_bytes = max_task_bytes
        self._max_json_depth = max_json_depth
        self._downloads_within_s = downloads_within_s

    def process(self, callback: Callback, *, final_attempt: bool = False) -> TaskState:
        """Bring the task to a final state and return it. Transient trouble raises (the queue
        retries) unless ``final_attempt``, when it is recorded as the file's failure instead."""
        task_id = callback.task_id
        started = self._timer()
        if (known := self._settled_state(callback)) is not None:
            return known
        with self._leases.hold(task_id) as lease:
            # Another worker may have finished the task while we waited for the lease.
            if (known := self._settled_state(callback, lease)) is not None:
                return known
            verification = None
            if self._verifier is not None and callback.succeeded:
                try:
                    callback, verification = self._verifier.verify(callback)
                except TransientError as exc:
                    # Nothing says the result is false: on the last attempt the polling fallback
                    # takes the task over, rather than fail it for the provider's outage.
                    return self._left_to_polling(task_id, exc, final_attempt=final_attempt)
                # A success the provider disowns is a failure report now: it may change no more
                # than one would (never a task that has files).
                if (known := self._settled_state(callback, lease)) is not None:
                    return known
            self._tasks.move(task_id, TaskState.PROCESSING, holder=lease.token)
            # What the task's prefix holds now; its manifest's ETag fences this attempt's manifest.
            listing = self._store.list_etags(storage.task_prefix(task_id))
            manifest_key = storage.manifest_key(task_id)
            found = self._read_manifest(manifest_key) if manifest_key in listing else None
            failed_files: list[str] = []
            earlier: set[str] = set()
            if callback.succeeded:
                try:
                    images, errors, failed_files, earlier = self._store_files(
                        callback, listing, lease, final_attempt=final_attempt, started=started
                    )
                except FreshLinkPending as exc:
                    # Expired links only the provider can renew, and it cannot for now: on the
                    # last attempt the polling fallback takes the task over (the files stored so
                    # far are kept, and not downloaded again), rather than fail those files.
                    return self._left_to_polling(task_id, exc, final_attempt=final_attempt)
            else:
                images, errors = [], []
                # A failure report changes no outcome a manifest describes (the task's record
                # may have expired since), and leaves no file an unfinished attempt stored (one
                # handed to the polling fallback, say) beside its failed manifest.
                if (described := self._outcome_in_bucket(task_id, listing, found, lease)) is not None:
                    return described
                earlier = set(_file_keys(task_id, listing))
            status = outcome(callback, images, errors)
            if callback.succeeded and not callback.result_urls:
                errors.append(FileError(None, None, "the callback reported success but listed no URLs"))
            manifest = build_manifest(
                callback,
                status=status,
                images=images,
                errors=errors,
                completed_at=utc_iso(self._clock()),
                max_json_depth=self._max_json_depth,
            )
            if verification is not None:
                manifest["verification"] = verification.to_manifest()
            if manifest_key in listing:
                manifest["receivedAt"] = newest_received_at(callback.received_at, found)
            # A worker whose lease lapsed (Redis away for longer than its TTL) or was taken may
            # have been overtaken: the new holder's manifest and state must stand, so the manifest
            # waits for Redis to confirm the lease is still ours, and the state moves only while
            # Redis holds our token, checked in the same call (TaskBusy: retried later). A manifest
            # write that outlives the lease after that confirmation is fenced by the store: it
            # replaces only the manifest this attempt found at its start.
            lease.confirm()
            self._write_manifest(manifest_key, manifest, listing.get(manifest_key))
            # After the manifest: a crash in between leaves an object it does not list (removed
            # by the retry), never a manifest listing a removed file.
            self._remove_undescribed_files(task_id, earlier - {image.key for image in images}, lease)
            reason = _reason(callback, errors)
            self._tasks.move(task_id, status, holder=lease.token, code=str(callback.code), reason=reason)
            self._metrics.tasks.labels(status.value).inc()
            for error_class in failed_files:
                self._metrics.files_failed.labels(error_class).inc()
            log.info("task %s %s (%d stored, %d failed)", task_id, status.value, len(images), len(errors))
            return status

    def _left_to_polling(self, task_id: str, exc: TransientError, *, final_attempt: bool) -> TaskState:
        """``submitted`` again, for the polling fallback to queue the task's result once the
        provider answers (:meth:`SubmittedTasks.wait_again`); ``exc`` raised instead when this is
        not the last attempt (the queue retries), without a fallback, or for a task that moved on."""
        if not final_attempt or self._poll_later is None or not self._poll_later.wait_again(task_id):
            raise exc
        log.warning("task %s left to the polling fallback: %s", task_id, exc)
        return TaskState.SUBMITTED

    def record_failure(self, callback: Callback, reason: str) -> bool:
        """Make the bucket agree with a task the queue or the polling fallback gave up on (its
        state is ``failed`` now, with the reason it recorded, else ``reason``): its presence says
        the task is over, for whoever watches the bucket. A manifest that describes what the
        bucket holds of the task stands (the provider's own failure report, say), and a ``stored``
        or ``partial`` one is how the task ended: its state moves there (an attempt that wrote it
        and failed before its last step, the state's move, was given up). Else the task
        gets a failed manifest describing the files stored from the URLs ``callback`` lists, and
        the task's other files (an earlier result's, which a later one began to replace) are
        removed after it: never a manifest describing bytes no longer stored, nor a stored file
        no manifest describes. Done under the task's lease (a worker that took the task meanwhile
        settles it instead), and only while the task is still ``failed``. False when object
        storage is down (often why the queue gave up): the task is without a manifest for now."""
        task_id = callback.task_id
        try:
            with self._leases.hold(task_id) as lease:
                record = self._tasks.get(task_id)
                if record is None or record.state is not TaskState.FAILED:
                    return True  # settled otherwise meanwhile
                self._write_failure(callback, record.fields.get("reason", "") or reason, lease)
        except TaskBusy:
            log.info("task %s: a worker took it meanwhile; it settles it", task_id)
        except ObjectChanged:
            log.info("task %s: its manifest was written meanwhile; it stands", task_id)
        except StorageUnavailable as exc:
            log.warning("task %s failed without a manifest for now: %s", task_id, exc)
            return False
        return True

    def agree_with_outcome(self, callback: Callback) -> bool:
        """Make the bucket agree with the outcome (``stored``, ``partial``) a task went back to when
        the queue gave up on a later attempt of it (:meth:`TaskStore.give_up`): that attempt may
        have stored a file at an index the outcome's manifest lists as failed (a link that works
        now) and died before its manifest. Such files, which no manifest describes, are removed;
        the manifest stands. Done under the task's lease (a worker that took the task meanwhile
        settles it instead), only while the task is still in that outcome, and only by a manifest
        this code wrote (any other leaves the bucket as it is). A manifest that then describes the
        bucket and says another outcome is how the task ended: that attempt wrote it and failed
        before the state's move (a partial task whose files all came this time: stored). False
        when object storage is down: files no manifest describes may be left for now."""
        task_id = callback.task_id
        try:
            with self._leases.hold(task_id) as lease:
                record = self._tasks.get(task_id)
                if record is None or record.state not in (TaskState.STORED, TaskState.PARTIAL):
                    return True
                agreed = self._agree_with_manifest(task_id, lease)
                if agreed is not None:
                    manifest, described, stored = agreed
                    if self._describes_bucket(described, stored & described.keys()):
                        self._adopt_outcome(task_id, manifest, lease, unless=record.state)
        except TaskBusy:
            log.info("task %s: a worker took it meanwhile; it settles it", task_id)
        except StorageUnavailable as exc:
            log.warning("task %s: files its manifest does not describe may be left for now: %s", task_id, exc)
            return False
        return True

    def _agree_with_manifest(
        self, task_id: str, lease: Lease
    ) -> tuple[dict[str, Any], dict[str, object], set[str]] | None:
        """Remove the task's files its manifest does not describe, under ``lease``; the manifest,
        what it describes (:func:`_described`) and the files that were stored, or None (nothing
        removed) when there is no manifest this code wrote."""
        listing = self._store.list_etags(storage.task_prefix(task_id))
        manifest = self._read_manifest(storage.manifest_key(task_id))
        described = _described(manifest)
        if manifest is None or described is None:
            return None
        stored = set(_file_keys(task_id, listing))
        self._remove_undescribed_files(task_id, stored - described.keys(), lease)
        return manifest, described, stored

    def _outcome_in_bucket(
        self, task_id: str, listing: Mapping[str, str], manifest: dict[str, Any] | None, lease: Lease
    ) -> TaskState | None:
        """The outcome (``stored``, ``partial``) the task's ``manifest`` (the one ``listing`` found)
        says, when the bucket holds every file it describes as it describes it: the task moves
        there, and files an unfinished later attempt added beside them are removed. None
        otherwise."""
        described = _described(manifest)
        if manifest is None or described is None or manifest.get("status") not in _OUTCOME_VALUES:
            return None
        stored = set(_file_keys(task_id, listing))
        if not described.keys() <= stored or not self._describes_bucket(described, set(described)):
            return None
        self._remove_undescribed_files(task_id, stored - described.keys(), lease)
        self._adopt_outcome(task_id, manifest, lease)
        return TaskState(manifest["status"])

    def _read_manifest(self, manifest_key: str) -> dict[str, Any] | None:
        """The manifest at ``manifest_key``; None when there is none, or it is no JSON object."""
        try:
            manifest = self._store.get_json(manifest_key)
        except orjson.JSONDecodeError:
            return None
        return manifest if isinstance(manifest, dict) else None

    def _write_failure(self, callback: Callback, reason: str, lease: Lease) -> None:
        listing = self._store.list_etags(storage.task_prefix(callback.task_id))
        manifest_key = storage.manifest_key(callback.task_id)
        stored = set(_file_keys(callback.task_id, listing))
        manifest = self._read_manifest(manifest_key) if manifest_key in listing else None
        if self._outcome_in_bucket(callback.task_id, listing, manifest, lease) is not None:
            return  # files a later attempt added removed: its polling fallback gave up, say
        if manifest is not None and self._describes_bucket(_described(manifest), stored):
            return  # a failed manifest describing the bucket stands
        found, _, _ = self._already_stored(callback, listing)
        earlier = manifest
        manifest = build_manifest(
            callback,
            status=TaskState.FAILED,
            images=list(found.values()),
            errors=[FileError(None, None, reason)],
            completed_at=utc_iso(self._clock()),
            max_json_depth=self._max_json_depth,
        )
        manifest["receivedAt"] = newest_received_at(callback.received_at, earlier)
        lease.confirm()
        self._store.put_json(manifest_key, manifest, precondition=Precondition(listing.get(manifest_key)))
        described = {image.key for image in found.values()}
        self._remove_undescribed_files(callback.task_id, stored - described, lease)
        log.info("task %s: wrote the manifest of its failure", callback.task_id)

    def _adopt_outcome(
        self, task_id: str, manifest: Mapping[str, Any], lease: Lease, *, unless: TaskState | None = None
    ) -> None:
        """Move the task to the outcome its manifest (describing the bucket) says, when that is
        ``stored`` or ``partial`` (and not ``unless``, the state it has), with the manifest's code
        and the reasons of its errors."""
        status = manifest.get("status")
        if status not in _OUTCOME_VALUES or status == unless:
            return
        errors = manifest.get("errors")
        reasons = (
            [str(error.get("reason")) for error in errors if isinstance(error, dict)]
            if isinstance(errors, list)
            else []
        )
        self._tasks.move(
            task_id,
            TaskState(status),
            holder=lease.token,
            code=str(manifest.get("code", "")),
            reason=shortened("; ".join(reasons), MAX_REASON_CHARS),
        )
        log.warning(
            "task %s: its manifest says %s, and the bucket holds what it describes: it is %s",
            task_id,
            status,
            status,
        )

    def _describes_bucket(self, described: Mapping[str, object] | None, stored: set[str]) -> bool:
        """Whether the task's manifest, whose files are ``described`` (:func:`_described`), lists
        exactly the files ``stored``, each with the sha256 recorded on the object (a manifest of
        another shape describes nothing)."""
        if described is None or set(described) != stored:
            return False
        for key, sha256 in described.items():
            info = self._store.stat(key)
            if info is None or info.sha256 != sha256:
                return False
        return True

    def _write_manifest(self, key: str, manifest: dict[str, object], found_etag: str | None) -> None:
        """Write the manifest only over the one found at the start (or where there was none):
        another worker's manifest written meanwhile stands, and this attempt is retried later."""
        try:
            self._store.put_json(key, manifest, precondition=Precondition(found_etag))
        except ObjectChanged as exc:
            raise TaskBusy(f"{key} was written by another worker meanwhile: {exc}") from exc

    def _settled_state(self, callback: Callback, lease: Lease | None = None) -> TaskState | None:
        """The state to keep when this callback changes nothing: a stored task stays stored, and a
        failure report never overwrites a task that has an outcome, also while an attempt of a
        later success is pending (the task is ``processing`` then, its outcome kept beside). Such a
        callback is counted as a duplicate. A task waiting for a message with an outcome kept goes
        back to it only under the task's ``lease`` (None before it is taken: the caller takes it
        and asks again)."""
        record = self._tasks.get(callback.task_id)
        if record is None:
            return None
        outcome = record.fields.get(OUTCOME_FIELD, "")
        going_back = record.state in _AWAITING_A_MESSAGE and outcome in _FINAL_VALUES
        if not callback.succeeded and going_back and lease is None:
            return None
        if record.state is TaskState.STORED:
            log.info("task %s already stored: duplicate callback ignored", callback.task_id)
            self._metrics.tasks.labels("duplicate").inc()
            return record.state
        if not callback.succeeded and (record.state in FINAL_STATES or outcome):
            log.info(
                "task %s is %s (outcome %s): failure report ignored",
                callback.task_id,
                record.state.value,
                outcome or record.state.value,
            )
            self._metrics.tasks.labels("duplicate").inc()
            if going_back and lease is not None:
                return self._back_to_outcome(callback.task_id, record.state, TaskState(outcome), lease)
            return record.state
        return None

    def _back_to_outcome(self, task_id: str, state: TaskState, outcome: TaskState, lease: Lease) -> TaskState:
        """Move a task waiting for a message (handed back to the polling fallback, then queued
        again) back to the ``outcome`` it kept, once that message turned out to change nothing:
        no other message, poll or look would ever move it. The bucket first holds only what the
        outcome's manifest describes (the attempt handed back may have stored a file it does not
        list). One that moved on meanwhile keeps its state."""
        self._agree_with_manifest(task_id, lease)
        before = self._tasks.move_from(task_id, state, outcome)
        if before is not state:
            return before or outcome
        log.info("task %s back to %s", task_id, outcome.value)
        return outcome

    def _store_files(
        self,
        callback: Callback,
        listing: Mapping[str, str],
        lease: Lease,
        *,
        final_attempt: bool,
        started: float,
    ) -> tuple[list[ImageEntry], list[FileError], list[str], set[str]]:
        """The files stored, those given up, the error class of each given up, and the keys of the
        task's files stored before this attempt (``listing``: the task's objects then; ``started``:
        when the attempt started, ``timer``'s seconds)."""
        already, replaced, earlier = self._already_stored(callback, listing)
        if replaced:
            # These downloads overwrite files the manifest of an earlier outcome may describe: from
            # now on, a give-up must fail the task, not bring back that manifest's outcome.
            self._tasks.forget_outcome(callback.task_id, holder=lease.token)
        todo = [(i, url) for i, url in enumerate(callback.result_urls) if i not in already]
        # On the last attempt, expired links the provider cannot renew now leave the task to the
        # polling fallback (a few times at most), instead of failing those files.
        links_may_wait = (
            final_attempt
            and self._poll_later is not None
            and self._poll_later.may_wait_again(callback.task_id)
        )
        budget = ByteBudget(max(0, self._max_task_bytes - sum(image.size for image in already.values())))
        # Not on the last attempt: a file given up there for want of time (queued behind other
        # tasks' downloads, say) would be recorded failed, its link never tried.
        within_s = None if final_attempt else self._downloads_within_s
        deadline = None if within_s is None else started + within_s
        # Each download runs in a copy of this context, so its log lines carry the taskId too.
        futures = [
            self._pool.submit(
                contextvars.copy_context().run,
                self._store_one,
                callback.task_id,
                i,
                url,
                budget,
                lease,
                deadline,
            )
            for i, url in todo
        ]
        images = list(already.values())
        errors: list[FileError] = []
        failed: list[str] = []
        transient: list[DownloadFailed] = []
        try:
            for (index, url), future in zip(todo, futures, strict=True):
                try:
                    images.append(future.result())
                except DownloadRefused as exc:
                    errors.append(FileError(index, url, str(exc)))
                    failed.append(type(exc).__name__)
                except DownloadFailed as exc:
                    if not final_attempt or (isinstance(exc, FreshLinkPending) and links_may_wait):
                        transient.append(exc)
                    errors.append(FileError(index, url, f"gave up after retries: {exc}"))
                    failed.append(type(exc).__name__)
                except MjhookError:
                    raise
                except Exception as exc:  # the backstop: see _unexpected_error
                    error = _unexpected_error(callback.task_id, index, url, exc)
                    if not final_attempt:
                        transient.append(DownloadFailed(error.reason))
                    errors.append(error)
                    failed.append(type(exc).__name__)
        finally:
            # An attempt that raises leaves no upload running: its lease is released next, and a
            # write landing after that could replace the next holder's file.
            for future in futures:
                future.cancel()
            _wait_through_interrupts(futures)
        if transient:
            # Fresh links alone wait for the provider (the polling fallback, on the last attempt).
            pending_links = all(isinstance(exc, FreshLinkPending) for exc in transient)
            failed_for_now = (FreshLinkPending if pending_links else DownloadFailed)(
                f"{len(transient)} of {len(todo)} files of {callback.task_id} failed for now: {transient[0]}"
            )
            # The retry waits for the longest Retry-After a fresh link's request was answered.
            failed_for_now.retry_after = max(
                (exc.retry_after for exc in transient if exc.retry_after is not None), default=None
            )
            raise failed_for_now
        return images, errors, failed, earlier

    def _store_one(
        self, task_id: str, index: int, url: str, budget: ByteBudget, lease: Lease, deadline: float | None
    ) -> ImageEntry:
        """Download ``url`` and store it as file ``index`` of the task; :class:`TaskBusy` instead
        when ``lease`` was lost meanwhile (the key may be the new holder's file by now). The
        download ends by ``deadline`` (``timer``'s seconds; None: its own bound only)."""
        started = self._timer()
        left = None if deadline is None else deadline - started
        fetched = self._fetcher.fetch(url, budget=budget, max_seconds=left)
        self._metrics.download_seconds.observe(self._timer() - started)
        try:
            key = storage.file_key(task_id, index, fetched.media.ext)
            lease.check()
            started = self._timer()
            self._store.put_file(
                key,
                fetched.body,
                size=fetched.size,
                content_type=fetched.media.content_type,
                sha256=fetched.sha256,
                source_url=url,
            )
            self._metrics.upload_seconds.observe(self._timer() - started)
            self._metrics.files_stored.inc()
            self._metrics.bytes_stored.inc(fetched.size)
        finally:
            fetched.close()
        return ImageEntry(index, url, key, fetched.size, fetched.sha256, fetched.media.content_type)

    def _remove_undescribed_files(self, task_id: str, keys: set[str], lease: Lease) -> None:
        """Delete ``keys``: file objects stored before this attempt that its manifest does not
        describe (an earlier result's file this one replaced with one of another type, or whose
        replacement failed, or at an index past this callback's URLs), so the bucket holds what
        the manifest lists. What was stored before is what this attempt listed at its start: no
        other worker writes while it holds the lease. ``lease`` is checked before each deletion,
        as before each upload (the key may be the new holder's file by now)."""
        for key in sorted(keys):
            lease.check()
            self._store.remove(key)
            log.info("task %s: removed %s, which the new manifest does not describe", task_id, key)

    def _already_stored(
        self, callback: Callback, listing: Mapping[str, str]
    ) -> tuple[dict[int, ImageEntry], set[int], set[str]]:
        """Files an earlier, interrupted attempt stored completely (their sha256 recorded) from the
        URL this callback lists at their index, and the indices of the other files stored at an
        index it lists, which are fetched again to replace them: an earlier callback of the task may
        have listed other results, and a file stored before sources were recorded cannot prove
        where it came from. Also the keys of every file of the task stored so far."""
        stored = _file_keys(callback.task_id, listing)
        found: dict[int, ImageEntry] = {}
        replaced: set[int] = set()
        for key, index in stored.items():
            if index >= len(callback.result_urls):
                continue
            url = callback.result_urls[index]
            info = self._store.stat(key)
            if info is None:
                continue
            if not info.sha256 or not info.came_from(url):
                replaced.add(index)
                log.info(
                    "task %s: %s did not come from the URL listed now; fetching #%d again",
                    callback.task_id,
                    key,
                    index,
                )
                continue
            found[index] = ImageEntry(index, url, key, info.size, info.sha256, info.content_type)
        return found, replaced - found.keys(), set(stored)


def _described(manifest: Mapping[str, Any] | None) -> dict[str, object] | None:
    """Key -> sha256 of each file ``manifest`` lists; None for a manifest of another shape, or none."""
    if manifest is None:
        return None
    try:
        return {str(image["key"]): image["sha256"] for image in manifest["images"]}
    except (TypeError, KeyError):
        return None


def _file_keys(task_id: str, listing: Mapping[str, str]) -> dict[str, int]:
    """The keys of the task's files (``{index}.{ext}`` under its prefix) in ``listing``, with
    their index."""
    prefix = storage.task_prefix(task_id)
    return {
        key: int(match[1])
        for key in listing
        if (match := _STORED_FILE.fullmatch(key[len(prefix) :])) is not None
    }


def _wait_through_interrupts(futures: list[Future[Any]]) -> None:
    """Wait until every one of ``futures`` has ended, even when an exception raised into this
    thread lands in the wait (dramatiq's time limit, or its shutdown, fire where they fire): it
    is raised once they have all ended, so no upload of the attempt outlives it."""
    interrupted: BaseException | None = None
    while True:
        try:
            wait(futures)
        except BaseException as exc:  # raised again below, once the wait is over
            interrupted = exc
            continue
        break
    if interrupted is not None:
        raise interrupted


def _unexpected_error(task_id: str, index: int, url: str, exc: Exception) -> FileError:
    """File ``index``'s error for an exception outside our error tree (a bug, or an input nothing
    foresaw), logged with its traceback. Retried like a transient failure (it may be a glitch no
    one mapped), and on the final attempt recorded as the file's error: letting it escape would
    leave even the final attempt without a manifest and the task's other files unrecorded."""
    log.error("task %s: file #%d failed unexpectedly", task_id, index, exc_info=exc)
    return FileError(index, url, f"unexpected error: {type(exc).__name__}: {exc}")


def _reason(callback: Callback, errors: list[FileError]) -> str:
    """The task's reason as recorded in Redis, shortened to MAX_REASON_CHARS: the task list returns
    every reason at each dashboard refresh; the whole of it is in the manifest."""
    if not callback.succeeded:
        reason = callback.msg or f"provider reported code {callback.code}"
    else:
        reason = "; ".join(f"#{e.index}: {e.reason}" if e.index is not None else e.reason for e in errors)
    return shortened(reason, MAX_REASON_CHARS)
