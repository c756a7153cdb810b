"""The test servers themselves: each does what the integration tests rely on."""

from __future__ import annotations

import io
import signal
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import redis
from minio import Minio
from PIL import Image

from tests.support.procs import (
    ManagedProcess,
    ProcessStartError,
    free_port,
    wait_for_http,
    wait_for_port,
    wait_until,
)
from tests.support.servers import FileServer, RedisServer, S3Server, png_bytes, start_redis
from tests.support.servers import start_seaweedfs as start_s3
from tests.support.stack import REPO_ROOT, app_environment

pytestmark = pytest.mark.integration


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


# --- processes ------------------------------------------------------------------------


def test_terminate_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "print('ig' + 'noring', flush=True); time.sleep(60)"
    )
    proc = ManagedProcess(_python(code), log_path=tmp_path / "stubborn.log")
    wait_until(lambda: "ignoring" in proc.log_since_start(), 10, what="the handler", proc=proc)

    status = proc.terminate(timeout_s=0.5)

    assert status == -signal.SIGKILL
    assert "did not exit 0.5s after SIGTERM: SIGKILL" in proc.log_text()
    assert not proc.is_running()


def test_waiting_on_a_process_that_exits_fails_at_once_with_its_log(tmp_path: Path) -> None:
    proc = ManagedProcess(
        _python("import sys; print('bad config'); sys.exit(3)"), log_path=tmp_path / "x.log"
    )

    with pytest.raises(ProcessStartError, match="bad config"):
        wait_for_port("127.0.0.1", free_port(), 30, proc=proc)
    assert proc.returncode == 3


def test_waiting_past_the_deadline_raises_saying_what_it_waited_for() -> None:
    url = f"http://127.0.0.1:{free_port()}/healthz"
    with pytest.raises(ProcessStartError) as caught:
        wait_for_http(url, 0.3)
    assert str(caught.value).startswith(f"timed out after 0.3s waiting for GET {url} -> 200 (last error:")


def test_app_environment_replaces_callers_mjhook_variables() -> None:
    env = app_environment(
        redis_url="redis://127.0.0.1:1/0",
        s3_endpoint="http://127.0.0.1:2",
        s3_access_key="ak",
        s3_secret_key="sk",
        s3_bucket="b",
        base={"PATH": "/bin", "MJHOOK_API_TOKEN": "leak", "PYTHONPATH": "/elsewhere"},
    )

    assert "MJHOOK_API_TOKEN" not in env
    assert env["PATH"] == "/bin"
    assert env["PYTHONPATH"].split(":") == [str(REPO_ROOT), "/elsewhere"]
    assert env["MJHOOK_REDIS_URL"] == "redis://127.0.0.1:1/0"
    assert env["MJHOOK_FETCH_ALLOW"] == "127.0.0.1,::1,localhost"


# --- redis ----------------------------------------------------------------------------


def test_redis_fixture_is_private_and_empty(redis_server: RedisServer) -> None:
    client = redis_server.client()

    assert redis_server.port != 6379
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert client.dbsize() == 0
    client.set("k", "v")
    assert client.get("k") == b"v"


def test_redis_stop_refuses_connections_and_start_brings_it_back(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis", appendonly=True)
    try:
        client = server.client()
        client.set("kept", "yes")

        server.stop()
        with pytest.raises(redis.ConnectionError):
            client.ping()

        server.start()
        assert client.get("kept") == b"yes"  # the AOF survived on the same port and dir
    finally:
        server.kill()


def test_redis_without_appendonly_comes_back_empty(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis")
    try:
        server.client().set("lost", "yes")
        server.kill()
        server.start()
        assert server.client().dbsize() == 0
    finally:
        server.kill()


# --- SeaweedFS ------------------------------------------------------------------------


def test_s3_round_trips_objects_byte_for_byte(s3_server: S3Server, s3_bucket: str) -> None:
    client = s3_server.client()
    small = png_bytes(1)
    large = png_bytes(2, width=1600, height=1200)  # ~5.8 MB: several filer chunks

    client.make_bucket(s3_bucket)
    client.put_object(s3_bucket, "a/small.png", io.BytesIO(small), len(small), content_type="image/png")
    client.put_object(s3_bucket, "a/large.png", io.BytesIO(large), len(large), content_type="image/png")

    assert client.get_object(s3_bucket, "a/small.png").read() == small
    assert client.get_object(s3_bucket, "a/large.png").read() == large
    stat = client.stat_object(s3_bucket, "a/small.png")
    assert stat.size == len(small)
    assert stat.content_type == "image/png"
    names = sorted(o.object_name or "" for o in client.list_objects(s3_bucket, prefix="a/"))
    assert names == ["a/large.png", "a/small.png"]


def test_s3_presigned_get_works_with_a_plain_http_client(s3_server: S3Server, s3_bucket: str) -> None:
    client = s3_server.client()
    body = png_bytes(3)
    client.make_bucket(s3_bucket)
    client.put_object(s3_bucket, "p.png", io.BytesIO(body), len(body))

    url = client.presigned_get_object(s3_bucket, "p.png", expires=timedelta(minutes=5))
    response = httpx.get(url, timeout=10)

    assert response.status_code == 200
    assert response.content == body


def test_s3_rejects_wrong_credentials(s3_server: S3Server) -> None:
    intruder = Minio(s3_server.host, access_key="mjhook", secret_key="wrong", secure=False)

    with pytest.raises(Exception, match=r"SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
        intruder.list_buckets()


def test_s3_killed_and_started_again_keeps_the_data(tmp_path: Path) -> None:
    server = start_s3(tmp_path / "s3")
    try:
        client = server.client()
        client.make_bucket("keep")
        before = png_bytes(10)
        client.put_object("keep", "before.png", io.BytesIO(before), len(before))

        server.kill()  # a crash: acknowledged writes survive it
        assert not server.is_running()
        server.start()

        assert client.get_object("keep", "before.png").read() == before
        # New writes after a restart must not reuse file ids of the old ones.
        after = png_bytes(11)
        client.put_object("keep", "after.png", io.BytesIO(after), len(after))

        server.kill()
        server.start()

        assert client.get_object("keep", "before.png").read() == before
        assert client.get_object("keep", "after.png").read() == after
    finally:
        server.kill()


# --- file server ----------------------------------------------------------------------


def test_file_server_serves_registered_bytes_and_counts_hits(file_server: FileServer) -> None:
    body = png_bytes(4)
    url = file_server.add("/img/a.png", body)

    first = httpx.get(url + "?sig=1")
    second = httpx.get(url)

    assert first.status_code == second.status_code == 200
    assert first.content == body
    assert first.headers["content-type"] == "image/png"
    assert int(first.headers["content-length"]) == len(body)
    assert file_server.hits["/img/a.png"] == 2


def test_file_server_404s_unknown_paths(file_server: FileServer) -> None:
    response = httpx.get(file_server.url("/nope.png"))

    assert response.status_code == 404
    assert file_server.hits["/nope.png"] == 1


def test_file_server_serves_error_statuses(file_server: FileServer) -> None:
    file_server.add("/busy", b"try later", status=503, content_type="text/plain")

    assert httpx.get(file_server.url("/busy")).status_code == 503


def test_file_server_redirects(file_server: FileServer) -> None:
    body = png_bytes(5)
    file_server.add("/real.png", body)
    url = file_server.add_redirect("/short", "/real.png")

    response = httpx.get(url, follow_redirects=True)

    assert response.content == body
    assert [r.status_code for r in response.history] == [302]
    assert file_server.hits == {"/short": 1, "/real.png": 1}


def test_file_server_streams_slowly_when_asked(file_server: FileServer) -> None:
    body = bytes(4 * 1024)
    url = file_server.add("/slow", body, chunk_size=1024, chunk_delay_s=0.1)

    with httpx.stream("GET", url) as response:
        pieces = list(response.iter_raw())

    assert b"".join(pieces) == body
    # Sent a piece at a time with pauses between (a client stalled longer than a pause may get two
    # at once, never all four in one read)
    assert len(pieces) > 1


def test_file_server_headers_replace_the_defaults(file_server: FileServer) -> None:
    url = file_server.add("/cut", b"x" * 10, headers={"content-length": "20", "X-Extra": "1"})

    with httpx.stream("GET", url) as response:
        assert response.headers.get_list("content-length") == ["20"]
        assert response.headers["x-extra"] == "1"
        with pytest.raises(httpx.RemoteProtocolError):
            response.read()


def test_file_server_slow_download_can_time_out(file_server: FileServer) -> None:
    url = file_server.add("/stall", bytes(64 * 1024), chunk_size=1024, chunk_delay_s=1.0)

    with pytest.raises(httpx.ReadTimeout):
        httpx.get(url, timeout=httpx.Timeout(5.0, read=0.3))


# --- images ---------------------------------------------------------------------------


def test_png_bytes_is_a_decodable_png_reproducible_per_seed() -> None:
    data = png_bytes(7, width=64, height=32)

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.format == "PNG"
        assert image.size == (64, 32)
    assert png_bytes(7, width=64, height=32) == data
    assert png_bytes(8, width=64, height=32) != data
