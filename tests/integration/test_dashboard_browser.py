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
from PIL import Image

from tests.support.browser import Chromium, Element, chromium_path, parse_dom
from tests.support.pipeline import callback, post_callback, read_manifest, wait_for
from tests.support.servers import FileServer, png_bytes
from tests.support.stack import REPO_ROOT, start_ingress, start_workers

pytestmark = pytest.mark.integration

TOKEN = "browser-secret"
SCREENSHOT = REPO_ROOT / "test-output" / "dashboard.png"
STORED_ID = "mj-dash-stored-1"
FAILED_ID = "mj-dash-failed-1"
#: A provider message (a failed task's reason) that would become markup if put in as HTML.
HOSTILE_MSG = '<img src=x id="injected" onerror="document.title=1"><b>boom</b>'


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
