"""The worker's processing of one callback, against real Redis, SeaweedFS and a file server."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import nullcontext
from typing import IO, Any

import orjson
import pytest
import redis
from dramatiq.middleware import TimeLimitExceeded
from PIL import Image

from shared import keys
from shared.errors import (
    DownloadFailed,
    ProviderRefused,
    ProviderUnavailable,
    StorageUnavailable,
    TaskBusy,
)
from shared.metrics import WorkerMetrics, create_worker_metrics
from shared.provider import TaskRecordInfo
from shared.settings import Settings
from shared.storage import (
    SOURCE_URL_SHA256_META,
    ObjectStore,
    Precondition,
    create_object_store,
    source_url_digest,
)
from shared.submitted import SubmittedTasks
from shared.taskstate import OUTCOME_FIELD, TaskState
from tests.shared.test_storage import NoConditionsPoolManager
from tests.support.pipeline import nested_prompt_json
from tests.support.procs import free_port
from tests.support.servers import FileServer, S3Server, png_bytes
from tests.support.worker_harness import PROMPT, Harness, callback
from workers import pipeline
from workers.fetch import ByteBudget, FetchedFile, FetchLimits, ResultFetcher, create_http_client
from workers.lease import LeaseManager
from workers.pipeline import CallbackProcessor
from workers.runtime import build_parts
from workers.verify import ResultVerifier


def serve_pngs(files: FileServer, count: int, *, prefix: str = "/img") -> tuple[list[str], list[bytes]]:
    images = [png_bytes(seed) for seed in range(count)]
    urls = [files.add(f"{prefix}{i}.png", image) for i, image in enumerate(images)]
    return urls, images


class WriteRecordingStore(ObjectStore):
    """A worker's own store that notes, in order, when each of its writes (a file, a manifest, a
    removal) begins and when it has ended: ``("begin", key)``, ``("end", key)``."""

    def __init__(self, settings: Settings) -> None:
        store = create_object_store(settings)
        super().__init__(store._client, store.bucket)
        self.events: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def _note(self, event: str, key: str) -> None:
        with self._lock:  # files are uploaded from the download threads, at once
            self.events.append((event, key))

    def put_file(self, key: str, data: IO[bytes], **kwargs: Any) -> None:
        self._note("begin", key)
        super().put_file(key, data, **kwargs)
        self._note("end", key)

    def put_json(self, key: str, document: object, *, precondition: Precondition | None = None) -> None:
        self._note("begin", key)
        super().put_json(key, document, precondition=precondition)
        self._note("end", key)

    def remove(self, key: str) -> None:
        self._note("begin", key)
        super().remove(key)
        self._note("end", key)


def test_every_file_is_stored_byte_for_byte_with_the_manifest_last(harness: Harness) -> None:
    urls, images = serve_pngs(harness.files, 4)
    store = WriteRecordingStore(harness.settings)
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert processor(harness, pool, store=store).process(callback(urls)) is TaskState.STORED
    manifest = harness.manifest("task-1")
    assert manifest["status"] == "stored"
    assert manifest["params"] == orjson.loads(PROMPT)
    assert manifest["prompt"] == "a beautiful landscape"
    assert manifest["errors"] == []
    for entry, url, image in zip(manifest["images"], urls, images, strict=True):  # type: ignore[call-overload]
        assert entry["sourceUrl"] == url
        assert entry["key"] == f"tasks/task-1/{entry['index']}.png"
        assert entry["sha256"] == hashlib.sha256(image).hexdigest()
        assert entry["size"] == len(image)
        assert entry["contentType"] == "image/png"
        assert harness.object_bytes(entry["key"]) == image
        info = harness.store.stat(entry["key"])
        assert info is not None
        assert info.sha256 == entry["sha256"]
        assert info.content_type == "image/png"
    assert harness.tasks.get("task-1").state is TaskState.STORED  # type: ignore[union-attr]
    # And the manifest's one write began once every file's write had ended
    manifest_key = "tasks/task-1/manifest.json"
    file_writes = [(event, entry["key"]) for entry in manifest["images"] for event in ("begin", "end")]  # type: ignore[attr-defined]
    assert store.events[-2:] == [("begin", manifest_key), ("end", manifest_key)]
    assert sorted(store.events[:-2]) == sorted(file_writes)


def test_a_duplicate_of_a_stored_task_downloads_nothing(harness: Harness) -> None:
    # Given a stored task
    urls, _ = serve_pngs(harness.files, 2)
    assert harness.process(callback(urls)) is TaskState.STORED
    hits = harness.files.hits
    objects = harness.store.list_etags("tasks/task-1/")
    manifest = harness.object_bytes("tasks/task-1/manifest.json")
    # When a duplicate of its callback is processed
    store = WriteRecordingStore(harness.settings)
    with ThreadPoolExecutor(max_workers=2) as pool:
        assert processor(harness, pool, store=store).process(callback(urls)) is TaskState.STORED
    # Then nothing is downloaded, nothing written: neither a file again nor the manifest, which
    # keeps its bytes and its ETag
    assert harness.files.hits == hits
    assert store.events == []
    assert harness.object_bytes("tasks/task-1/manifest.json") == manifest
    assert harness.store.list_etags("tasks/task-1/") == objects


def test_a_file_whose_url_names_another_type_is_stored_under_its_sniffed_type(harness: Harness) -> None:
    """Given a PNG served at a URL ending ``.jpg``, and another at a URL without an extension
    When the task is processed
    Then both are stored as ``.png``, typed image/png: the bytes decide, not the URL."""
    images = [png_bytes(1), png_bytes(2)]
    urls = [harness.files.add("/cdn/photo.jpg", images[0]), harness.files.add("/render", images[1])]
    assert harness.process(callback(urls)) is TaskState.STORED
    manifest = harness.manifest("task-1")
    assert [image["key"] for image in manifest["images"]] == ["tasks/task-1/0.png", "tasks/task-1/1.png"]  # type: ignore[attr-defined]
    assert [image["contentType"] for image in manifest["images"]] == ["image/png", "image/png"]  # type: ignore[attr-defined]
    assert [harness.object_bytes(f"tasks/task-1/{i}.png") for i in range(2)] == images
    assert set(harness.store.list_keys("tasks/task-1/")) == {
        "tasks/task-1/0.png",
        "tasks/task-1/1.png",
        "tasks/task-1/manifest.json",
    }


def test_a_failure_is_recorded_and_a_later_success_still_processed(harness: Harness) -> None:
    assert harness.process(callback([], code=500)) is TaskState.FAILED
    manifest = harness.manifest("task-1")
    assert manifest["status"] == "failed"
    assert manifest["msg"] == "generation failed"
    assert harness.tasks.get("task-1").fields["reason"] == "generation failed"  # type: ignore[union-attr]
    urls, _ = serve_pngs(harness.files, 1)
    assert harness.process(callback(urls)) is TaskState.STORED
    assert harness.manifest("task-1")["status"] == "stored"


def test_a_failure_report_never_overwrites_stored_files(harness: Harness) -> None:
    urls, _ = serve_pngs(harness.files, 1)
    harness.process(callback(urls))
    assert harness.process(callback([], code=500)) is TaskState.STORED
    assert harness.manifest("task-1")["status"] == "stored"


def test_malformed_prompt_json_is_kept_raw_and_processing_goes_on(harness: Harness) -> None:
    urls, _ = serve_pngs(harness.files, 1)
    assert harness.process(callback(urls, prompt="{broken")) is TaskState.STORED
    manifest = harness.manifest("task-1")
    assert manifest["promptJson"] == "{broken"
    assert manifest["params"] is None


@pytest.mark.parametrize(("max_json_depth", "depth", "parsed"), [(8, 20, False), (64, 40, True)])
def test_the_configured_json_depth_decides_whether_prompt_json_is_parsed(
    harness: Harness, max_json_depth: int, depth: int, parsed: bool
) -> None:
    # Given workers built from settings with MJHOOK_MAX_JSON_DEPTH=`max_json_depth` (the default,
    # 32, would decide both cases the other way round), and a promptJson `depth` levels deep
    settings = harness.settings.model_copy(update={"max_json_depth": max_json_depth})
    parts = build_parts(settings, metrics=create_worker_metrics())
    prompt_json = nested_prompt_json(depth)
    urls, _ = serve_pngs(harness.files, 1)
    # When the callback is processed
    assert parts.processor.process(callback(urls, prompt=prompt_json)) is TaskState.STORED
    # Then the manifest keeps it raw, and parses it only within the configured depth
    manifest = harness.manifest("task-1")
    assert manifest["promptJson"] == prompt_json
    assert manifest["params"] == (orjson.loads(prompt_json) if parsed else None)
    assert manifest["prompt"] == ("a fox" if parsed else None)


def test_non_media_and_missing_files_make_a_partial_task_with_reasons(harness: Harness) -> None:
    urls, _ = serve_pngs(harness.files, 2)
    urls.append(harness.files.add("/error.html", b"<html>Forbidden</html>", content_type="text/html"))
    urls.append(harness.files.url("/missing.png"))
    urls.append("http://xn--zz.example/a.png")  # a host that is no valid IDNA name
    assert harness.process(callback(urls)) is TaskState.PARTIAL
    manifest = harness.manifest("task-1")
    assert [image["index"] for image in manifest["images"]] == [0, 1]  # type: ignore[attr-defined]
    reasons = {error["index"]: error["reason"] for error in manifest["errors"]}  # type: ignore[attr-defined]
    assert "not an image or video" in reasons[2]
    assert reasons[3] == "HTTP 404"
    assert "unusable URL" in reasons[4]
    assert harness.store.list_keys("tasks/task-1/") == [
        "tasks/task-1/0.png",
        "tasks/task-1/1.png",
        "tasks/task-1/manifest.json",
    ]


def test_an_older_delivery_processed_after_a_newer_one_keeps_the_newer_received_at(harness: Harness) -> None:
    """Given a partial task whose duplicate (received at 00:00:05) was processed first
    When the first callback (received at 00:00:00; its retry was due later) is processed again
    Then the manifest keeps the newer receivedAt: a task's manifest never goes back in time, and a
    reader waiting for the manifest of the last callback it sent (mjhook simulate load) found it
    older and reported it outdated."""
    urls, _ = serve_pngs(harness.files, 1)
    urls.append(harness.files.url("/missing.png"))
    first = callback(urls)
    duplicate = dataclasses.replace(first, received_at="2026-11-25T00:00:05.000Z")
    assert harness.process(duplicate) is TaskState.PARTIAL

    assert harness.process(first) is TaskState.PARTIAL

    assert harness.manifest("task-1")["receivedAt"] == "2026-11-25T00:00:05.000Z"
    # And a newer delivery's manifest says its own time
    later = dataclasses.replace(first, received_at="2026-11-25T00:00:09.000Z")
    assert harness.process(later) is TaskState.PARTIAL
    assert harness.manifest("task-1")["receivedAt"] == "2026-11-25T00:00:09.000Z"


def test_a_failure_manifest_replacing_a_newer_deliverys_keeps_its_received_at(harness: Harness) -> None:
    """Given a partial task whose duplicate (received at 00:00:05) was processed, its manifest no
    longer describing the bucket (a file of it gone), and the task failed by a give-up of the
    first callback's message (received at 00:00:00)
    When the give-up's failure manifest is written
    Then it keeps the newer receivedAt, as any manifest replacing another does."""
    urls, _ = serve_pngs(harness.files, 1)
    urls.append(harness.files.url("/missing.png"))
    first = callback(urls)
    duplicate = dataclasses.replace(first, received_at="2026-11-25T00:00:05.000Z")
    assert harness.process(duplicate) is TaskState.PARTIAL
    harness.store.remove("tasks/task-1/0.png")
    harness.tasks.move("task-1", TaskState.FAILED, reason="gave up: DownloadFailed: reset")

    assert harness.parts.processor.record_failure(first, "gave up")  # type: ignore[attr-defined]

    manifest = harness.manifest("task-1")
    assert (manifest["status"], manifest["receivedAt"]) == ("failed", "2026-11-25T00:00:05.000Z")


def test_a_transient_failure_retries_and_fetches_only_what_is_missing(harness: Harness) -> None:
    urls, images = serve_pngs(harness.files, 3)
    harness.files.add("/img2.png", b"busy", status=503, content_type="text/plain")
    with pytest.raises(DownloadFailed):
        harness.process(callback(urls))
    assert harness.store.get_bytes("tasks/task-1/manifest.json") is None
    # The file comes back; the retry downloads it and only it.
    harness.files.add("/img2.png", images[2])
    assert harness.process(callback(urls)) is TaskState.STORED
    hits = harness.files.hits
    assert (hits["/img0.png"], hits["/img1.png"], hits["/img2.png"]) == (1, 1, 2)
    assert harness.object_bytes("tasks/task-1/2.png") == images[2]


def test_a_later_success_with_other_urls_replaces_every_file_of_the_earlier_one(harness: Harness) -> None:
    # Given callback A of a task, which ended partial: two files stored, the third gone
    a_urls = [harness.files.add(f"/a{i}.png", png_bytes(i)) for i in range(2)]
    a_urls.append(harness.files.url("/a2.png"))
    assert harness.process(callback(a_urls)) is TaskState.PARTIAL
    # When a success callback B for the same task lists other files
    b_images = [png_bytes(seed) for seed in (10, 11, 12)]
    b_urls = [harness.files.add(f"/b{i}.png", image) for i, image in enumerate(b_images)]
    assert harness.process(callback(b_urls)) is TaskState.STORED
    # Then every index holds B's bytes, named with B's URL: none of A's files was reused
    manifest = harness.manifest("task-1")
    for entry, url, image in zip(manifest["images"], b_urls, b_images, strict=True):  # type: ignore[call-overload]
        assert entry["sourceUrl"] == url
        assert entry["sha256"] == hashlib.sha256(image).hexdigest()
        assert harness.object_bytes(entry["key"]) == image
    hits = harness.files.hits
    assert [hits[f"/b{i}.png"] for i in range(3)] == [1, 1, 1]


def test_a_file_stored_without_its_source_url_is_fetched_again(harness: Harness) -> None:
    # Given a file an attempt stored before sources were recorded: its sha256, no source URL
    urls, images = serve_pngs(harness.files, 1)
    old = png_bytes(7)
    harness.store.put_file(
        "tasks/task-1/0.png",
        io.BytesIO(old),
        size=len(old),
        content_type="image/png",
        sha256=hashlib.sha256(old).hexdigest(),
    )
    # When the task is processed
    assert harness.process(callback(urls)) is TaskState.STORED
    # Then the file is downloaded again and replaces it
    assert harness.files.hits["/img0.png"] == 1
    assert harness.object_bytes("tasks/task-1/0.png") == images[0]
    assert harness.manifest("task-1")["images"][0]["sha256"] == hashlib.sha256(images[0]).hexdigest()  # type: ignore[index]


def test_a_stored_file_without_its_sha256_is_fetched_again_even_from_the_same_url(
    harness: Harness, s3_server: S3Server, s3_bucket: str
) -> None:
    # Given a file stored from the URL the callback lists, but without its sha256 recorded:
    # nothing says it holds the bytes that were downloaded
    urls, images = serve_pngs(harness.files, 1)
    old = png_bytes(7)
    s3_server.client().put_object(
        s3_bucket,
        "tasks/task-1/0.png",
        io.BytesIO(old),
        len(old),
        content_type="image/png",
        metadata={SOURCE_URL_SHA256_META: source_url_digest(urls[0])},
    )
    # When the task is processed
    assert harness.process(callback(urls)) is TaskState.STORED
    # Then the file is downloaded again and replaces it, its sha256 recorded in the manifest
    assert harness.files.hits["/img0.png"] == 1
    assert harness.object_bytes("tasks/task-1/0.png") == images[0]
    assert harness.manifest("task-1")["images"][0]["sha256"] == hashlib.sha256(images[0]).hexdigest()  # type: ignore[index]


def wait_for(condition: Callable[[], bool], *, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("taken_by_another", [True, False], ids=["taken", "lapsed"])
def test_a_worker_that_lost_its_lease_writes_nothing_final_and_retries_later(
    harness: Harness, taken_by_another: bool
) -> None:
    # Given a task whose file arrives slowly
    urls, images = serve_pngs(harness.files, 1)
    harness.files.add("/img0.png", images[0], delay_s=1.0)
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(harness.process, callback(urls))
        # When, while the first worker downloads, its lease lapses (a Redis outage longer than
        # the TTL) and, maybe, another worker takes the task
        wait_for(lambda: harness.files.hits["/img0.png"] == 1)
        harness.redis.delete(keys.lease("task-1"))
        other = LeaseManager(harness.redis, ttl_s=30)
        with other.hold("task-1") if taken_by_another else nullcontext():
            # Then the first worker writes neither the manifest nor a final state: retry later
            with pytest.raises(TaskBusy):
                first.result(timeout=30)
            assert harness.store.get_bytes("tasks/task-1/manifest.json") is None
            assert harness.tasks.get("task-1").state is TaskState.PROCESSING  # type: ignore[union-attr]
    # And the retry stores the task, reusing the file the first attempt stored
    assert harness.process(callback(urls)) is TaskState.STORED
    assert harness.files.hits["/img0.png"] == 1


@pytest.mark.parametrize("taken_by_another", [True, False], ids=["taken", "lapsed"])
def test_a_worker_that_lost_its_lease_during_a_download_does_not_store_the_file(
    harness: Harness, taken_by_another: bool
) -> None:
    # Given workers whose 1 s lease is renewed every third of a second, and a file that arrives
    # only after a second and a half
    parts = build_parts(
        harness.settings.model_copy(update={"lease_ttl_s": 1}), metrics=create_worker_metrics()
    )
    urls, images = serve_pngs(harness.files, 1)
    harness.files.add("/img0.png", images[0], delay_s=1.5)
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(parts.processor.process, callback(urls))
        # When, while the worker downloads, its lease lapses (a Redis outage longer than the TTL)
        # or another worker takes the task, and a renewal finds out
        wait_for(lambda: harness.files.hits["/img0.png"] == 1)
        harness.redis.delete(keys.lease("task-1"))
        if taken_by_another:
            harness.redis.set(keys.lease("task-1"), "other-worker", ex=30)
        # Then the download ends without the file being stored (it may be the new holder's now):
        # retry later
        with pytest.raises(TaskBusy):
            first.result(timeout=30)
    assert harness.store.list_keys("tasks/task-1/") == []
    assert harness.tasks.get("task-1").state is TaskState.PROCESSING  # type: ignore[union-attr]
    assert harness.redis.get(keys.lease("task-1")) == (b"other-worker" if taken_by_another else None)


def test_the_last_attempt_records_transient_failures_instead_of_raising(harness: Harness) -> None:
    urls, _ = serve_pngs(harness.files, 2)
    harness.files.add("/img1.png", b"busy", status=503, content_type="text/plain")
    assert harness.process(callback(urls), final_attempt=True) is TaskState.PARTIAL
    [error] = harness.manifest("task-1")["errors"]  # type: ignore[misc]
    assert error["index"] == 1
    assert "gave up after retries: HTTP 503" in error["reason"]


def test_a_task_leased_by_another_worker_is_retried_later(harness: Harness) -> None:
    urls, _ = serve_pngs(harness.files, 1)
    harness.redis.set("mjhook:lease:task-1", "other-worker", ex=30)
    with pytest.raises(TaskBusy):
        harness.process(callback(urls))
    assert harness.files.hits == {}


def count(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_files_are_counted_when_stored_and_refusals_and_outcomes_each_time_a_task_ends(
    harness: Harness,
) -> None:
    # Given a task with two images and a page
    urls, images = serve_pngs(harness.files, 2)
    urls.append(harness.files.add("/error.html", b"<html>Forbidden</html>", content_type="text/html"))
    # When it is processed, and then again
    assert harness.process(callback(urls)) is TaskState.PARTIAL
    assert harness.process(callback(urls)) is TaskState.PARTIAL
    # Then the files stored are counted once (the second time stores nothing), the refused page
    # and the outcome each time
    metrics = harness.metrics
    assert count(metrics, "mjhook_files_stored_total") == 2
    assert count(metrics, "mjhook_bytes_stored_total") == sum(len(image) for image in images)
    assert count(metrics, "mjhook_download_seconds_count") == 2
    assert count(metrics, "mjhook_upload_seconds_count") == 2
    assert count(metrics, "mjhook_files_failed_total", reason="DownloadRefused") == 2
    assert count(metrics, "mjhook_tasks_total", outcome="partial") == 2
    assert count(metrics, "mjhook_tasks_total", outcome="stored") == 0


def test_a_task_over_its_total_byte_cap_stores_no_more_than_the_cap(harness: Harness) -> None:
    urls, images = serve_pngs(harness.files, 3)
    cap = len(images[0]) * 2 + 1000
    tight = build_parts(harness.settings.model_copy(update={"max_task_bytes": cap}))
    status = tight.processor.process(callback(urls))
    manifest = harness.manifest("task-1")
    assert status in (TaskState.PARTIAL, TaskState.FAILED)
    assert sum(image["size"] for image in manifest["images"]) <= cap
    assert any("total cap" in error["reason"] for error in manifest["errors"])


def test_a_trickling_file_is_recorded_as_too_slow_on_the_last_attempt(harness: Harness) -> None:
    # Given workers that want 100 KB/s on average after 0.3 s, and one file trickling at ~1.3 KB/s
    slow = harness.settings.model_copy(
        update={"min_download_rate": 100_000, "min_download_rate_after_s": 0.3}
    )
    parts = build_parts(slow, metrics=create_worker_metrics())
    urls, _ = serve_pngs(harness.files, 2)
    harness.files.add("/img1.png", png_bytes(5, 24, 24), chunk_size=64, chunk_delay_s=0.05)
    # When its last attempt runs
    state = parts.processor.process(callback(urls), final_attempt=True)  # type: ignore[attr-defined]
    # Then the other file is stored and this one is recorded with why
    assert state is TaskState.PARTIAL
    [error] = harness.manifest("task-1")["errors"]  # type: ignore[misc]
    assert error["index"] == 1
    assert "too slow" in error["reason"]


def encoded_image(fmt: str, seed: int, size: int = 32) -> bytes:
    """A small image of one seeded colour, encoded by Pillow as ``fmt`` (JPEG, AVIF...)."""
    out = io.BytesIO()
    Image.frombytes("RGB", (size, size), bytes([seed % 256]) * size * size * 3).save(out, format=fmt)
    return out.getvalue()


def test_an_avif_result_is_refused_naming_its_brand_and_nothing_is_stored_as_a_video(
    harness: Harness,
) -> None:
    """Given a task whose second result file is an AVIF image: ISO-BMFF like an MP4, served as
    image/avif
    When it is processed
    Then the AVIF is an error of the manifest naming its brand, and no object of the task is an
    ``.mp4`` (it used to be stored as ``1.mp4``, video/mp4, under the video cap, no pixel check)."""
    urls, _ = serve_pngs(harness.files, 1)
    urls.append(harness.files.add("/img1.avif", encoded_image("AVIF", 3), content_type="image/avif"))
    assert harness.process(callback(urls)) is TaskState.PARTIAL
    [error] = harness.manifest("task-1")["errors"]  # type: ignore[misc]
    assert error["index"] == 1
    assert "'avif'" in error["reason"]
    assert "not an MP4 video" in error["reason"]
    assert harness.store.list_keys("tasks/task-1/") == ["tasks/task-1/0.png", "tasks/task-1/manifest.json"]


class FetcherWithABug(ResultFetcher):
    """A worker's fetcher (without the SSRF guard: the file server is on 127.0.0.1) that raises,
    for ``broken_url``, an exception outside mjhook's error tree, as a bug or an input nothing
    foresaw would (an OverflowError: a port past 2**63)."""

    def __init__(self, broken_url: str) -> None:
        client = create_http_client(connect_timeout_s=2, read_timeout_s=2, max_redirects=3, max_connections=4)
        super().__init__(client, FetchLimits(max_image_bytes=1 << 20, max_video_bytes=1 << 20))
        self._broken_url = broken_url

    def fetch(
        self, url: str, *, budget: ByteBudget | None = None, max_seconds: float | None = None
    ) -> FetchedFile:
        if url == self._broken_url:
            raise OverflowError("Python int too large to convert to C int")
        return super().fetch(url, budget=budget, max_seconds=max_seconds)


def processor(
    harness: Harness,
    pool: ThreadPoolExecutor,
    *,
    store: ObjectStore | None = None,
    fetcher: ResultFetcher | None = None,
    verifier: ResultVerifier | None = None,
    downloads_within_s: float | None = None,
) -> CallbackProcessor:
    """A worker's processor on the harness's Redis, with ``store`` (default the harness's) and
    ``fetcher`` (default one whose only URL it refuses to fetch is never asked of it)."""
    return CallbackProcessor(
        tasks=harness.tasks,
        leases=LeaseManager(harness.redis, ttl_s=30),
        store=harness.store if store is None else store,
        fetcher=FetcherWithABug("http://127.0.0.1:9/never") if fetcher is None else fetcher,
        pool=pool,
        metrics=create_worker_metrics(),
        verifier=verifier,
        downloads_within_s=downloads_within_s,
    )


def test_a_retry_for_want_of_fresh_links_waits_as_long_as_the_provider_asked(harness: Harness) -> None:
    """Given a task whose two result links expired (410) and a provider that answers the fresh-link
    requests with Retry-After 120 and 300 (rate limited), when an attempt processes it, then it
    fails for now carrying the longest of them, which the queue's retry waits for
    (tests/workers/test_retries.py)."""
    urls = [harness.files.add(f"/expired-{i}.png", b"gone", status=410) for i in range(2)]
    waits = {urls[0]: 120.0, urls[1]: 300.0}

    def rate_limited(url: str) -> str:
        raise ProviderUnavailable("provider answered 429 (rate limited)", code=429, retry_after=waits[url])

    client = create_http_client(connect_timeout_s=2, read_timeout_s=2, max_redirects=3, max_connections=4)
    limits = FetchLimits(max_image_bytes=1 << 20, max_video_bytes=1 << 20)
    with ThreadPoolExecutor(max_workers=4) as pool, client:
        fetcher = ResultFetcher(client, limits, refresh_url=rate_limited)
        with pytest.raises(DownloadFailed, match="no fresh link for now") as caught:
            processor(harness, pool, fetcher=fetcher).process(callback(urls))
    assert caught.value.retry_after == 300.0


@pytest.mark.parametrize("final_attempt", [False, True], ids=["first-attempt", "final-attempt"])
def test_a_file_whose_download_raises_outside_the_error_tree_is_its_error_and_the_rest_are_stored(
    harness: Harness, caplog: pytest.LogCaptureFixture, final_attempt: bool
) -> None:
    """Given a task of three files, the second of which makes the fetcher raise an OverflowError
    When an attempt processes it
    Then the other files are stored and the exception is logged with its traceback; an attempt
    that is not the last is retried (a glitch nobody mapped may pass), and the final attempt
    records that file in the manifest's errors with the exception's type and message and ends
    partial. The exception used to escape the processor: no manifest, even on the final attempt."""
    urls, images = serve_pngs(harness.files, 3)
    with ThreadPoolExecutor(max_workers=4) as pool:
        buggy = processor(harness, pool, fetcher=FetcherWithABug(urls[1]))
        with caplog.at_level(logging.ERROR, logger="workers.pipeline"):
            if not final_attempt:
                with pytest.raises(DownloadFailed, match="unexpected error: OverflowError"):
                    buggy.process(callback(urls))
            state = buggy.process(callback(urls), final_attempt=True)
    assert state is TaskState.PARTIAL
    manifest = harness.manifest("task-1")
    assert manifest["errors"] == [
        {
            "index": 1,
            "sourceUrl": urls[1],
            "reason": "unexpected error: OverflowError: Python int too large to convert to C int",
        }
    ]
    assert [image["index"] for image in manifest["images"]] == [0, 2]  # type: ignore[attr-defined]
    assert harness.object_bytes("tasks/task-1/2.png") == images[2]
    logged = [record for record in caplog.records if record.exc_info]
    assert len(logged) == (1 if final_attempt else 2)
    assert all(record.exc_info[0] is OverflowError for record in logged)  # type: ignore[index]


def described_keys(manifest: dict[str, object], task_id: str = "task-1") -> set[str]:
    """The keys a task's manifest describes: its files and itself."""
    return {image["key"] for image in manifest["images"]} | {f"tasks/{task_id}/manifest.json"}  # type: ignore[attr-defined]


def test_a_replaced_file_of_another_type_leaves_no_stale_object_beside_the_manifest(harness: Harness) -> None:
    """Given a first success whose file 0 is a PNG and file 1 is gone: the task ends partial
    When a later success of the task lists other results, and its file 0 is a JPEG
    Then the bucket holds the files the new manifest describes, not also the first result's
    ``0.png`` beside ``0.jpg`` (two objects for index 0, one of them described by nothing)."""
    first = [harness.files.add("/a0.png", png_bytes(1)), harness.files.url("/a1-gone.png")]
    assert harness.process(callback(first), final_attempt=True) is TaskState.PARTIAL
    second = [
        harness.files.add("/b0.jpg", encoded_image("JPEG", 7), content_type="image/jpeg"),
        harness.files.add("/b1.png", png_bytes(2)),
    ]
    assert harness.process(callback(second), final_attempt=True) is TaskState.STORED
    manifest = harness.manifest("task-1")
    assert [image["key"] for image in manifest["images"]] == ["tasks/task-1/0.jpg", "tasks/task-1/1.png"]  # type: ignore[attr-defined]
    assert set(harness.store.list_keys("tasks/task-1/")) == described_keys(manifest)


def test_a_replaced_file_whose_new_download_fails_is_removed_not_left_undescribed(harness: Harness) -> None:
    """Given a first success whose files 0 and 1 are stored and file 2 is gone: the task is partial
    When a later success lists other URLs, and its file 1 is gone (404)
    Then the manifest records file 1 as an error and the first result's ``1.png`` is deleted:
    no object is left that the manifest does not describe."""
    first, _ = serve_pngs(harness.files, 2, prefix="/a")
    first.append(harness.files.url("/a2-gone.png"))
    assert harness.process(callback(first)) is TaskState.PARTIAL
    second = [harness.files.add("/b0.png", png_bytes(5)), harness.files.url("/b1-gone.png")]
    assert harness.process(callback(second), final_attempt=True) is TaskState.PARTIAL
    manifest = harness.manifest("task-1")
    assert [error["index"] for error in manifest["errors"]] == [1]  # type: ignore[attr-defined]
    assert set(harness.store.list_keys("tasks/task-1/")) == {
        "tasks/task-1/0.png",
        "tasks/task-1/manifest.json",
    }


def test_files_of_an_earlier_result_past_the_new_urls_are_removed(harness: Harness) -> None:
    """Given a first success with four files, the last one gone: the task ends partial
    When a later success of the task lists two files
    Then the first result's file 2 (past the new list) is deleted: the bucket holds the two new
    files and the manifest describing them."""
    first, _ = serve_pngs(harness.files, 3, prefix="/a")
    first.append(harness.files.url("/a3-gone.png"))
    assert harness.process(callback(first)) is TaskState.PARTIAL
    second, images = serve_pngs(harness.files, 2, prefix="/b")
    assert harness.process(callback(second)) is TaskState.STORED
    manifest = harness.manifest("task-1")
    assert set(harness.store.list_keys("tasks/task-1/")) == described_keys(manifest)
    assert described_keys(manifest) == {
        "tasks/task-1/0.png",
        "tasks/task-1/1.png",
        "tasks/task-1/manifest.json",
    }
    assert harness.object_bytes("tasks/task-1/1.png") == images[1]


class StalledManifestStore(ObjectStore):
    """A worker's own store whose first manifest write waits for ``release``: a write slower than
    the lease's TTL (an S3 stall), after the worker confirmed its lease."""

    def __init__(self, settings: Settings) -> None:
        store = create_object_store(settings)
        super().__init__(store._client, store.bucket)
        self.reached = threading.Event()
        self.release = threading.Event()

    def put_json(self, key: str, document: object, *, precondition: Precondition | None = None) -> None:
        if key.endswith("/manifest.json") and not self.reached.is_set():
            self.reached.set()
            assert self.release.wait(30)
        super().put_json(key, document, precondition=precondition)


def test_a_manifest_write_outliving_its_lease_never_replaces_the_new_holders_manifest(
    harness: Harness,
) -> None:
    """Given a worker processing a failure report of a task, whose manifest write stalls after it
    confirmed its lease
    When its lease lapses meanwhile and another worker stores the task's success
    Then the stalled write lands nowhere: the manifest stays the new holder's ``stored`` one, as the
    task's state says, and the first worker retries later (TaskBusy). Without a fence the late
    write replaced it: a ``failed`` manifest beside a ``stored`` state and stored files."""
    urls, images = serve_pngs(harness.files, 2)
    stalled = StalledManifestStore(harness.settings)
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = processor(harness, pool, store=stalled)
        report = pool.submit(first.process, callback([], code=501))
        assert stalled.reached.wait(30)
        harness.redis.delete(keys.lease("task-1"))  # lapsed: Redis away longer than the TTL

        assert harness.process(callback(urls)) is TaskState.STORED
        stored = harness.manifest("task-1")
        stalled.release.set()
        with pytest.raises(TaskBusy, match="written by another worker meanwhile"):
            report.result(timeout=30)

    assert harness.manifest("task-1") == stored
    assert stored["status"] == "stored"
    assert harness.tasks.get("task-1").state is TaskState.STORED  # type: ignore[union-attr]
    assert [harness.object_bytes(f"tasks/task-1/{i}.png") for i in range(2)] == images


def broken_storage_processor(harness: Harness, pool: ThreadPoolExecutor) -> CallbackProcessor:
    """A worker on the harness's Redis whose object storage does not answer."""
    down = harness.settings.model_copy(update={"s3_endpoint": f"http://127.0.0.1:{free_port()}"})
    return processor(harness, pool, store=create_object_store(down))


def test_a_failure_report_never_overwrites_an_outcome_kept_while_a_retry_is_pending(
    harness: Harness,
) -> None:
    """Given a task that ended partial (file 0 stored, file 1 gone), and a duplicate success whose
    attempt met object storage down: the task is ``processing`` until its retry, the outcome
    ``partial`` kept beside
    When a failure report of the task is processed meanwhile (a replayed dead letter, a poll)
    Then it changes nothing: the manifest stays partial, file 0 stays described, and the retry
    settles the task partial again. It used to write a ``failed`` manifest over the result."""
    urls = [harness.files.add("/0.png", png_bytes(0)), harness.files.url("/gone.png")]
    assert harness.process(callback(urls)) is TaskState.PARTIAL
    with ThreadPoolExecutor(max_workers=2) as pool, pytest.raises(StorageUnavailable):
        broken_storage_processor(harness, pool).process(callback(urls))
    assert harness.tasks.get("task-1").fields[OUTCOME_FIELD] == "partial"  # type: ignore[union-attr]

    harness.process(callback([], code=501))

    assert harness.manifest("task-1")["status"] == "partial"
    assert harness.tasks.get("task-1").state is TaskState.PROCESSING  # type: ignore[union-attr]
    assert harness.process(callback(urls)) is TaskState.PARTIAL
    assert harness.manifest("task-1")["status"] == "partial"


@pytest.mark.parametrize("queued_by", ["the poll", "the poll, not yet marked"])
@pytest.mark.parametrize("outcome", [TaskState.FAILED, TaskState.PARTIAL])
def test_a_failure_report_for_a_task_handed_back_to_polling_brings_back_its_outcome(
    harness: Harness, outcome: TaskState, queued_by: str
) -> None:
    """Given a task with an outcome whose later success was handed back to the polling fallback
    (its links could not be renewed on its last attempt), and a failure report queued for it (the
    poll found it failed: queued, then the task marked received)
    When the worker processes that report (before or after the mark)
    Then the report changes nothing and the task is back in its outcome: it was left received,
    which no message, poll or second look would ever move again."""
    if outcome is TaskState.FAILED:
        first = callback([], code=500)
    else:
        first = callback([harness.files.add("/0.png", png_bytes(0)), harness.files.url("/gone.png")])
    assert harness.process(first) is outcome
    manifest = harness.manifest("task-1")
    harness.tasks.move("task-1", TaskState.PROCESSING)
    assert SubmittedTasks(harness.redis, harness.tasks, ttl_s=3600).wait_again("task-1")
    if queued_by == "the poll":
        harness.tasks.mark_received("task-1", "2026-11-25T00:00:01.000Z")

    assert harness.process(callback([], code=500)) is outcome
    harness.tasks.mark_received("task-1", "2026-11-25T00:00:01.000Z")  # the poll's mark, if not yet

    record = harness.tasks.get("task-1")
    assert record is not None
    assert (record.state, record.fields[OUTCOME_FIELD]) == (outcome, outcome.value)
    assert harness.manifest("task-1") == manifest


def test_a_success_the_provider_disowns_never_overwrites_a_task_with_files(harness: Harness) -> None:
    """Given a task that ended partial (file 0 stored), and result verification on
    When another success message of it is processed and the provider no longer knows the task (its
    record aged out: a dead letter replayed days later)
    Then that disowned success, a failure report now, changes nothing: manifest and state stay
    partial. It used to pass the duplicate check as a success, then end ``failed`` over the files."""
    urls = [harness.files.add("/0.png", png_bytes(0)), harness.files.url("/gone.png")]
    assert harness.process(callback(urls)) is TaskState.PARTIAL

    def record_info(task_id: str) -> TaskRecordInfo:
        raise ProviderRefused("no such task", code=404)

    with ThreadPoolExecutor(max_workers=2) as pool:
        verifying = processor(harness, pool, verifier=ResultVerifier(record_info))
        assert verifying.process(callback(urls)) is TaskState.PARTIAL

    assert harness.manifest("task-1")["status"] == "partial"
    assert harness.tasks.get("task-1").state is TaskState.PARTIAL  # type: ignore[union-attr]


class FailingThenSlowStore(ObjectStore):
    """A worker's store whose upload of file 0 fails (object storage answering 503 for it) while
    its upload of file 1 is under way and slow: it gives the attempt up to 1 s to let its lease go
    (``redis`` shows it) before it writes, and notes whether the lease was still held then."""

    def __init__(self, settings: Settings, redis_client: redis.Redis) -> None:
        store = create_object_store(settings)
        super().__init__(store._client, store.bucket)
        self._redis = redis_client
        self.file_1_started = threading.Event()
        self.lease_held_at_write: bool | None = None

    def put_file(self, key: str, data: IO[bytes], **kwargs: Any) -> None:
        if key.endswith("/0.png"):
            assert self.file_1_started.wait(30)
            raise StorageUnavailable("object storage error: SlowDown")
        self.file_1_started.set()
        lease_key = keys.lease("task-1")
        deadline = time.monotonic() + 1
        while self._redis.exists(lease_key) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.lease_held_at_write = bool(self._redis.exists(lease_key))
        super().put_file(key, data, **kwargs)


def test_an_attempt_that_raises_leaves_no_upload_running_past_its_lease(harness: Harness) -> None:
    """Given a worker whose upload of file 0 fails while its upload of file 1 is still under way
    When the attempt raises
    Then it waited for that upload, its lease held all along: no write of it can land once the
    lease is released and another worker may store the task. The attempt used to raise and let
    the lease go at once, and the late upload could replace the next holder's file."""
    urls = [harness.files.add("/a0.png", png_bytes(0)), harness.files.add("/a1.png", png_bytes(1))]
    store = FailingThenSlowStore(harness.settings, harness.redis)
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = processor(harness, pool, store=store)
        with pytest.raises(StorageUnavailable):
            first.process(callback(urls))
        assert store.lease_held_at_write is True


def test_a_time_limit_landing_in_the_wait_for_uploads_is_raised_once_they_ended(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given the same failing and slow uploads, when dramatiq's time limit is raised into the
    worker's thread as it waits for the slow upload (it fires where it fires), then the attempt
    still waits for that upload, its lease held, and raises the time limit after it."""
    urls = [harness.files.add("/a0.png", png_bytes(0)), harness.files.add("/a1.png", png_bytes(1))]
    store = FailingThenSlowStore(harness.settings, harness.redis)
    waits: list[bool] = []

    def interrupted_once(futures: list[Future[Any]]) -> Any:
        waits.append(all(future.done() for future in futures))
        if len(waits) == 1:
            raise TimeLimitExceeded()
        return wait(futures)

    monkeypatch.setattr(pipeline, "wait", interrupted_once)
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = processor(harness, pool, store=store)
        with pytest.raises(TimeLimitExceeded):
            first.process(callback(urls))
        assert store.lease_held_at_write is True
    assert waits[0] is False  # the upload of file 1 was under way when the time limit landed


def test_a_give_up_keeps_the_manifest_a_task_has_on_a_store_without_conditional_writes(
    harness: Harness,
) -> None:
    """Given a store that does not implement conditional writes, and a task failed by the
    provider's own report, with its manifest
    When a duplicate message of it is given up and its failure manifest written
    Then the task's manifest stands: the store is read first. The write was plain there: the
    give-up's manifest replaced the provider's code and message."""
    plain = create_object_store(harness.settings, http_factory=NoConditionsPoolManager)
    failure = callback([], code=501)
    with ThreadPoolExecutor(max_workers=2) as pool:
        worker = processor(harness, pool, store=plain)
        assert worker.process(failure) is TaskState.FAILED
        before = harness.manifest("task-1")
        assert harness.tasks.give_up("task-1", "gave up: TaskBusy: busy").state is TaskState.FAILED
        worker.record_failure(failure, "gave up: TaskBusy: busy")
    assert harness.manifest("task-1") == before


class ManifestRefusingStore(ObjectStore):
    """A worker's own store that stores files but fails every manifest write (object storage
    down just then)."""

    def __init__(self, settings: Settings) -> None:
        store = create_object_store(settings)
        super().__init__(store._client, store.bucket)

    def put_json(self, key: str, document: object, *, precondition: Precondition | None = None) -> None:
        if key.endswith("/manifest.json"):
            raise StorageUnavailable("object storage error: SlowDown")
        super().put_json(key, document, precondition=precondition)


def test_a_give_up_back_to_partial_removes_the_file_its_manifest_does_not_describe(harness: Harness) -> None:
    """Given a partial task (its second link answered 404), a later callback of which stored that
    file (the link works now) and died before its manifest (object storage down)
    When the queue gives up on that message, and the task goes back to partial
    Then that file is removed, the manifest kept: the bucket holds what the manifest describes.
    The file stayed, described by no manifest (README: the bucket holds only those files)."""
    images = [png_bytes(n) for n in range(3)]
    urls = [
        harness.files.add("/p0.png", images[0]),
        harness.files.add("/p1.png", b"not found", status=404),
        harness.files.add("/p2.png", images[2]),
    ]
    assert harness.process(callback(urls), final_attempt=True) is TaskState.PARTIAL
    before = harness.manifest("task-1")
    harness.files.add("/p1.png", images[1])
    with ThreadPoolExecutor(max_workers=2) as pool, pytest.raises(StorageUnavailable):
        processor(harness, pool, store=ManifestRefusingStore(harness.settings)).process(callback(urls))
    assert harness.object_bytes("tasks/task-1/1.png") == images[1]

    assert harness.tasks.give_up("task-1", "gave up: StorageUnavailable").state is TaskState.PARTIAL
    harness.parts.processor.agree_with_outcome(callback(urls))  # type: ignore[attr-defined]

    assert harness.object_bytes("tasks/task-1/1.png") is None
    assert harness.manifest("task-1") == before
    assert [harness.object_bytes(f"tasks/task-1/{n}.png") for n in (0, 2)] == [images[0], images[2]]


def test_a_manifest_write_that_fails_leaves_every_file_the_standing_manifest_lists(harness: Harness) -> None:
    """Given a partial task whose manifest lists ``0.png`` (its second link was gone)
    When a later success, whose file 0 is a JPEG, stores its files and its manifest write fails
    (object storage down just then)
    Then the manifest standing is the earlier one, and every file it lists is still stored as it
    describes it: the earlier ``0.png`` no longer described is removed only after the new
    manifest is written, never before."""
    first = [harness.files.add("/a0.png", png_bytes(1)), harness.files.url("/a1-gone.png")]
    assert harness.process(callback(first), final_attempt=True) is TaskState.PARTIAL
    before = harness.manifest("task-1")
    second = [
        harness.files.add("/b0.jpg", encoded_image("JPEG", 7), content_type="image/jpeg"),
        harness.files.add("/b1.png", png_bytes(2)),
    ]
    with ThreadPoolExecutor(max_workers=2) as pool, pytest.raises(StorageUnavailable):
        processor(harness, pool, store=ManifestRefusingStore(harness.settings)).process(
            callback(second), final_attempt=True
        )

    assert harness.manifest("task-1") == before
    for image in before["images"]:  # type: ignore[attr-defined]
        stored = harness.store.stat(image["key"])
        assert stored is not None, f"{image['key']} is listed but was removed"
        assert stored.sha256 == image["sha256"]
    assert harness.object_bytes("tasks/task-1/0.png") == png_bytes(1)


def test_an_attempts_downloads_end_by_its_deadline_running_or_queued(harness: Harness) -> None:
    """Given an attempt whose downloads must end within 0.5 s (a share of the task time limit),
    one download thread, a first file answering after 1.5 s and a second queued behind it
    When the attempt runs
    Then the first download is given up at that time and the second is not started: the attempt
    fails for now (retried later). Each download had the whole limit from its own start, and
    dramatiq's limit cannot interrupt a thread waiting on them: attempts ran past twice the limit."""
    slow = harness.files.add("/slow.png", png_bytes(0), delay_s=1.5)
    queued = harness.files.add("/queued.png", png_bytes(1))
    with ThreadPoolExecutor(max_workers=1) as pool:
        timed = processor(harness, pool, downloads_within_s=0.5)
        with pytest.raises(DownloadFailed) as failed:
            timed.process(callback([slow, queued]))
    assert "too long" in str(failed.value)
    assert harness.files.hits.get("/queued.png", 0) == 0
    assert harness.tasks.get("task-1").state is TaskState.PROCESSING  # type: ignore[union-attr]

    # And on the last attempt the downloads take the time they need (each within its own bound):
    # a file given up there for want of time would be recorded failed, its link never tried
    with ThreadPoolExecutor(max_workers=1) as pool:
        last = processor(harness, pool, downloads_within_s=0.5).process(
            callback([slow, queued]), final_attempt=True
        )
    assert last is TaskState.STORED


def test_a_result_url_s_credentials_are_kept_out_of_the_manifest(harness: Harness) -> None:
    """Given a callback whose second URL carries a user and password (refused: not fetched)
    Then the manifest names that URL with ``***`` in their place: its errors were a copy of the
    secret for whoever reads the bucket or GET /tasks."""
    good = harness.files.add("/ok.png", png_bytes(2, 32, 32))
    secret = harness.files.base_url.replace("http://", "http://alice:s3cr3t-token@", 1) + "/0.png"

    assert harness.process(callback([good, secret], task_id="creds")) is TaskState.PARTIAL

    manifest = harness.manifest("creds")
    assert manifest is not None
    assert "s3cr3t-token" not in orjson.dumps(manifest).decode()
    [error] = manifest["errors"]
    assert error["sourceUrl"] == harness.files.base_url.replace("http://", "http://***@", 1) + "/0.png"
    assert manifest["images"][0]["sourceUrl"] == good
