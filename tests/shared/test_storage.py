"""The object store signs a one-request upload with the sha256 the fetcher computed, so a stored
file is hashed once, not twice; larger files still go in parts minio hashes itself."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pytest
import urllib3

from shared.errors import ObjectChanged, StorageUnavailable
from shared.settings import Settings
from shared.storage import (
    DEFAULT_REGION,
    PAYLOAD_SHA256_HEADER,
    SINGLE_PUT_MAX_BYTES,
    ObjectStore,
    Precondition,
    create_object_store,
    pool_size_for,
)
from tests.support.servers import S3Server
from tests.support.stack import app_environment

pytestmark = pytest.mark.integration


class RecordingPoolManager(urllib3.PoolManager):
    """A real pool that also keeps the method and headers of every request it sends."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sent: list[tuple[str, dict[str, str]]] = []

    def urlopen(self, method: str, url: str, redirect: bool = True, **kw: Any) -> Any:
        self.sent.append((method, dict(kw.get("headers") or {})))
        return super().urlopen(method, url, redirect=redirect, **kw)


def _store(
    s3_server: S3Server,
    bucket: str,
    pool_class: type[RecordingPoolManager] = RecordingPoolManager,
    *,
    pool_size: int = 16,
) -> tuple[ObjectStore, list[RecordingPoolManager]]:
    env = app_environment(
        redis_url="redis://127.0.0.1:9/0",
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        s3_bucket=bucket,
    )
    pools: list[RecordingPoolManager] = []

    def factory(**kwargs: Any) -> RecordingPoolManager:
        pools.append(pool_class(**kwargs))
        return pools[-1]

    store = create_object_store(Settings.from_env(env), http_factory=factory, pool_size=pool_size)
    store.ensure_bucket()
    pools[0].sent.clear()  # making the bucket is a PUT too
    return store, pools


def _puts(pool: RecordingPoolManager) -> list[dict[str, str]]:
    return [headers for method, headers in pool.sent if method == "PUT"]


def test_a_file_sent_in_one_put_is_signed_with_the_sha256_the_caller_gave(
    s3_server: S3Server, s3_bucket: str
) -> None:
    # Given a store and a downloaded file with its sha256
    store, pools = _store(s3_server, s3_bucket)
    body = os.urandom(1_500_000)
    digest = hashlib.sha256(body).hexdigest()

    # When it is stored
    store.put_file("tasks/t/0.png", io.BytesIO(body), size=len(body), content_type="image/png", sha256=digest)

    # Then the PUT carries that hash as its signed payload hash, and the bytes are stored intact
    (headers,) = _puts(pools[0])
    assert headers[PAYLOAD_SHA256_HEADER] == digest
    assert headers["Content-Length"] == str(len(body))
    assert store.get_bytes("tasks/t/0.png") == body
    stored = store.stat("tasks/t/0.png")
    assert stored is not None
    assert stored.sha256 == digest
    assert stored.size == len(body)


def test_a_file_over_one_part_is_uploaded_in_parts_each_hashed_by_minio(
    s3_server: S3Server, s3_bucket: str
) -> None:
    # Given a file larger than minio sends in one request
    store, pools = _store(s3_server, s3_bucket)
    body = os.urandom(SINGLE_PUT_MAX_BYTES + 1000)
    digest = hashlib.sha256(body).hexdigest()

    # When it is stored
    store.put_file("tasks/t/0.mp4", io.BytesIO(body), size=len(body), content_type="video/mp4", sha256=digest)

    # Then each part is signed with its own hash, none with the whole file's
    # (minio uploads the parts in parallel, so in any order)
    part_hashes = {headers[PAYLOAD_SHA256_HEADER] for headers in _puts(pools[0])}
    assert part_hashes == {
        hashlib.sha256(body[:SINGLE_PUT_MAX_BYTES]).hexdigest(),
        hashlib.sha256(body[SINGLE_PUT_MAX_BYTES:]).hexdigest(),
    }
    assert store.get_bytes("tasks/t/0.mp4") == body
    stored = store.stat("tasks/t/0.mp4")
    assert stored is not None
    assert stored.sha256 == digest


def test_other_requests_are_signed_with_their_own_body_hash(s3_server: S3Server, s3_bucket: str) -> None:
    # Given a store
    store, pools = _store(s3_server, s3_bucket)

    # When a manifest (no known hash) is stored
    store.put_json("tasks/t/manifest.json", {"taskId": "t"})

    # Then minio hashed its body itself
    (headers,) = _puts(pools[0])
    body = store.get_bytes("tasks/t/manifest.json")
    assert body is not None
    assert headers[PAYLOAD_SHA256_HEADER] == hashlib.sha256(body).hexdigest()


def test_remove_deletes_an_object_and_a_missing_one_is_no_error(s3_server: S3Server, s3_bucket: str) -> None:
    """Given a store holding a task's file and its manifest
    When the file is removed, and then removed again
    Then the file is gone, the manifest is kept, and the second removal changes nothing."""
    store, _ = _store(s3_server, s3_bucket)
    body = b"\x89PNG\r\n\x1a\n stale"
    store.put_file(
        "tasks/t/0.png",
        io.BytesIO(body),
        size=len(body),
        content_type="image/png",
        sha256=hashlib.sha256(body).hexdigest(),
    )
    store.put_json("tasks/t/manifest.json", {"taskId": "t"})

    store.remove("tasks/t/0.png")
    store.remove("tasks/t/0.png")

    assert store.list_keys("tasks/t/") == ["tasks/t/manifest.json"]
    assert store.stat("tasks/t/0.png") is None


def test_a_conditional_write_replaces_only_the_object_it_expects(s3_server: S3Server, s3_bucket: str) -> None:
    """Given a manifest written where there was none, and its ETag as a listing shows it
    When another write expects no manifest, or expects an ETag the manifest no longer has
    Then the store refuses it (ObjectChanged) and the object keeps its bytes; a write expecting
    the listed ETag replaces it, and its conditions reached the store as real headers."""
    store, pools = _store(s3_server, s3_bucket)
    key = "tasks/t/manifest.json"
    store.put_json(key, {"writer": "first"}, precondition=Precondition(None))
    first_etag = store.list_etags("tasks/t/")[key]

    with pytest.raises(ObjectChanged):
        store.put_json(key, {"writer": "second"}, precondition=Precondition(None))
    store.put_json(key, {"writer": "third"}, precondition=Precondition(first_etag))
    with pytest.raises(ObjectChanged):
        store.put_json(key, {"writer": "fourth"}, precondition=Precondition(first_etag))

    assert store.get_json(key) == {"writer": "third"}
    conditions = [
        {name: value for name, value in headers.items() if name.lower().startswith(("if-", "x-amz-mjhook"))}
        for headers in _puts(pools[0])
    ]
    assert conditions == [
        {"If-None-Match": "*"},
        {"If-None-Match": "*"},
        {"If-Match": f'"{first_etag}"'},
        {"If-Match": f'"{first_etag}"'},
    ]


class NoConditionsPoolManager(RecordingPoolManager):
    """A store that does not implement conditional writes: it answers them 501 NotImplemented, as
    AWS S3 did before it had them (stands in for that store; the rest reaches the real one)."""

    def urlopen(self, method: str, url: str, redirect: bool = True, **kw: Any) -> Any:
        headers = kw.get("headers") or {}
        if method == "PUT" and ("If-Match" in headers or "If-None-Match" in headers):
            self.sent.append((method, dict(headers)))
            body = (
                b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>NotImplemented</Code>'
                b"<Message>A header you provided implies functionality that is not implemented</Message>"
                b"</Error>"
            )
            return urllib3.HTTPResponse(
                body=body, status=501, headers={"Content-Type": "application/xml"}, preload_content=True
            )
        return super().urlopen(method, url, redirect=redirect, **kw)


def test_a_store_without_conditional_writes_has_the_object_read_first(
    s3_server: S3Server, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a store that answers conditional writes 501 NotImplemented
    When manifests are written with preconditions
    Then each is checked by reading the object first (a warning says so, once): one expecting no
    object where there is one is refused, one expecting the ETag there is written, and none fails
    as an outage. Such writes were plain: a give-up's manifest replaced the one a task had."""
    store, _ = _store(s3_server, s3_bucket, NoConditionsPoolManager)
    key = "tasks/t/manifest.json"
    with caplog.at_level("WARNING", logger="shared.storage"):
        store.put_json(key, {"writer": "first"}, precondition=Precondition(None))
        with pytest.raises(ObjectChanged):
            store.put_json(key, {"writer": "second"}, precondition=Precondition(None))
        store.put_json(key, {"writer": "third"}, precondition=Precondition(store.list_etags("tasks/t/")[key]))
    assert store.get_json(key) == {"writer": "third"}
    assert [record.getMessage() for record in caplog.records] == [
        f"object storage does not implement conditional writes; {key} is read first"
    ]


def test_a_store_without_conditional_writes_refuses_a_write_expecting_a_stale_etag(
    s3_server: S3Server, s3_bucket: str
) -> None:
    """Given a store that answers conditional writes 501 NotImplemented, and a manifest replaced
    since its ETag was listed
    When a write expecting that listed ETag comes
    Then it is refused (ObjectChanged) and the newer manifest stands: the read first compares the
    ETag there with the one expected, not only whether there is an object."""
    store, _ = _store(s3_server, s3_bucket, NoConditionsPoolManager)
    key = "tasks/t/manifest.json"
    store.put_json(key, {"writer": "first"}, precondition=Precondition(None))
    first_etag = store.list_etags("tasks/t/")[key]
    store.put_json(key, {"writer": "second"}, precondition=Precondition(first_etag))

    with pytest.raises(ObjectChanged):
        store.put_json(key, {"writer": "stale"}, precondition=Precondition(first_etag))

    assert store.get_json(key) == {"writer": "second"}


def test_a_big_manifest_is_written_in_one_conditional_put(s3_server: S3Server, s3_bucket: str) -> None:
    """Given a manifest over 5 MiB (a deep promptJson under a raised MJHOOK_MAX_PROMPT_JSON_BYTES)
    When it is written expecting no manifest where there is one
    Then it is refused: it goes in one PUT carrying the condition. minio sent it as a multipart
    upload, whose condition the store never checked: the fence was gone."""
    store, pools = _store(s3_server, s3_bucket)
    key = "tasks/t/manifest.json"
    store.put_json(key, {"writer": "first"}, precondition=Precondition(None))
    big = {"params": ["0" * 100] * (SINGLE_PUT_MAX_BYTES // 90)}

    with pytest.raises(ObjectChanged):
        store.put_json(key, big, precondition=Precondition(None))
    assert store.get_json(key) == {"writer": "first"}
    assert [method for method, _ in pools[0].sent].count("POST") == 0  # no multipart upload begun


class AnswerLostPoolManager(RecordingPoolManager):
    """A real store whose answer to the first conditional PUT is lost on the way back: the request
    is sent again, as urllib3 does after a read error, and its answer is the one the client gets."""

    def urlopen(self, method: str, url: str, redirect: bool = True, **kw: Any) -> Any:
        headers = kw.get("headers") or {}
        if method == "PUT" and "If-None-Match" in headers and not getattr(self, "lost", False):
            self.lost = True
            super().urlopen(method, url, redirect=redirect, **kw).drain_conn()
        return super().urlopen(method, url, redirect=redirect, **kw)


def test_a_conditional_write_refused_because_it_landed_already_is_no_refusal(
    s3_server: S3Server, s3_bucket: str
) -> None:
    """Given a conditional write that landed, whose answer was lost and the request sent again
    When the store refuses the second request (the object is there now: our own)
    Then the write counts as done. It was taken for another worker's write: the attempt was
    retried, and on its last one the task could end failed beside its own stored manifest."""
    store, _ = _store(s3_server, s3_bucket, AnswerLostPoolManager)
    key = "tasks/t/manifest.json"

    store.put_json(key, {"writer": "us"}, precondition=Precondition(None))

    assert store.get_json(key) == {"writer": "us"}
    with pytest.raises(ObjectChanged):
        store.put_json(key, {"writer": "another"}, precondition=Precondition(None))


class OfflinePool(urllib3.PoolManager):
    """Answers every request itself (HEAD of the bucket: 404, anything else: 200), never
    connecting anywhere, and records what was sent."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sent: list[tuple[str, str, bytes | None]] = []

    def urlopen(self, method: str, url: str, redirect: bool = True, **kw: Any) -> Any:  # type: ignore[override]
        self.sent.append((method, url, kw.get("body")))
        return urllib3.HTTPResponse(body=b"", status=404 if method == "HEAD" else 200, preload_content=True)


def offline_store(endpoint: str, **settings: Any) -> tuple[ObjectStore, list[OfflinePool]]:
    pools: list[OfflinePool] = []

    def factory(**kwargs: Any) -> OfflinePool:
        pools.append(OfflinePool(**kwargs))
        return pools[-1]

    configured = Settings(s3_endpoint=endpoint, s3_access_key="AKIDEXAMPLE", s3_secret_key="x", **settings)
    return create_object_store(configured, http_factory=factory), pools


def test_an_aws_regional_endpoint_is_used_in_its_region() -> None:
    """Given AWS S3 in eu-west-1 and no region configured
    When the worker makes its bucket and a link is presigned
    Then every request goes to that endpoint, the bucket is made in eu-west-1, and the link names
    it. The region setting's old default, us-east-1, replaced the host's: the bucket was made in
    us-east-1 and every request went there."""
    store, pools = offline_store("https://s3.eu-west-1.amazonaws.com", s3_bucket="acme-results")

    store.ensure_bucket()
    link = store.presigned_url("tasks/t/0.png", expires_s=600)

    hosts = {urlsplit(url).netloc for _, url, _ in pools[0].sent}
    assert hosts <= {"s3.eu-west-1.amazonaws.com", "acme-results.s3.eu-west-1.amazonaws.com"}
    [create] = [body for method, _, body in pools[0].sent if method == "PUT"]
    assert b"<LocationConstraint>eu-west-1</LocationConstraint>" in (create or b"")
    assert urlsplit(link).netloc == "acme-results.s3.eu-west-1.amazonaws.com"


@pytest.mark.parametrize("region", ["", "eu-central-1"])
def test_a_store_that_is_not_aws_presigns_without_a_request(region: str) -> None:
    """MinIO and SeaweedFS sign with any region: without one configured, us-east-1, so the
    ingress presigns links without asking the store (which may be away)."""
    store, pools = offline_store("http://127.0.0.1:9000", s3_region=region)
    link = store.presigned_url("tasks/t/0.png", expires_s=600)
    assert pools[0].sent == []
    assert f"%2F{region or DEFAULT_REGION}%2Fs3%2Faws4_request" in link


def test_the_pool_holds_the_connections_of_files_uploaded_at_once_in_parts(
    s3_server: S3Server, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a store sized for 2 uploads at once (as a worker with MJHOOK_DOWNLOAD_CONCURRENCY=2)
    When 2 files of 3 parts each are stored at once (their parts 3 at a time)
    Then no connection is thrown away: a pool of twice the uploads (as it was) had urllib3 open
    connections and discard them ("Connection pool is full")."""
    store, _ = _store(s3_server, s3_bucket, pool_size=pool_size_for(2))
    bodies = [os.urandom(2 * SINGLE_PUT_MAX_BYTES + 1000) for _ in range(2)]
    barrier = threading.Barrier(2)

    def put(index: int) -> None:
        body = bodies[index]
        barrier.wait(10)
        store.put_file(
            f"tasks/t/{index}.mp4",
            io.BytesIO(body),
            size=len(body),
            content_type="video/mp4",
            sha256=hashlib.sha256(body).hexdigest(),
        )

    with caplog.at_level(logging.WARNING, logger="urllib3.connectionpool"), ThreadPoolExecutor(2) as uploads:
        list(uploads.map(put, range(2)))
    assert [record.getMessage() for record in caplog.records if "pool is full" in record.getMessage()] == []
    assert [store.get_bytes(f"tasks/t/{index}.mp4") for index in range(2)] == bodies


class _CompletionFailsAfter200(BaseHTTPRequestHandler):
    """An S3 endpoint whose CompleteMultipartUpload answers 200 with an <Error> body, as AWS
    documents it may (the failure came after the status went out); parts are taken, nothing
    stored."""

    protocol_version = "HTTP/1.1"
    aborted: ClassVar[list[str]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        if "uploads" in self.path:
            body = b"<InitiateMultipartUploadResult><UploadId>u1</UploadId></InitiateMultipartUploadResult>"
        else:
            body = b"<Error><Code>InternalError</Code><Message>Please try again.</Message></Error>"
        self._answer(200, body, Content_Type="application/xml")

    def do_PUT(self) -> None:
        self._answer(200, ETag='"0123456789abcdef0123456789abcdef"')

    def do_DELETE(self) -> None:
        self.aborted.append(self.path)
        self._answer(204)


def test_a_multipart_upload_answered_200_with_an_error_is_not_taken_for_stored() -> None:
    """Given object storage answering CompleteMultipartUpload 200 with an <Error> body
    When a file over the single-PUT size is stored
    Then put_file raises StorageUnavailable (transient: retried) and the upload is aborted; minio
    read the error as a result, and the file, never stored, was listed in a stored manifest."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CompletionFailsAfter200)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        store = create_object_store(
            Settings(s3_endpoint=endpoint, s3_access_key="k", s3_secret_key="s", s3_bucket="bucket"),
            retries=0,
        )
        data = bytes(SINGLE_PUT_MAX_BYTES + 1)
        with pytest.raises(StorageUnavailable, match="did not complete"):
            store.put_file(
                "tasks/t/0.mp4",
                io.BytesIO(data),
                size=len(data),
                content_type="video/mp4",
                sha256=hashlib.sha256(data).hexdigest(),
            )
        assert any("uploadId=u1" in path for path in _CompletionFailsAfter200.aborted)
    finally:
        server.shutdown()
        server.server_close()
