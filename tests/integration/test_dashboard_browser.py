"""The dashboard in a real browser: gunicorn ingress + dramatiq workers + SeaweedFS, a task stored
from a real callback, then headless Chromium opens /dashboard?token=... and shows it."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import redis
from PIL import Image

from simulator.video import mp4_bytes
from tests.support.browser import Chromium, Element, chromium_path, parse_dom
from tests.support.pipeline import callback, post_callback, read_manifest, wait_for
from tests.support.servers import FileServer, png_bytes
from tests.support.stack import REPO_ROOT, start_ingress, start_workers

pytestmark = pytest.mark.integration

TOKEN = "browser-secret"
SCREENSHOT = REPO_ROOT / "test-output" / "dashboard.png"
STORED_ID = "mj-dash-stored-1"
FAILED_ID = "mj-dash-failed-1"
VIDEO_ID = "mj-dash-video-1"
BIDI_ID = "mj-dash-bidi-1"
#: A provider message (a failed task's reason) that would become markup if put in as HTML.
HOSTILE_MSG = '<img src=x id="injected" onerror="document.title=1"><b>boom</b>'
#: A reason that, its overrides live, displays as "quota exceeded at file https://evil.example/invoice.pdf"
#: written backwards; an ESC and a newline besides (what shared/printable.py escapes).
BIDI_MSG = "quota exceeded \u202efdp.eciovni/elpmaxe.live//:sptth ta elif\u202c \x1b[2J\nfixed"
#: Bidirectional overrides and isolates.
BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}


@pytest.fixture
def chromium(tmp_path: Path) -> Chromium:
    executable = chromium_path()
    if executable is None:
        pytest.fail("chromium is not installed: `make test` installs it")
    return Chromium(executable, tmp_path / "chromium-profile")


@pytest.fixture
def stack(app_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    env = {**app_env, "MJHOOK_API_TOKEN": TOKEN}
    ingress, base_url = start_ingress(env, tmp_path, extra_args=["--workers", "2"])
    workers = start_workers(env, tmp_path, processes=1, threads=2)
    try:
        yield base_url
    finally:
        workers.terminate()
        ingress.terminate()


def queue_is_idle(http: httpx.Client) -> bool:
    status = http.get("/dashboard/status", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    queue = status["queues"]["callbacks"]
    return bool(queue["ready"] == queue["in_flight"] == 0)


def dashboard_dom(chromium: Chromium, url: str) -> list[Element]:
    """The dashboard's DOM once its first refresh has shown the stored task's images loaded."""

    def ready() -> list[Element] | None:
        elements = parse_dom(chromium.dump_dom(url))
        images = [e for e in elements if e.tag == "img" and e.attrs.get("data-task-id") == STORED_ID]
        loaded = images and all("data-loaded" in image.attrs for image in images)
        return elements if loaded else None

    return wait_for(ready, timeout_s=30, what="the dashboard showing the stored task's images")


def test_the_dashboard_shows_stored_tasks_with_their_images(
    stack: str, chromium: Chromium, file_server: FileServer, s3_server: Any, s3_bucket: str
) -> None:
    # Given a task stored from a real callback, and a failed one whose reason is markup
    originals = [png_bytes(seed, 320, 240) for seed in (7, 8)]
    urls = [file_server.add(f"/r/{i}.png", image) for i, image in enumerate(originals)]
    with httpx.Client(base_url=stack, timeout=10) as http:
        assert post_callback(http, callback(STORED_ID, urls)).status_code == 200
        failed = callback(FAILED_ID, [], code=500)
        failed["msg"] = HOSTILE_MSG
        assert post_callback(http, failed).status_code == 200
        s3 = s3_server.client()
        assert wait_for(lambda: read_manifest(s3, s3_bucket, STORED_ID), timeout_s=30)["status"] == "stored"
        wait_for(lambda: read_manifest(s3, s3_bucket, FAILED_ID), timeout_s=30)
        # and both messages acked (a manifest is written before its message is acked)
        wait_for(lambda: queue_is_idle(http), timeout_s=10, what="an idle queue")
        # and a callback refused (kept for inspection)
        refused = http.post(
            "/callbacks/midjourney", content=b"{", headers={"Content-Type": "application/json"}
        )
        assert refused.status_code == 400
        # The page is refused without the token
        assert http.get("/dashboard").status_code == 401

    # When headless Chromium opens the dashboard with the token in the query
    page_url = f"{stack}/dashboard?token={TOKEN}"
    elements = dashboard_dom(chromium, page_url)

    # Then the recent-tasks table lists the stored task as stored
    rows = {e.attrs["data-task-id"]: e for e in elements if e.tag == "tr" and "data-task-id" in e.attrs}
    assert rows[STORED_ID].attrs["data-state"] == "stored"
    assert rows[STORED_ID].text.startswith(f"{STORED_ID} stored")
    # and the failed task's reason as text, not as markup
    assert rows[FAILED_ID].attrs["data-state"] == "failed"
    assert HOSTILE_MSG in rows[FAILED_ID].text
    assert not any(e.attrs.get("id") == "injected" or e.tag == "b" for e in elements)
    # and each stored image as a thumbnail that loaded from its presigned URL
    thumbs = [e for e in elements if e.tag == "img" and e.attrs.get("data-task-id") == STORED_ID]
    assert sorted(e.attrs["data-key"] for e in thumbs) == [
        f"tasks/{STORED_ID}/0.png",
        f"tasks/{STORED_ID}/1.png",
    ]
    s3_endpoint = urlsplit(s3_server.endpoint)
    for thumb in thumbs:
        assert thumb.attrs["data-loaded"] == "1"  # naturalWidth > 0 in the browser
        src = urlsplit(thumb.attrs["src"])
        assert (src.scheme, src.netloc) == (s3_endpoint.scheme, s3_endpoint.netloc)
        assert src.path == f"/{s3_bucket}/{thumb.attrs['data-key']}"
        assert "X-Amz-Signature" in parse_qs(src.query)
        index = int(thumb.attrs["data-key"].rsplit("/", 1)[1].split(".")[0])
        assert httpx.get(thumb.attrs["src"], timeout=10).content == originals[index]
    # and the queue and the task counts
    queue = next(e for e in elements if e.tag == "tr" and e.attrs.get("data-queue") == "callbacks")
    assert queue.text.split() == ["callbacks", "0", "0", "0", "0"]
    counts = {e.attrs["data-state"]: e.text for e in elements if e.tag == "div" and "data-state" in e.attrs}
    assert counts["stored"] == "1 stored"
    assert counts["failed"] == "1 failed"
    rejected = next(e for e in elements if e.attrs.get("id") == "rejected")
    assert rejected.text == "1"
    problem = next(e for e in elements if e.attrs.get("id") == "problem")
    assert "hidden" in problem.attrs

    # And a screenshot shows it (for people; the assertions above are the test)
    shot = chromium.screenshot(page_url, SCREENSHOT, size=(1280, 900))
    with Image.open(io.BytesIO(shot.read_bytes())) as image:
        assert image.format == "PNG"
        assert image.size == (1280, 900)


def test_a_stored_video_is_shown_as_a_muted_video_not_a_broken_image(
    stack: str, chromium: Chromium, file_server: FileServer, s3_server: Any, s3_bucket: str
) -> None:
    # Given a video task stored from a real callback (the contract stores it as 0.mp4)
    url = file_server.add("/v/0.mp4", mp4_bytes(VIDEO_ID, 0), content_type="video/mp4")
    with httpx.Client(base_url=stack, timeout=10) as http:
        assert post_callback(http, callback(VIDEO_ID, [url])).status_code == 200
    manifest = wait_for(lambda: read_manifest(s3_server.client(), s3_bucket, VIDEO_ID), timeout_s=30)
    assert [image["key"] for image in manifest["images"]] == [f"tasks/{VIDEO_ID}/0.mp4"]

    # When the operator opens the dashboard
    def judged() -> list[Element] | None:  # the thumbnail exists and the browser has judged it
        elements = parse_dom(chromium.dump_dom(f"{stack}/dashboard?token={TOKEN}", budget_ms=8000))
        shown = [e for e in elements if e.attrs.get("data-key") == f"tasks/{VIDEO_ID}/0.mp4"]
        return shown if shown and all("data-loaded" in e.attrs for e in shown) else None

    shown = wait_for(judged, timeout_s=60, what="the video's thumbnail")

    # Then it is one muted video that loads only its metadata, from its presigned URL (the page's
    # policy allows media from there), not an image that failed to load
    assert [e.tag for e in shown] == ["video"]
    video = shown[0].attrs
    assert "muted" in video
    assert video["preload"] == "metadata"
    assert video["data-loaded"] == "1", "the video's metadata did not load"
    src = urlsplit(video["src"])
    assert src.path == f"/{s3_bucket}/tasks/{VIDEO_ID}/0.mp4"
    assert "X-Amz-Signature" in parse_qs(src.query)


def test_a_reason_is_shown_with_its_bidi_overrides_and_controls_escaped(
    stack: str, chromium: Chromium
) -> None:
    # Given a failed task whose reason (the provider's msg) carries bidi overrides and controls
    failed = callback(BIDI_ID, [], code=500)
    failed["msg"] = BIDI_MSG
    with httpx.Client(base_url=stack, timeout=10) as http:
        assert post_callback(http, failed).status_code == 200

    # When the operator opens the dashboard
    def reason_cell() -> Element | None:
        elements = parse_dom(chromium.dump_dom(f"{stack}/dashboard?token={TOKEN}"))
        rows = [e for e in elements if e.tag == "tr" and e.attrs.get("data-task-id") == BIDI_ID]
        cells = [e for e in elements if e.tag == "td" and "reason" in e.attrs.get("class", "")]
        return next(iter(cells), None) if rows else None

    cell = wait_for(reason_cell, timeout_s=60, what="the failed task's row")

    # Then none of them is live: each shows as its escape, as the CLI shows it
    live = sorted(f"U+{ord(c):04X}" for c in set(cell.text) & (BIDI | {"\x1b", "\n"}))
    assert not live, f"the reason cell renders controls live: {live}"
    assert cell.text == (
        "quota exceeded \\u202efdp.eciovni/elpmaxe.live//:sptth ta elif\\u202c \\x1b[2J\\x0afixed"
    )


def by_id(elements: list[Element], element_id: str) -> Element:
    return next(e for e in elements if e.attrs.get("id") == element_id)


def test_a_redis_that_can_lose_acknowledged_callbacks_is_shown_as_a_warning(
    stack: str, chromium: Chromium, client: redis.Redis
) -> None:
    # Given the stack's Redis as redis-server starts by default: the append-only file off
    assert client.config_get("appendonly") == {"appendonly": "no"}
    page_url = f"{stack}/dashboard?token={TOKEN}"

    def shown(banner_hidden: bool) -> list[Element] | None:
        """The page's DOM once a refresh has shown the banner hidden (or not)."""
        elements = parse_dom(chromium.dump_dom(page_url))
        refreshed = any(e.tag == "body" and "data-refreshes" in e.attrs for e in elements)
        banner = by_id(elements, "durability")
        return elements if refreshed and ("hidden" in banner.attrs) == banner_hidden else None

    # When the operator opens the dashboard

    elements = wait_for(lambda: shown(banner_hidden=False), timeout_s=30, what="the durability banner")

    # Then a banner says what can be lost, each sentence as text, and no "ok"
    items = [e.text for e in elements if e.tag == "li"]
    assert len(items) == 1
    assert items[0].startswith("appendonly is no: a Redis restart or crash loses every acknowledged callback")
    assert "hidden" in by_id(elements, "durability-ok").attrs

    # And once the Redis runs durably, the banner goes and a quiet "ok" stays
    client.config_set("appendonly", "yes")
    client.config_set("appendfsync", "always")
    elements = wait_for(lambda: shown(banner_hidden=True), timeout_s=30, what="the banner gone")
    ok = by_id(elements, "durability-ok")
    assert "hidden" not in ok.attrs
    assert ok.text == "Redis durability: ok"
