"""An API request's JSON body as the app reads it, whichever server decoded its framing
(the chunked bodies wsgiref passes on raw are in tests/simulator/test_api.py, over a socket)."""

from __future__ import annotations

import io

import falcon
import falcon.testing
import pytest

from simulator.bodies import MAX_BODY_BYTES, MAX_TRAILERS, _read_chunked, read_json
from simulator.errors import ProviderError

BODY = b'{"taskType": "mj_txt2img", "prompt": "a cat"}'


def test_a_chunked_body_a_server_already_decoded_is_read_as_it_is() -> None:
    # Given a request that came chunked, through a server that decoded the chunks itself and says
    # so (gunicorn sets wsgi.input_terminated): its input holds the JSON alone
    env = falcon.testing.create_environ(
        method="POST", path="/api/v1/mj/generate", body=BODY, headers={"Transfer-Encoding": "chunked"}
    )
    env["wsgi.input_terminated"] = True
    del env["CONTENT_LENGTH"]
    # When the app reads it, Then it gets the JSON, not a complaint about chunk framing
    assert read_json(falcon.Request(env)) == {"taskType": "mj_txt2img", "prompt": "a cat"}


@pytest.mark.parametrize("trailers", [0, MAX_TRAILERS])
def test_a_chunked_body_with_up_to_its_most_trailers_is_read(trailers: int) -> None:
    chunked = b"%x\r\n%s\r\n0\r\n" % (len(BODY), BODY) + b"X-Trailer: 1\r\n" * trailers + b"\r\n"
    assert _read_chunked(io.BytesIO(chunked), MAX_BODY_BYTES) == BODY


def test_a_chunked_body_with_more_trailers_is_refused() -> None:
    chunked = b"%x\r\n%s\r\n0\r\n" % (len(BODY), BODY) + b"X-Trailer: 1\r\n" * (MAX_TRAILERS + 1) + b"\r\n"
    with pytest.raises(ProviderError, match="too many trailers"):
        _read_chunked(io.BytesIO(chunked), MAX_BODY_BYTES)
