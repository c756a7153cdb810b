"""HTTPS result downloads through the guard, for real: a TLS file server on 127.0.0.1 with a
certificate for ``cdn.test`` from a test CA, the name resolved by an injected resolver (no DNS),
the handshake checking the certificate against the name in the URL."""

from __future__ import annotations

import hashlib
import http.server
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpcore
import pytest

from shared.errors import DownloadFailed
from tests.support.servers import png_bytes
from tests.workers.test_guard import RecordingConnector, make_fetcher
from workers.guard import FetchPolicy, create_guarded_transport
from workers.sniff import PNG

HOST = "cdn.test"
IMAGE = png_bytes(7, 64, 64)


@dataclass(frozen=True)
class LocalCA:
    directory: Path

    @property
    def cert(self) -> Path:
        return self.directory / "ca.pem"

    def issue(self, name: str) -> tuple[Path, Path]:
        """A key and a certificate for DNS name ``name``, signed by this CA."""
        key, csr, cert = (self.directory / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
        extensions = self.directory / f"{name}.ext"
        extensions.write_text(f"subjectAltName = DNS:{name}\n")
        _openssl(
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-subj",
            f"/CN={name}",
            "-out",
            csr,
        )
        _openssl(
            "x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.directory / "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", extensions, "-out", cert,
        )  # fmt: skip
        return key, cert

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


def _openssl(*args: object) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    ca = LocalCA(tmp_path_factory.mktemp("ca"))
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca.directory / "ca.key",
        "-subj", "/CN=mjhook test CA", "-days", "2", "-out", ca.cert,
    )  # fmt: skip
    return ca


@dataclass
class TlsServer:
    port: int
    hits: list[str]

    def url(self, path: str) -> str:
        return f"https://{HOST}:{self.port}{path}"


def serve_tls(key: Path, cert: Path) -> Iterator[TlsServer]:
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(IMAGE)))
            self.end_headers()
            self.wfile.write(IMAGE)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield TlsServer(port=server.server_address[1], hits=hits)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def cdn(test_ca: LocalCA) -> Iterator[TlsServer]:
    """The TLS server with a certificate for ``cdn.test``."""
    yield from serve_tls(*test_ca.issue(HOST))


@pytest.fixture
def impostor(test_ca: LocalCA) -> Iterator[TlsServer]:
    """A TLS server whose certificate (from the same CA) names another host."""
    yield from serve_tls(*test_ca.issue("other.test"))


def cdn_only(host: str, port: int) -> list[str]:
    """The injected resolver: ``cdn.test`` is 127.0.0.1, and nothing else is looked up."""
    if host != HOST:
        raise AssertionError(f"nothing but {HOST} should be resolved, asked for {host}")
    return ["127.0.0.1"]


def fetch(url: str, verify: bool | ssl.SSLContext, connector: RecordingConnector) -> Any:
    transport = create_guarded_transport(
        FetchPolicy.from_allow([HOST]), resolver=cdn_only, connector=connector, verify=verify
    )
    return make_fetcher(transport).fetch(url)


def loopback_connector() -> RecordingConnector:
    return RecordingConnector(frozenset({"127.0.0.1"}), httpcore.SyncBackend().connect_tcp)


def test_an_https_result_is_downloaded_through_the_guard_with_its_certificate_checked(
    cdn: TlsServer, test_ca: LocalCA
) -> None:
    connector = loopback_connector()
    fetched = fetch(cdn.url("/image.png"), test_ca.client_context(), connector)
    try:
        assert fetched.media == PNG
        assert fetched.sha256 == hashlib.sha256(IMAGE).hexdigest()
    finally:
        fetched.close()
    assert connector.connects == [("127.0.0.1", cdn.port)]  # the address the guard checked
    assert cdn.hits == ["/image.png"]


def test_a_certificate_for_another_host_is_refused(impostor: TlsServer, test_ca: LocalCA) -> None:
    """The socket goes to the checked address, but the handshake still names the URL's host: a
    server answering with another host's certificate (a trusted CA's) is not downloaded from."""
    with pytest.raises(DownloadFailed, match="transfer failed"):
        fetch(impostor.url("/image.png"), test_ca.client_context(), loopback_connector())
    assert impostor.hits == []


def test_a_certificate_from_a_ca_the_worker_does_not_trust_is_refused(cdn: TlsServer) -> None:
    """The worker's default: certifi's CAs, not the test's."""
    with pytest.raises(DownloadFailed, match="transfer failed"):
        fetch(cdn.url("/image.png"), True, loopback_connector())
    assert cdn.hits == []
