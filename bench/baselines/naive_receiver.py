"""The naive receiver: what the provider's example invites ("download and save the images here").
Inside the HTTP handler it downloads each result file, one after the other, and PUTs it to S3,
then answers 200. One process, one thread (the standard library's WSGI server), like the
example's single Express process; no queue, no retry, no dedup.

    python bench/baselines/naive_receiver.py --port 8010 --s3-endpoint http://127.0.0.1:8333 \\
        --access-key KEY --secret-key SECRET --bucket naive
"""

from __future__ import annotations

import argparse
import io
import json
import socketserver
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
from minio import Minio


def create_app(s3: Minio, bucket: str, http: httpx.Client) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] == "GET":  # the benchmark's readiness probe
            start_response("200 OK", [("Content-Type", "application/json")])
            return [b'{"status":"ok"}']
        callback = json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
        data = callback["data"]
        if callback["code"] == 200:
            for index, url in enumerate(data.get("resultUrls") or []):
                response = http.get(url)
                response.raise_for_status()
                body = response.content
                content_type = response.headers.get("content-type", "image/png")
                key = f"tasks/{data['taskId']}/{index}.png"
                s3.put_object(bucket, key, io.BytesIO(body), len(body), content_type=content_type)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"status":"received"}']

    return app


class _Server(WSGIServer):
    # Room for the provider's concurrent deliveries to wait instead of being refused.
    request_queue_size = 128

    def server_bind(self) -> None:
        # No reverse DNS lookup of the bound address (HTTPServer.server_bind does one).
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]
        self.setup_environ()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--s3-endpoint", required=True)
    parser.add_argument("--access-key", required=True)
    parser.add_argument("--secret-key", required=True)
    parser.add_argument("--bucket", required=True)
    args = parser.parse_args()
    endpoint = urlsplit(args.s3_endpoint)
    s3 = Minio(endpoint.netloc, args.access_key, args.secret_key, secure=endpoint.scheme == "https")
    http = httpx.Client(timeout=60.0, trust_env=False)
    app = create_app(s3, args.bucket, http)
    with make_server(
        "127.0.0.1", args.port, app, server_class=_Server, handler_class=_QuietHandler
    ) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
