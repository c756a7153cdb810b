"""The callback endpoint with a signature key, a source allow-list and a depth limit set."""

from __future__ import annotations

import base64
import hashlib
import hmac

import orjson
import pytest
import redis
from falcon import testing

from ingress import resources
from ingress.app import create_app
from shared.settings import Settings

PATH = "/callbacks/midjourney"
NOW = 1_700_000_000
TASK = "mj_task_12345"


def make_app(client: redis.Redis, **settings: object) -> testing.TestClient:
    kwargs = client.get_connection_kwargs()
    config = Settings(redis_url=f"redis://{kwargs['host']}:{kwargs['port']}/0", **settings)  # type: ignore[arg-type]
    return testing.TestClient(create_app(config, redis_client=client, clock=lambda: float(NOW)))


def body(task_id: str = TASK) -> bytes:
    return orjson.dumps({"code": 200, "msg": "ok", "data": {"taskId": task_id, "resultUrls": []}})


def digest(task_id: str = TASK, key: bytes = b"k2", timestamp: int = NOW) -> bytes:
    return hmac.new(key, f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()


def signed(task_id: str = TASK, key: bytes = b"k2", timestamp: int = NOW) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Webhook-Timestamp": str(timestamp),
        "X-Webhook-Signature": base64.b64encode(digest(task_id, key, timestamp)).decode(),
    }


def test_a_signed_callback_is_accepted_and_others_get_401(client: redis.Redis) -> None:
    app = make_app(client, webhook_hmac_key="k1,k2")
    assert app.simulate_post(PATH, body=body(), headers=signed()).status_code == 200
    bad = [
        signed(key=b"k3"),
        signed(timestamp=NOW - 301),
        signed(task_id="another_task"),
        {"Content-Type": "application/json"},
    ]
    for headers in bad:
        response = app.simulate_post(PATH, body=body(), headers=headers)
        assert response.status_code == 401, headers
        assert "k2" not in response.text


def test_only_allowed_sources_and_only_through_trusted_proxies(client: redis.Redis) -> None:
    app = make_app(
        client,
        callback_allow_from="203.0.113.0/24",
        trusted_proxy_header="X-Forwarded-For",
        trusted_proxies="127.0.0.1",
    )
    headers = {"Content-Type": "application/json"}
    # TestClient's peer is 127.0.0.1, our trusted proxy
    ok = app.simulate_post(PATH, body=body(), headers={**headers, "X-Forwarded-For": "203.0.113.7"})
    assert ok.status_code == 200
    spoofed = {**headers, "X-Forwarded-For": "203.0.113.7, 198.51.100.1"}
    assert app.simulate_post(PATH, body=body(), headers=spoofed).status_code == 403
    assert app.simulate_post(PATH, body=body(), headers=headers).status_code == 403


def test_a_body_nested_too_deep_gets_400(client: redis.Redis) -> None:
    app = make_app(client, max_json_depth=8)
    deep = b'{"code":200,"data":{"taskId":"t1","x":' + b"[" * 10 + b"]" * 10 + b"}}"
    response = app.simulate_post(PATH, body=deep, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json == {"error": "JSON nested deeper than 8 levels"}


def test_every_token_and_key_is_compared_in_constant_time_once_each(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given three callback tokens and two signature keys
    When a callback arrives with the first token, signed with the first key
    Then each token, and each key's digest, was compared with hmac.compare_digest, once: a
    comparison that stops at a match, or at the first byte that differs, tells by its time which
    token or key matched, and how much of a guess was right."""
    compared: list[bytes] = []
    compare_digest = hmac.compare_digest

    def recording(given: bytes, expected: bytes) -> bool:
        compared.append(expected)
        return compare_digest(given, expected)

    monkeypatch.setattr(resources.hmac, "compare_digest", recording)  # ingress.signature's hmac too
    app = make_app(client, callback_token="one,two,three", webhook_hmac_key="k1,k2")

    response = app.simulate_post(PATH, body=body(), headers=signed(key=b"k1"), query_string="token=one")

    assert response.status_code == 200
    assert compared == [b"one", b"two", b"three", digest(key=b"k1"), digest(key=b"k2")]
