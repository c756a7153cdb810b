"""The object store: a thin wrapper over the ``minio`` client that speaks in keys and maps the
client's many failure types onto our error tree."""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import IO, Any
from urllib.parse import urlsplit

import orjson
import urllib3
from minio import Minio
from minio.credentials.credentials import Credentials
from minio.datatypes import CompleteMultipartUploadResult
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from minio.helpers import MIN_PART_SIZE, BaseURL

from shared.errors import BucketMissing, ConfigError, ObjectChanged, StorageUnavailable
from shared.settings import Settings

log = logging.getLogger(__name__)

#: The region requests to a store that is not AWS are signed for (MinIO's default).
DEFAULT_REGION = "us-east-1"
#: User metadata key holding a stored file's sha256 (sent as ``x-amz-meta-sha256``).
SHA256_META = "sha256"
#: User metadata key holding the sha256 of the URL a file was downloaded from (sent as
#: ``x-amz-meta-source-url-sha256``). A digest, not the URL: S3 takes at most 2 KB of user
#: metadata, in ASCII, while a result URL may be 4 KB long and carry signed query parameters.
SOURCE_URL_SHA256_META = "source-url-sha256"

#: Object keys of a task: its files and its manifest, which is written last.
TASK_PREFIX = "tasks/{task_id}/"
MANIFEST_NAME = "manifest.json"

#: Bytes read at a time when an object is streamed to a file.
DEFAULT_CHUNK_BYTES = 1024 * 1024

#: Signature v4's payload hash header: the hex sha256 of the request body (AWS S3 and MinIO check it).
PAYLOAD_SHA256_HEADER = "x-amz-content-sha256"
#: Largest file minio sends in one PUT (5 MiB, its smallest multipart part); larger ones go in parts.
SINGLE_PUT_MAX_BYTES = MIN_PART_SIZE
#: Parts of one multipart upload sent at once (minio's own default, named here: the connection
#: pool is sized for it, :func:`pool_size_for`).
PARALLEL_PART_UPLOADS = 3

#: Stand-ins minio passes through untouched (an ``x-amz-`` prefix), renamed to the real
#: conditional-write headers by :class:`KnownHashMinio` (minio 7.2 would send ``If-Match`` given as
#: metadata as ``x-amz-meta-if-match``).
_IF_MATCH_MARK = "x-amz-mjhook-if-match"
_IF_NONE_MATCH_MARK = "x-amz-mjhook-if-none-match"
_CONDITION_HEADERS = {_IF_MATCH_MARK: "If-Match", _IF_NONE_MATCH_MARK: "If-None-Match"}
#: S3 error codes of a conditional write refused because the object is not as expected.
_CHANGED = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})


def task_prefix(task_id: str) -> str:
    return TASK_PREFIX.format(task_id=task_id)


def file_key(task_id: str, index: int, ext: str) -> str:
    return f"{task_prefix(task_id)}{index}.{ext}"


def manifest_key(task_id: str) -> str:
    return task_prefix(task_id) + MANIFEST_NAME


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    size: int
    content_type: str
    sha256: str | None
    source_url_sha256: str | None = None
    #: The store's ETag of the object, unquoted.
    etag: str = ""

    def came_from(self, url: str) -> bool:
        """Whether the object was downloaded from ``url``; False when it was stored without its
        source (by a version of mjhook that did not record it)."""
        return self.source_url_sha256 is not None and self.source_url_sha256 == source_url_digest(url)


@dataclass(frozen=True, slots=True)
class Precondition:
    """What a conditional write expects of the object it replaces: its ETag, or (``etag`` None)
    that there is none yet. The write is refused (:class:`ObjectChanged`) when another writer
    got there first. An empty ETag (a listing that gave none) expects nothing: a plain write."""

    etag: str | None

    @property
    def fences(self) -> bool:
        return self.etag != ""

    def headers(self) -> dict[str, str]:
        if self.etag is None:
            return {_IF_NONE_MATCH_MARK: "*"}
        return {_IF_MATCH_MARK: '"' + self.etag.strip('"') + '"'}


def source_url_digest(url: str) -> str:
    """What :data:`SOURCE_URL_SHA256_META` holds for ``url``: its hex sha256."""
    return hashlib.sha256(url.encode()).hexdigest()


class KnownHashMinio(Minio):
    """A ``Minio`` client that sends the conditional-write headers of a :class:`Precondition`
    (which minio 7.2's ``put_object`` cannot), and that signs a one-request upload with the body's
    sha256 when the caller already knows it (``put_file``: the fetcher hashed every byte as it
    arrived), instead of hashing the body a second time: a whole sha256 pass per stored file. A
    store that checks the signed hash against the bytes it receives (AWS S3, MinIO; SeaweedFS
    checks neither hash) then refuses a body that is not what was downloaded. ``_build_headers`` is
    minio's own (7.2) hook; tests/shared/test_storage.py proves on every run that the signed hash is
    still the caller's."""

    def _build_headers(
        self,
        host: str,
        headers: dict[str, Any] | None = None,
        body: bytes | None = None,
        creds: Credentials | None = None,
    ) -> tuple[dict[str, Any], Any]:
        headers = _with_conditions(headers)
        known = (headers or {}).get(PAYLOAD_SHA256_HEADER)
        if not known or not body or creds is None or self._base_url.is_https:
            # No known hash (or HTTPS, where minio sends UNSIGNED-PAYLOAD): minio's own way.
            return super()._build_headers(host, _without_payload_hash(headers), body, creds)
        # An empty body costs minio no hashing; only Content-Length and the hash depend on it.
        built, date = super()._build_headers(host, headers, b"", creds)
        built["Content-Length"] = str(len(body))
        built[PAYLOAD_SHA256_HEADER] = known
        return built, date

    def _complete_multipart_upload(self, *args: Any, **kwargs: Any) -> CompleteMultipartUploadResult:
        # S3 may answer CompleteMultipartUpload 200 with an <Error> body (the failure came after
        # the status went out: AWS documents it); minio 7.2 reads it as a result without an ETag,
        # and the file, never stored, would be listed in a stored manifest. put_object aborts the
        # upload on this error and raises it.
        result: CompleteMultipartUploadResult = super()._complete_multipart_upload(*args, **kwargs)
        if not result.etag:
            raise StorageUnavailable("object storage did not complete a multipart upload (no ETag)")
        return result


def _with_conditions(headers: dict[str, Any] | None) -> dict[str, Any] | None:
    """``headers`` with the stand-ins of :class:`Precondition` under their real names."""
    if not headers or not any(mark in headers for mark in _CONDITION_HEADERS):
        return headers
    return {_CONDITION_HEADERS.get(key, key): value for key, value in headers.items()}


def _without_payload_hash(headers: dict[str, Any] | None) -> dict[str, Any] | None:
    if not headers or PAYLOAD_SHA256_HEADER not in headers:
        return headers
    return {key: value for key, value in headers.items() if key != PAYLOAD_SHA256_HEADER}


class ObjectStore:
    """One bucket of an S3-compatible store."""

    def __init__(self, client: Minio, bucket: str) -> None:
        self._client = client
        self.bucket = bucket
        #: False once the store answered a conditional write NotImplemented: the object is read first then.
        self._conditions = True

    def ensure_bucket(self) -> None:
        """Create the bucket when it does not exist."""
        with _storage_errors():
            if not self._client.bucket_exists(self.bucket):
                try:
                    self._client.make_bucket(self.bucket)
                except S3Error as exc:
                    # Another worker made it between our check and our call.
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

    def put_file(
        self,
        key: str,
        data: IO[bytes],
        *,
        size: int,
        content_type: str,
        sha256: str,
        source_url: str | None = None,
    ) -> None:
        """Store ``size`` bytes read from ``data``, whose hex ``sha256`` the caller computed; it is
        kept as the object's metadata and, for a file sent in one PUT, signs the request too.
        ``source_url``, the URL the bytes came from, is kept as its digest
        (:meth:`StoredObject.came_from`)."""
        metadata: dict[str, str | list[str] | tuple[str]] = {SHA256_META: sha256}
        if source_url is not None:
            metadata[SOURCE_URL_SHA256_META] = source_url_digest(source_url)
        if size <= SINGLE_PUT_MAX_BYTES:
            # Read by KnownHashMinio; a plain Minio client replaces it with its own hash.
            metadata[PAYLOAD_SHA256_HEADER] = sha256
        with _storage_errors():
            self._client.put_object(
                self.bucket,
                key,
                data,  # type: ignore[arg-type]  # minio only reads it
                size,
                content_type=content_type,
                metadata=metadata,
                num_parallel_uploads=PARALLEL_PART_UPLOADS,
            )

    def put_json(self, key: str, document: Any, *, precondition: Precondition | None = None) -> None:
        """Store ``document`` as JSON, in one PUT whatever its size (a multipart upload would carry
        no condition); with a ``precondition``, only while the object is as it expects (else
        :class:`ObjectChanged`, nothing written). A refusal of our own write (its answer lost and
        the request sent again) is no refusal. A store that does not implement conditional writes
        (it answers NotImplemented; a warning says so, once) has the object read first: the check
        and the write are then two steps, not one."""
        body = orjson.dumps(document, option=orjson.OPT_INDENT_2)
        with _storage_errors():
            if precondition is None or not precondition.fences:
                self._put_bytes(key, body, None)
                return
            if not self._conditions:
                self._check(key, precondition)
                self._put_bytes(key, body, None)
                return
            try:
                self._put_bytes(key, body, precondition.headers())
            except S3Error as exc:
                if exc.code in _CHANGED:
                    if self._etag(key) == hashlib.md5(body, usedforsecurity=False).hexdigest():
                        return
                    raise ObjectChanged(f"{key} changed since it was read ({exc.code})") from exc
                if exc.code != "NotImplemented":
                    raise
                log.warning("object storage does not implement conditional writes; %s is read first", key)
                self._conditions = False
                self._check(key, precondition)
                self._put_bytes(key, body, None)

    def _check(self, key: str, precondition: Precondition) -> None:
        """Raise :class:`ObjectChanged` unless the object is now as ``precondition`` expects."""
        if self._etag(key) != precondition.etag:
            raise ObjectChanged(f"{key} changed since it was read")

    def _etag(self, key: str) -> str | None:
        """The object's ETag (unquoted), or None when it does not exist."""
        stored = self.stat(key)
        return stored.etag if stored is not None else None

    def _put_bytes(self, key: str, body: bytes, headers: dict[str, str] | None) -> None:
        self._client.put_object(
            self.bucket,
            key,
            io.BytesIO(body),
            len(body),
            content_type="application/json",
            metadata=headers,  # type: ignore[arg-type]  # minio's alias is narrower than it takes
            part_size=max(MIN_PART_SIZE, len(body)),
        )

    def get_bytes(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        sink = io.BytesIO()
        return sink.getvalue() if self.stream_to(key, sink) else None

    def stream_to(
        self,
        key: str,
        sink: IO[bytes],
        *,
        on_chunk: Callable[[bytes], None] | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> bool:
        """Write the object into ``sink`` as it arrives, ``chunk_bytes`` at a time, calling
        ``on_chunk`` with each chunk (to hash or count it); False when it does not exist."""
        with _storage_errors():
            try:
                response = self._client.get_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in _MISSING:
                    return False
                raise
            try:
                for chunk in response.stream(chunk_bytes):
                    sink.write(chunk)
                    if on_chunk is not None:
                        on_chunk(chunk)
                return True
            finally:
                response.close()
                response.release_conn()

    def get_json(self, key: str) -> Any:
        body = self.get_bytes(key)
        return None if body is None else orjson.loads(body)

    def stat(self, key: str) -> StoredObject | None:
        """Size, type, recorded sha256 and source of an object, or None when it does not exist."""
        with _storage_errors():
            try:
                info = self._client.stat_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in _MISSING:
                    return None
                raise
        metadata = info.metadata or {}
        return StoredObject(
            key=key,
            size=int(info.size or 0),
            content_type=info.content_type or "",
            sha256=_user_metadata(metadata, SHA256_META),
            source_url_sha256=_user_metadata(metadata, SOURCE_URL_SHA256_META),
            etag=(info.etag or "").strip('"'),
        )

    def remove(self, key: str) -> None:
        """Delete the object; nothing happens when it does not exist."""
        with _storage_errors():
            self._client.remove_object(self.bucket, key)

    def list_keys(self, prefix: str) -> list[str]:
        return list(self.list_etags(prefix))

    def list_etags(self, prefix: str) -> dict[str, str]:
        """Every object under ``prefix``, by key, with its ETag (unquoted)."""
        with _storage_errors():
            return {
                obj.object_name: (obj.etag or "").strip('"')
                for obj in self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
                if obj.object_name
            }

    def presigned_url(self, key: str, *, expires_s: int, content_type: str | None = None) -> str:
        """A download URL of ``key`` valid ``expires_s`` seconds. The store is told how to serve
        it: as ``content_type`` when it is a media type the workers store, else as an attachment of
        no particular type, so that an object another writer put there (HTML, SVG) is never
        rendered as a page from the bucket's origin."""
        headers: dict[str, str | list[str] | tuple[str]]
        if content_type in SERVED_CONTENT_TYPES:
            headers = {"response-content-type": content_type}
        else:
            headers = {
                "response-content-type": "application/octet-stream",
                "response-content-disposition": "attachment",
            }
        with _storage_errors():
            return self._client.presigned_get_object(
                self.bucket, key, expires=timedelta(seconds=expires_s), response_headers=headers
            )


def _user_metadata(metadata: Mapping[str, str], name: str) -> str | None:
    """One ``x-amz-meta-*`` value of a stat's response headers, however the store cased it."""
    return metadata.get("x-amz-meta-" + name) or metadata.get("X-Amz-Meta-" + name.title()) or None


#: The media types the workers store (workers/sniff.py), served as such by presigned URLs.
SERVED_CONTENT_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/gif", "image/webp", "video/mp4", "video/webm"}
)

#: S3 error codes of an object that is not there (in a bucket that is).
_MISSING = frozenset({"NoSuchKey", "NoSuchObject", "ResourceNotFound"})


@contextmanager
def _storage_errors() -> Iterator[None]:
    """Turn the client's outage-shaped failures into :class:`StorageUnavailable`."""
    try:
        yield
    except (urllib3.exceptions.HTTPError, OSError, ServerError, InvalidResponseError) as exc:
        raise StorageUnavailable(f"object storage unavailable: {type(exc).__name__}") from exc
    except S3Error as exc:
        if exc.code == "NoSuchBucket":
            bucket = getattr(exc, "bucket_name", None) or "?"
            raise BucketMissing(f"object storage has no bucket {bucket!r} (NoSuchBucket)") from exc
        status = exc.response.status if exc.response is not None else 0
        if status >= 500 or exc.code in ("SlowDown", "ServiceUnavailable", "InternalError"):
            raise StorageUnavailable(f"object storage error: {exc.code}") from exc
        raise
    except MinioException as exc:
        raise StorageUnavailable(f"object storage error: {type(exc).__name__}") from exc


def pool_size_for(uploads: int) -> int:
    """Connections to object storage for ``uploads`` files stored at once, each in up to
    :data:`PARALLEL_PART_UPLOADS` parts at a time, and as many again for the other requests of
    the tasks being processed (listings, stats, manifests): fewer, and urllib3 opens connections
    it then throws away ("Connection pool is full")."""
    return uploads * (PARALLEL_PART_UPLOADS + 1)


def create_object_store(
    settings: Settings,
    *,
    pool_size: int = 16,
    endpoint: str | None = None,
    http_factory: Callable[..., urllib3.PoolManager] = urllib3.PoolManager,
    read_timeout_s: float = 60.0,
    retries: int = 2,
) -> ObjectStore:
    """An :class:`ObjectStore` for the settings' endpoint (or ``endpoint``, e.g. the public one
    presigned URLs must name) and bucket. Timeouts are short and the client retries only briefly
    itself (``retries`` times): a longer outage is the queue's job (dramatiq retries)."""
    parts = urlsplit(endpoint or settings.s3_endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError("MJHOOK_S3_ENDPOINT must be an http:// or https:// URL")
    http = http_factory(
        timeout=urllib3.Timeout(connect=5.0, read=read_timeout_s),
        maxsize=pool_size,
        retries=urllib3.Retry(total=retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )
    client = KnownHashMinio(
        parts.netloc,
        access_key=settings.s3_access_key or None,
        secret_key=settings.s3_secret_key or None,
        secure=parts.scheme == "https",
        region=_region(settings.s3_region, parts.scheme, parts.netloc),
        http_client=http,
    )
    return ObjectStore(client, settings.s3_bucket)


def _region(configured: str, scheme: str, netloc: str) -> str | None:
    """The region requests are signed for: the one configured; else the one an AWS endpoint's
    host names (``s3.eu-west-1.amazonaws.com``: a region passed to minio would replace it in
    the host); else, for AWS's global endpoint, None (minio asks AWS for the bucket's); else
    (MinIO, SeaweedFS: any region signs) :data:`DEFAULT_REGION`, so presigning needs no request."""
    if configured:
        return configured
    found = BaseURL(f"{scheme}://{netloc}", None).region
    if found is None:
        return DEFAULT_REGION
    return found or None
