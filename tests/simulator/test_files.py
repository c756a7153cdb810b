"""Result files: real PNGs and MP4s, reproducible bytes, signed expiring links."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from urllib.parse import parse_qs, urlsplit

import av
import falcon
import falcon.testing
import httpx
import pytest
from PIL import Image

from simulator import FaultConfig, RunningSimulator, SimulatorConfig, expected_file
from simulator.files import FileCache, png_bytes, sha256_hex
from simulator.links import FileRef, LinkCheck, LinkSigner
from simulator.resources import ProviderErrorHandler
from simulator.video import video_layout
from tests.simulator.support import FakeClock, SimFactory, api, result_urls, submit, wait_done
from workers.sniff import MP4, PNG, sniff_media


def test_result_files_are_decodable_pngs_with_reproducible_bytes(sim: RunningSimulator) -> None:
    with api(sim) as client:
        task_id = submit(client)
        urls = result_urls(wait_done(client, task_id))
        files = [client.get(url) for url in urls]

    for index, response in enumerate(files):
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "image/png"
        image = Image.open(io.BytesIO(response.content))
        image.load()
        assert image.size == (64, 64)
        assert image.mode == "RGB"
        assert sniff_media(response.content[:64]) is PNG
        assert response.content == sim.expected_file(task_id, index)
        assert response.content == expected_file(task_id, index, width=64, height=64)
    assert len({hashlib.sha256(r.content).hexdigest() for r in files}) == 4


def test_the_same_task_and_index_give_the_same_bytes_in_another_simulator(make_sim: SimFactory) -> None:
    first = make_sim(task_id_prefix="same-")
    second = make_sim(task_id_prefix="same-")
    digests = []
    for sim in (first, second):
        with api(sim) as client:
            task_id = submit(client)
            url = result_urls(wait_done(client, task_id))[1]
            digests.append((task_id, hashlib.sha256(client.get(url).content).hexdigest()))
    assert digests[0] == digests[1]


def test_a_full_size_image_is_one_to_two_megabytes() -> None:
    data = png_bytes("size-check", 0)
    image = Image.open(io.BytesIO(data))
    assert image.size == (1024, 1024)
    assert 1_000_000 < len(data) < 2_000_000


def test_video_tasks_yield_four_different_mp4s_the_sniffer_recognises(sim: RunningSimulator) -> None:
    """A Midjourney video job makes four videos, as a grid makes four images."""
    with api(sim) as client:
        task_id = submit(client, taskType="mj_video", fileUrls=["http://127.0.0.1:9/in.png"])
        urls = result_urls(wait_done(client, task_id))
        responses = [client.get(url) for url in urls]
    assert [url.split("?")[0].rsplit("/", 1)[1] for url in urls] == ["0.mp4", "1.mp4", "2.mp4", "3.mp4"]
    for index, response in enumerate(responses):
        assert response.headers["Content-Type"] == "video/mp4"
        assert response.content[4:8] == b"ftyp"
        assert sniff_media(response.content[:64]) is MP4
        assert len(response.content) == 4096
        assert response.content == sim.expected_file(task_id, index)
        with av.open(io.BytesIO(response.content)) as container:
            assert len(list(container.decode(video=0))) == video_layout(4096).frames
    assert len({response.content for response in responses}) == 4


def first_result_link(client: httpx.Client) -> str:
    """The first result link of a task submitted through ``client`` and waited for."""
    return result_urls(wait_done(client, submit(client)))[0]


def test_links_expire_refuse_tampering_and_can_be_refreshed(make_sim: SimFactory) -> None:
    # Given result links (and media) that last an hour
    clock = FakeClock()
    sim = make_sim(clock=clock, url_ttl_s=3600.0)
    with api(sim) as client:
        url = first_result_link(client)
        valid = client.get(url).status_code
        tampered = client.get(url.replace("/0.png", "/1.png")).status_code
        unsigned = client.get(url.split("?")[0]).status_code
        # When download-url is asked for a fresh link
        clock.advance(1000)
        fresh = client.post("/api/v1/common/download-url", json={"url": url}).json()["data"]
        refreshed = client.get(fresh).status_code
        # Then it is valid 20 minutes
        clock.advance(20 * 60 + 1)
        refreshed_later = client.get(fresh).status_code
        # And the result link until its hour has passed
        still_valid = client.get(url).status_code
        clock.advance(3600)
        expired = client.get(url).status_code

    assert (valid, tampered, unsigned) == (200, 403, 403)
    assert refreshed == 200
    assert refreshed_later == 410
    assert still_valid == 200
    # (the media is kept longer than the link: 410, ask for a fresh link)
    assert expired == 410


def test_a_result_link_that_expired_while_the_media_is_kept_can_be_refreshed(make_sim: SimFactory) -> None:
    # Given result links valid 600 s, and the media kept as the provider keeps it (14 days)
    clock = FakeClock()
    sim = make_sim(clock=clock, url_ttl_s=600.0)
    with api(sim) as client:
        task_id = submit(client)
        url = result_urls(wait_done(client, task_id))[0]
        # When the link has expired on its own, a day later
        clock.advance(86400)
        expired = client.get(url).status_code
        fresh = client.post("/api/v1/common/download-url", json={"url": url}).json()
        refreshed = client.get(fresh["data"])
    # Then it answers 410, as a link issued expired does, and download-url gives one that serves
    assert expired == 410
    assert fresh["code"] == 200
    assert refreshed.status_code == 200
    assert refreshed.content == sim.expected_file(task_id, 0)


def test_the_media_is_kept_14_days_or_as_long_as_a_longer_result_link() -> None:
    assert SimulatorConfig().kept_s == 14 * 86400
    assert SimulatorConfig(url_ttl_s=600.0).kept_s == 14 * 86400
    assert SimulatorConfig(url_ttl_s=30 * 86400.0).kept_s == 30 * 86400
    assert SimulatorConfig(url_ttl_s=30 * 86400.0, media_ttl_s=600.0).kept_s == 600


@pytest.mark.parametrize("expired_share", [0.0, 1.0], ids=["links", "links-issued-expired"])
def test_once_the_media_is_no_longer_kept_no_link_serves_it(
    make_sim: SimFactory, expired_share: float
) -> None:
    # Given a provider that keeps media 600 s (with or without links issued already expired)
    clock = FakeClock()
    sim = make_sim(clock=clock, media_ttl_s=600.0, faults=FaultConfig(file_expired_share=expired_share))
    with api(sim) as client:
        url = first_result_link(client)
        # And a fresh link, valid 20 minutes, asked for 10 s before the media's time is up
        clock.advance(590)
        early = client.post("/api/v1/common/download-url", json={"url": url}).json()
        early_file = client.get(early["data"]).status_code
        # When the 600 s have passed
        clock.advance(11)
        late = client.post("/api/v1/common/download-url", json={"url": url}).json()
        fresh_file = client.get(early["data"]).status_code
        original = client.get(url).status_code

    assert early["code"] == 200
    assert early_file == 200
    # Then no fresh link is given, and neither link serves the file: 404, the file is gone (not
    # 410, which asks for a fresh link), even for a link issued already expired
    assert late == {"code": 404, "msg": "The file has expired and no longer exists", "data": None}
    assert fresh_file == 404
    assert original == 404


def test_a_result_link_answers_404_from_when_the_media_is_gone_not_404_then_410(
    make_sim: SimFactory,
) -> None:
    # Given media kept 600 s after the task completed, at a quarter past a whole second: its
    # result link's expiry, rounded up to a whole second, comes 0.75 s after the media is gone
    clock = FakeClock(1_000_000.25)
    sim = make_sim(clock=clock, url_ttl_s=600.0, media_ttl_s=600.0)
    statuses, refreshes = [], []
    with api(sim) as client:
        url = first_result_link(client)
        # When the link is asked for on the media's last moment, just after it, and once the
        # link's own expiry has passed too
        for step in (600.0, 0.25, 1.0):
            clock.advance(step)
            statuses.append(client.get(url).status_code)
            refreshes.append(client.post("/api/v1/common/download-url", json={"url": url}).json()["code"])
    # Then it serves the file, then answers 404 for good, as download-url does
    assert statuses == [200, 404, 404]
    assert refreshes == [200, 404, 404]


def test_the_default_sizes_give_the_same_bytes_as_ever() -> None:
    # Seeded output of the default sizes, as earlier versions made it: a test or a bench run
    # comparing against recorded sha256s keeps working
    assert sha256_hex(png_bytes("mjsim-pin-000000", 0)) == (
        "e0e688a66d618562abb0e9edfae20aa7bfa9bbfff44f958c3c89036b69daf432"
    )
    assert sha256_hex(expected_file("mjsim-pin-000000", 0, ext="mp4")) == (
        "fb0673c6d082b25462b2e6dbabde5696d1a172acf25b8c0afc0a429a7df49ace"
    )


def test_the_file_cache_is_bounded_by_bytes_too() -> None:
    made: list[str] = []

    def make(task_id: str, index: int, ext: str) -> bytes:
        made.append(task_id)
        return b"x" * (300 if task_id == "big" else 100)

    # Given a cache of up to 10 files but 250 bytes, and files of 100 bytes
    cache = FileCache(make, max_files=10, max_bytes=250)
    for task_id in ("a", "b", "c", "a", "b", "c"):
        cache.get(task_id, 0, "png")
    # Then two fit: each third one drops the least recently used, and all are made again
    assert made == ["a", "b", "c", "a", "b", "c"]
    # And a file larger than the whole cache is served but not kept, dropping none
    assert cache.get("big", 0, "png") == b"x" * 300
    cache.get("big", 0, "png")
    cache.get("c", 0, "png")
    assert made[6:] == ["big", "big"]


def test_requests_missing_the_same_file_together_wait_for_one_making_it() -> None:
    # Given a file that takes a while to make, and four requests for it at once
    requests = 4
    calls: list[int] = []
    all_called = threading.Event()
    lock = threading.Lock()

    def make(task_id: str, index: int, ext: str) -> bytes:
        with lock:
            calls.append(index)
            if len(calls) == requests:
                all_called.set()
        # Each making waits for the other requests to make it too (a deadline, should none come)
        all_called.wait(0.5)
        return b"made once"

    cache = FileCache(make)
    start = threading.Barrier(requests)
    got: list[bytes] = []

    def request() -> None:
        start.wait(5.0)
        data = cache.get("t", 0, "png")
        with lock:
            got.append(data)

    threads = [threading.Thread(target=request) for _ in range(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10.0)
    # Then it was made once, and every request has it
    assert calls == [0]
    assert got == [b"made once"] * requests


def test_a_file_that_fails_to_be_made_fails_its_waiting_requests_and_is_tried_anew() -> None:
    attempts: list[int] = []

    def make(task_id: str, index: int, ext: str) -> bytes:
        attempts.append(index)
        if len(attempts) == 1:
            raise ValueError("no such result file type")
        return b"second time"

    cache = FileCache(make)
    with pytest.raises(ValueError, match="no such result file type"):
        cache.get("t", 0, "png")
    assert cache.get("t", 0, "png") == b"second time"


def test_the_file_cache_keeps_the_most_recently_used_files() -> None:
    made: list[tuple[str, int, str]] = []

    def make(task_id: str, index: int, ext: str) -> bytes:
        made.append((task_id, index, ext))
        return f"{task_id}/{index}.{ext}".encode()

    cache = FileCache(make, max_files=2)
    cache.get("a", 0, "png")
    cache.get("b", 0, "png")
    cache.get("a", 0, "png")  # a is now the most recent
    cache.get("c", 0, "png")  # evicts b
    cache.get("a", 0, "png")
    cache.get("b", 0, "png")
    assert made == [("a", 0, "png"), ("b", 0, "png"), ("c", 0, "png"), ("b", 0, "png")]


@pytest.mark.parametrize("ttl_s", [-0.5, -60.0])
def test_a_link_given_a_negative_ttl_is_expired_when_issued(ttl_s: float) -> None:
    clock = FakeClock(1000.6)
    signer = LinkSigner(secret=b"k", base_url="http://127.0.0.1:9", clock=clock)
    ref = FileRef("t", 0, "png")
    query = parse_qs(urlsplit(signer.link(ref, ttl_s=ttl_s)).query)
    assert signer.check(ref, expires=query["exp"][0], signature=query["sig"][0]) is LinkCheck.EXPIRED


@pytest.mark.parametrize("ttl_s", [0.3, 1.0, 1200.0])
def test_a_link_is_valid_for_its_whole_ttl_never_less(ttl_s: float) -> None:
    # Given a link issued at a moment between two whole seconds
    clock = FakeClock(1000.6)
    signer = LinkSigner(secret=b"k", base_url="http://127.0.0.1:9", clock=clock)
    ref = FileRef("t", 0, "png")
    query = parse_qs(urlsplit(signer.link(ref, ttl_s=ttl_s)).query)

    def check() -> LinkCheck:
        return signer.check(ref, expires=query["exp"][0], signature=query["sig"][0])

    # Then it is valid at once, and still at the end of its time to live
    valid_at_once = check()
    clock.advance(ttl_s)
    valid_at_the_end = check()
    # And no longer a second after it (its expiry is in whole seconds)
    clock.advance(1.0)
    assert (valid_at_once, valid_at_the_end, check()) == (LinkCheck.VALID, LinkCheck.VALID, LinkCheck.EXPIRED)


@pytest.mark.parametrize(
    ("exp", "sig"),
    [
        ("\u00b2", "0" * 32),  # "²".isdigit() is True, int("²") raises
        ("9" * 5000, "0" * 32),  # past int()'s 4300-digit limit
        ("1", "\u00e9" * 32),  # compare_digest refuses non-ASCII strings
    ],
    ids=["superscript-two", "5000-digits", "non-ascii-signature"],
)
def test_an_odd_expiry_or_signature_is_403_not_a_json_body_with_status_200(
    sim: RunningSimulator, exp: str, sig: str
) -> None:
    # Given a result file request whose exp or sig no link of ours carries
    # When it is made
    answer = httpx.get(
        f"{sim.base_url}/files/{sim.provider.task_id_prefix}000000/0.png",
        params={"exp": exp, "sig": sig},
        trust_env=False,
    )
    # Then it is refused as a bad signature, not answered 200 with an error body a downloader
    # would store as the image
    assert answer.status_code == 403, (answer.status_code, answer.text)


def test_an_unexpected_error_serving_a_file_is_http_500_and_in_the_api_the_providers_body() -> None:
    # Given an app whose file route and API route both fail unexpectedly
    class Failing:
        def on_get(self, req: falcon.Request, resp: falcon.Response, **params: str) -> None:
            raise RuntimeError("boom")

    app = falcon.App()
    app.add_error_handler(Exception, ProviderErrorHandler())
    app.add_route("/files/{task_id}/{name}", Failing())
    app.add_route("/api/v1/mj/record-info", Failing())
    client = falcon.testing.TestClient(app)
    # When each is requested
    file = client.simulate_get("/files/t/0.png")
    info = client.simulate_get("/api/v1/mj/record-info")
    # Then the file is an HTTP error, the API call the provider's code 500 in a 200 answer
    assert file.status_code == 500
    assert (info.status_code, info.json["code"]) == (200, 500)


def test_unknown_file_names_are_404(sim: RunningSimulator) -> None:
    with httpx.Client(trust_env=False) as client:
        assert client.get(f"{sim.base_url}/files/x/0.gif?exp=1&sig=x").status_code == 404
        assert (
            client.get(f"{sim.base_url}/files/x/a.png?exp={int(time.time()) + 60}&sig=x").status_code == 404
        )
