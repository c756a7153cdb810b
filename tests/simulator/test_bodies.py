"""An API request's JSON body as the app reads it, whichever server decoded its framing
(the chunked bodies wsgiref passes on raw are in tests/simulator/test_api.py, over a socket)."""

from __future__ import annotations

import falcon
import falcon.testing

from simulator.bodies import read_json

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
