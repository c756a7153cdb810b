"""Read endpoints: ``GET /tasks/{taskId}`` (state, manifest, presigned download URLs) and
``GET /tasks?state=...&limit=...`` (recent tasks), behind ``MJHOOK_API_TOKEN`` when set."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Collection
from typing import Any

import falcon
import orjson

from shared import storage
from shared.callback import TASK_ID_PATTERN
from shared.clock import record_millis
from shared.errors import BucketMissing, StorageUnavailable, TaskRecordUnusable
from shared.printable import shortened
from shared.storage import ObjectStore
from shared.taskstate import MAX_REASON_CHARS, TaskState, TaskStore

log = logging.getLogger(__name__)

#: Most tasks one list request returns.
MAX_LIST_LIMIT = 200
DEFAULT_LIST_LIMIT = 20
#: Most characters of a task's reason the list returns (a cut one ends in an ellipsis): what the
#: workers record, also for reasons recorded longer elsewhere. The dashboard lists 50 tasks every
#: few seconds; ``GET /tasks/{taskId}`` has the whole message, in the manifest.
MAX_LISTED_REASON_CHARS = MAX_REASON_CHARS


class ApiTokenGuard:
    """Falcon middleware: requests routed to a URI template under the given prefixes need
    ``Authorization: Bearer <token>`` (the scheme in any case, the token compared in constant time)
    when a token is configured. Judged by the route the router matched, not the raw path: the
    router also takes ``//tasks`` and ``/tasks/`` to those routes. On the routes in
    ``query_token_paths`` (a page a browser opens, which cannot send a header) ``?token=<token>``
    is accepted instead, once: a request naming it more than once is refused, header or not (falcon
    reads the last, the page's script would send the first). API endpoints take the header only."""

    def __init__(
        self, token: str, *, prefixes: tuple[str, ...], query_token_paths: Collection[str] = ()
    ) -> None:
        self._token = token.encode()
        self._prefixes = prefixes
        self._query_token_paths = frozenset(query_token_paths)

    async def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: object, params: dict[str, Any]
    ) -> None:
        route = req.uri_template
        if not self._token or route is None or not route.startswith(self._prefixes):
            return
        query_tokens = req.get_param_as_list("token") if route in self._query_token_paths else None
        if query_tokens is not None and len(query_tokens) > 1:
            raise _unauthorized("API token given more than once")
        scheme, _, given = (req.get_header("Authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token):
            return
        if not query_tokens or not hmac.compare_digest(query_tokens[0].encode(), self._token):
            raise _unauthorized("missing or wrong API token")


def _unauthorized(title: str) -> falcon.HTTPUnauthorized:
    return falcon.HTTPUnauthorized(title=title, headers={"WWW-Authenticate": "Bearer"})


class TaskResource:
    """``GET /tasks/{taskId}``: the task's state, manifest and a presigned URL (with its
    ``contentType`` from the manifest) for each file the manifest lists under the task's own
    prefix; the URLs are credentials for a while, so the answer must not be cached."""

    def __init__(
        self, *, tasks: TaskStore, store: ObjectStore, presigner: ObjectStore, expiry_s: int
    ) -> None:
        self._tasks = tasks
        self._store = store
        self._presigner = presigner
        self._expiry_s = expiry_s

    def on_get(self, req: falcon.Request, resp: falcon.Response, task_id: str) -> None:
        if not TASK_ID_PATTERN.fullmatch(task_id):
            raise falcon.HTTPNotFound(title="unknown task")
        try:
            record = self._tasks.get(task_id)
        except TaskRecordUnusable as exc:
            # Another version's record (a rolling deploy), or one written by hand: say so, no 500.
            log.warning("GET /tasks/%s: %s", task_id, exc)
            raise falcon.HTTPServiceUnavailable(title="the task's record in Redis is unusable") from exc
        manifest = self._manifest(task_id)
        if record is None and manifest is None:
            raise falcon.HTTPNotFound(title="unknown task")
        status = manifest.get("status") if manifest is not None else None
        state = record.state.value if record is not None else status if isinstance(status, str) else None
        try:
            # Presigning may ask the store for the bucket's region (AWS's global endpoint).
            images = self._images(task_id, manifest)
        except StorageUnavailable as exc:
            raise falcon.HTTPServiceUnavailable(title="object storage unavailable") from exc
        answer = {
            "taskId": task_id,
            "state": state,
            "reason": record.fields.get("reason") if record is not None else None,
            "manifest": manifest,
            "images": images,
        }
        try:
            resp.data = orjson.dumps(answer)
        except orjson.JSONEncodeError as exc:
            # A manifest nested deeper than orjson writes (254 levels; a worker's is at most
            # MJHOOK_MAX_JSON_DEPTH + 1): another writer's. Rendered by falcon after the error
            # handlers, it was an empty 500.
            log.warning("GET /tasks/%s: its manifest cannot be answered: %s", task_id, exc)
            resp.data = orjson.dumps({**answer, "manifest": None})
        resp.content_type = falcon.MEDIA_JSON
        keep_private(resp)

    def _manifest(self, task_id: str) -> dict[str, Any] | None:
        """The task's manifest, None when there is none or it is not one this code could have
        written (not a JSON object: the bucket's writers are not this code), said in the log."""
        try:
            manifest = self._store.get_json(storage.manifest_key(task_id))
        except BucketMissing:
            return None  # no worker has started yet to make it: nothing is stored
        except StorageUnavailable as exc:
            raise falcon.HTTPServiceUnavailable(title="object storage unavailable") from exc
        except ValueError as exc:  # not JSON
            log.warning("GET /tasks/%s: its manifest is not JSON: %s", task_id, exc)
            return None
        if manifest is not None and not isinstance(manifest, dict):
            log.warning("GET /tasks/%s: its manifest is not a JSON object", task_id)
            return None
        return manifest

    def _images(self, task_id: str, manifest: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The manifest's files, each with a presigned URL: only entries naming an integer index
        and a key under the task's prefix, without ``..`` (the bucket's writers are not this
        code); the download is served as the media type a worker stores, or as an attachment."""
        prefix = storage.task_prefix(task_id)
        listed = (manifest or {}).get("images")
        images = []
        for image in listed if isinstance(listed, list) else []:
            if not isinstance(image, dict):
                continue
            index, key, content_type = image.get("index"), image.get("key"), image.get("contentType")
            if isinstance(index, bool) or not isinstance(index, int):
                continue
            if not (isinstance(key, str) and key.startswith(prefix)) or ".." in key.split("/"):
                continue
            try:
                url = self._presigner.presigned_url(
                    key,
                    expires_s=self._expiry_s,
                    content_type=content_type if isinstance(content_type, str) else None,
                )
            except ValueError as exc:  # a key the client will not sign (a "." segment)
                log.warning("GET /tasks/%s: %r left out: %s", task_id, shortened(key, 200), exc)
                continue
            images.append({"index": index, "key": key, "url": url, "contentType": content_type})
        return images


def keep_private(resp: falcon.Response) -> None:
    """An answer of a read endpoint (it needs the API token, and carries text from callbacks): no
    cache keeps it, and no browser takes it for another type than it says."""
    resp.cache_control = ["no-store"]
    resp.set_header("X-Content-Type-Options", "nosniff")


class TaskListResource:
    """``GET /tasks?state=stored&limit=20``: most recently changed first."""

    def __init__(self, *, tasks: TaskStore) -> None:
        self._tasks = tasks

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        # A blank parameter (``?state=&limit=``, as a form or a template leaves it) is an absent one.
        state = req.get_param("state") or None
        if state is not None and state not in {s.value for s in TaskState}:
            raise falcon.HTTPBadRequest(title=f"unknown state {state!r}")
        limit = DEFAULT_LIST_LIMIT
        if req.get_param("limit"):
            limit = req.get_param_as_int("limit", min_value=1, max_value=MAX_LIST_LIMIT) or limit
        records = self._tasks.recent(state=TaskState(state) if state else None, limit=limit)
        resp.media = {
            "tasks": [
                {
                    "taskId": record.task_id,
                    "state": record.state.value,
                    "updatedAt": record_millis(record.fields.get("updatedAt")),
                    "receivedAt": record.fields.get("receivedAt"),
                    "reason": _listed(record.fields.get("reason")),
                }
                for record in records
            ]
        }
        keep_private(resp)


def _listed(reason: str | None) -> str | None:
    """``reason`` as the list returns it (None stays None)."""
    return None if reason is None else shortened(reason, MAX_LISTED_REASON_CHARS)
