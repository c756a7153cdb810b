"""The provider client against a broken or hostile provider on 127.0.0.1 (a real socket): what the
simulator never answers. Retry-After values beyond reason, answers too large, a ``msg`` of a
megabyte, numbers of thousands of digits, JSON nested too deep, a success without its details."""

from __future__ import annotations

import contextlib
import email.utils
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest

from shared.errors import ProviderRefused, ProviderUnavailable, TransientError
from shared.provider import (
    MAX_ANSWER_BYTES,
    MAX_MSG_CHARS,
    MAX_RETRY_AFTER_BELIEVED_S,
    ProviderClient,
    TaskStatus,
)
from tests.support.provider import RecordingSleep

#: Bytes per chunk of a chunked answer.
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Sent in chunks, without a Content-Length: its size is known only at its end.
    chunked: bool = False


def answer(
    code: object, data: Any = None, *, msg: str = "success", status: int = 200, **headers: str
) -> Answer:
    """The provider's ``{"code", "msg", "data"}`` with HTTP ``status``; ``headers`` with ``_``
    for ``-`` (``Retry_After``)."""
    body = orjson.dumps({"code": code, "msg": msg, "data": data})
    return Answer(status, body, {name.replace("_", "-"): value for name, value in headers.items()})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ScriptedServer

    def do_GET(self) -> None:
        scripted = self.server.next_answer()
        self.send_response(scripted.status)
        for name, value in scripted.headers.items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        if scripted.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(scripted.body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._send_body(scripted)  # unless the client stops reading, as it should past its cap

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.do_GET()

    def _send_body(self, scripted: Answer) -> None:
        if not scripted.chunked:
            self.wfile.write(scripted.body)
            return
        for start in range(0, len(scripted.body), CHUNK_BYTES):
            piece = scripted.body[start : start + CHUNK_BYTES]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: object) -> None:
        pass


class _ScriptedServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answers: list[Answer] = []
        self.requests = 0
        self._lock = threading.Lock()

    def next_answer(self) -> Answer:
        """The next scripted answer; the last one again once they run out."""
        with self._lock:
            self.requests += 1
            return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


class ScriptedProvider:
    """The provider's API on 127.0.0.1 answering each request with the next of ``answers``."""

    def __init__(self) -> None:
        self._server = _ScriptedServer()
        self._clients: list[ProviderClient] = []
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()

    def client(self, *answers: Answer, sleep: RecordingSleep, **options: Any) -> ProviderClient:
        """A client of this provider, which answers ``answers`` from now on."""
        self._server.answers = list(answers)
        base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        http = httpx.Client(timeout=10.0, trust_env=False)
        self._clients.append(ProviderClient(base_url, "k", sleep=sleep, http=http, **options))
        return self._clients[-1]

    @property
    def requests(self) -> int:
        return self._server.requests

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)


@pytest.fixture
def provider() -> Iterator[ScriptedProvider]:
    scripted = ScriptedProvider()
    try:
        yield scripted
    finally:
        scripted.close()


def http_date(offset_s: float) -> str:
    return email.utils.formatdate(time.time() + offset_s, usegmt=True)


# --- Retry-After ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "nan", "-5", "1e9", "soon"])
def test_a_retry_after_not_finite_negative_or_unreadable_is_ignored(
    provider: ScriptedProvider, value: str
) -> None:
    """``inf`` held every poll until an OverflowError ended each pass, ``1e9`` held them ~31
    years, ``-5`` and ``nan`` waited 0 s: none is delay-seconds or a date, so none counts."""
    sleep = RecordingSleep()
    client = provider.client(
        answer(429, msg="slow down", status=429, Retry_After=value), sleep=sleep, attempts=2
    )

    with pytest.raises(ProviderUnavailable) as caught:
        client.record_info("t1")

    assert caught.value.retry_after is None
    assert sleep.calls == [1.0]  # the backoff
    assert provider.requests == 2


@pytest.mark.parametrize("value", ["99999999999", "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_a_retry_after_far_in_the_future_is_believed_up_to_an_hour(
    provider: ScriptedProvider, value: str
) -> None:
    """Given a 429 asking to come back in thousands of years
    Then the caller is told to come back in MAX_RETRY_AFTER_BELIEVED_S (an hour), at once: one
    answer cannot stop the polling for good."""
    sleep = RecordingSleep()
    client = provider.client(answer(429, msg="slow down", status=429, Retry_After=value), sleep=sleep)

    with pytest.raises(ProviderUnavailable) as caught:
        client.record_info("t1")

    assert caught.value.retry_after == MAX_RETRY_AFTER_BELIEVED_S
    assert (sleep.calls, provider.requests) == ([], 1)


@pytest.mark.parametrize("past", [False, True], ids=["zero", "past-date"])
def test_a_retry_after_of_zero_or_a_past_date_keeps_the_backoff(
    provider: ScriptedProvider, past: bool
) -> None:
    """Retry-After 0 (or a date a provider with a slow clock sent) was waited as it came: every
    retry at once, the attempts used up in a burst. The longer of it and the backoff is waited."""
    sleep = RecordingSleep()
    value = http_date(-10) if past else "0"
    limited = answer(429, msg="slow down", status=429, Retry_After=value)
    client = provider.client(limited, limited, answer(200, {"taskId": "t1", "successFlag": 0}), sleep=sleep)

    assert client.record_info("t1").status is TaskStatus.GENERATING

    assert sleep.calls == [1.0, 2.0]


# --- answers too large ---------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_answer_larger_than_the_cap_is_unreadable(provider: ScriptedProvider, chunked: bool) -> None:
    """Given a record-info answer of the provider's shape behind MAX_ANSWER_BYTES of blanks (400
    MiB of them grew the worker by 1.2 GiB: the body was read whole, then parsed)
    Then it is unreadable, a transient error, whether its size was declared or not."""
    body = b" " * MAX_ANSWER_BYTES + orjson.dumps({"code": 200, "msg": "success", "data": {"successFlag": 0}})
    client = provider.client(Answer(200, body, chunked=chunked), sleep=RecordingSleep(), attempts=1)

    with pytest.raises(ProviderUnavailable, match=f"larger than {MAX_ANSWER_BYTES} bytes"):
        client.record_info("t1")


def test_a_huge_msg_is_cut_short_in_errors_and_in_the_details(provider: ScriptedProvider) -> None:
    """A ``msg`` or an ``errorMessage`` of a megabyte went whole into exception messages, logs and
    a failed task's manifest."""
    huge = "x" * (1 << 20)
    refused = provider.client(answer(501, msg=huge), sleep=RecordingSleep())
    with pytest.raises(ProviderRefused) as caught:
        refused.record_info("t1")
    assert len(caught.value.provider_msg) == MAX_MSG_CHARS
    assert len(str(caught.value)) < MAX_MSG_CHARS + 100

    failed = {"taskId": "t1", "successFlag": 2, "errorMessage": huge}
    info = provider.client(answer(200, failed), sleep=RecordingSleep()).record_info("t1")
    assert len(info.error_message or "") == MAX_MSG_CHARS


# --- odd fields ----------------------------------------------------------------------------------


def test_a_code_of_thousands_of_digits_makes_the_answer_unreadable(provider: ScriptedProvider) -> None:
    """A ``code`` of 5000 digits passed the digits check, and int() raised ValueError, which no
    caller expects from the provider (a poll pass ended in a traceback)."""
    client = provider.client(answer("1" * 5000, {"successFlag": 1}), sleep=RecordingSleep(), attempts=1)

    with pytest.raises(ProviderUnavailable, match="unreadable"):
        client.record_info("t1")


def test_flags_of_thousands_of_digits_are_no_numbers(provider: ScriptedProvider) -> None:
    """``successFlag`` and ``errorCode`` of 5000 digits raised ValueError: now they are no number,
    as any other value that is none (the task reads as still generating)."""
    details = {"taskId": "t1", "successFlag": "1" * 5000, "errorCode": "5" * 5000}
    info = provider.client(answer(200, details), sleep=RecordingSleep()).record_info("t1")

    assert (info.status, info.success_flag, info.error_code) == (TaskStatus.GENERATING, None, None)


@pytest.mark.parametrize("as_string", [False, True], ids=["object", "string"])
def test_a_param_json_nested_too_deep_is_left_out_of_the_details(
    provider: ScriptedProvider, as_string: bool
) -> None:
    """Given a finished task whose ``paramJson`` nests 300 levels (orjson reads 1024, writes 254)
    Then its details read without it, results and all. As an object it raised TypeError on the
    way back to a string; as a string, the same once its ``callBackUrl`` was taken out."""
    deep = b'{"callBackUrl": "https://hooks.example/cb", "a": ' + b"[" * 300 + b"]" * 300 + b"}"
    param_json = orjson.dumps(deep.decode()) if as_string else deep
    results = orjson.dumps({"resultUrls": [{"resultUrl": "https://cdn.example/0.png"}]})
    details = b'{"taskId": "t1", "successFlag": 1, "paramJson": %s, "resultInfoJson": %s}' % (
        param_json,
        results,
    )
    body = b'{"code": 200, "msg": "success", "data": %s}' % details
    info = provider.client(Answer(200, body), sleep=RecordingSleep()).record_info("t1")

    assert info.param_json is None
    assert (info.status, info.result_urls) == (TaskStatus.SUCCESS, ("https://cdn.example/0.png",))


@pytest.mark.parametrize("data", [None, "t1", [], 0], ids=["null", "string", "list", "number"])
def test_a_success_without_the_details_is_unreadable_not_an_unknown_task(
    provider: ScriptedProvider, data: object
) -> None:
    """A ``code`` 200 whose ``data`` is not an object says nothing of the task (the provider says
    "unknown" with 404): taken for a 404, the verifier failed a genuine success."""
    client = provider.client(answer(200, data), sleep=RecordingSleep(), attempts=1)

    with pytest.raises(ProviderUnavailable, match="without its details") as caught:
        client.record_info("t1")

    assert isinstance(caught.value, TransientError)


@pytest.mark.parametrize("data", [None, {}, {"downloadUrl": "ftp://cdn.example/0.png"}, 7], ids=str)
def test_a_download_url_answer_without_a_link_is_unreadable(provider: ScriptedProvider, data: object) -> None:
    """A ``code`` 200 without a link is a broken answer, asked again later (transient): as a plain
    provider error (neither transient nor permanent) the file was recorded failed for good."""
    client = provider.client(answer(200, data), sleep=RecordingSleep(), attempts=1)

    with pytest.raises(ProviderUnavailable, match="without a link") as caught:
        client.download_url("https://cdn.example/0.png")

    assert isinstance(caught.value, TransientError)
