"""The provider's signature: base64(HMAC-SHA256(key, f"{taskId}.{timestamp}")), fresh within a window."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from ingress.signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, SignatureVerifier
from shared.errors import ConfigError, InvalidCallback

KEY = b"whsec-primary-key"
NOW = 1_700_000_000
TASK = "mj_task_12345"


def sign(task_id: str, timestamp: str, key: bytes = KEY) -> str:
    """What the provider sends, built independently of the code under test."""
    digest = hmac.new(key, f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def verifier(key: bytes | list[bytes] = KEY, *, window_s: int = 300) -> SignatureVerifier:
    return SignatureVerifier(key, window_s=window_s, clock=lambda: float(NOW))


def refusal(check: SignatureVerifier, task_id: str, timestamp: str | None, signature: str | None) -> str:
    with pytest.raises(InvalidCallback) as caught:
        check.verify(task_id, timestamp, signature)
    assert caught.value.status == 401
    return caught.value.reason


def test_a_valid_signature_passes() -> None:
    verifier().verify(TASK, str(NOW), sign(TASK, str(NOW)))


def test_url_safe_and_unpadded_base64_of_the_same_digest_pass() -> None:
    # Given a digest whose base64 holds '+' or '/' (so the url-safe spelling differs)
    timestamp = next(str(NOW + i) for i in range(1000) if set(sign(TASK, str(NOW + i))) & {"+", "/"})
    standard = sign(TASK, timestamp)
    url_safe = standard.translate(str.maketrans("+/", "-_"))
    check = SignatureVerifier(KEY, clock=lambda: float(NOW))
    for spelling in (standard, url_safe, url_safe.rstrip("="), f"  {standard} "):
        check.verify(TASK, timestamp, spelling)


def test_a_signature_made_with_another_key_is_refused() -> None:
    reason = refusal(verifier(), TASK, str(NOW), sign(TASK, str(NOW), key=b"someone-else"))
    assert reason == "signature does not match"


def test_a_tampered_task_id_is_refused() -> None:
    # Given a genuine signature for one task, replayed for another
    signature = sign(TASK, str(NOW))
    assert refusal(verifier(), "mj_task_99999", str(NOW), signature) == "signature does not match"


def test_a_tampered_timestamp_is_refused() -> None:
    signature = sign(TASK, str(NOW))
    assert refusal(verifier(), TASK, str(NOW + 1), signature) == "signature does not match"


def test_a_stale_timestamp_is_refused_even_when_signed() -> None:
    old = str(NOW - 301)
    reason = refusal(verifier(), TASK, old, sign(TASK, old))
    assert reason == "signature timestamp is 301 s old, beyond the 300 s window"


def test_a_future_timestamp_is_refused_even_when_signed() -> None:
    ahead = str(NOW + 301)
    reason = refusal(verifier(), TASK, ahead, sign(TASK, ahead))
    assert reason.startswith("signature timestamp is 301 s in the future, beyond the 300 s window")


@pytest.mark.parametrize("offset", [-300, -1, 0, 1, 300])
def test_timestamps_at_the_edges_of_the_window_pass(offset: int) -> None:
    timestamp = str(NOW + offset)
    verifier().verify(TASK, timestamp, sign(TASK, timestamp))


def test_the_window_is_configurable() -> None:
    old = str(NOW - 1300)
    verifier(window_s=1500).verify(TASK, old, sign(TASK, old))
    refusal(verifier(window_s=60), TASK, old, sign(TASK, old))


@pytest.mark.parametrize(
    ("timestamp", "signature", "missing"),
    [
        (None, "c2ln", TIMESTAMP_HEADER),
        (str(NOW), None, SIGNATURE_HEADER),
        (None, None, f"{TIMESTAMP_HEADER} and {SIGNATURE_HEADER}"),
        ("", "c2ln", TIMESTAMP_HEADER),
        (str(NOW), "   ", SIGNATURE_HEADER),
    ],
)
def test_missing_headers_are_named(timestamp: str | None, signature: str | None, missing: str) -> None:
    assert refusal(verifier(), TASK, timestamp, signature) == f"missing signature header {missing}"


@pytest.mark.parametrize(
    "timestamp",
    [
        "17e8",
        "-1700000000",
        "+1700000000",
        "1700000000.5",
        "abc",
        "0x6553f100",
        "1" * 16,
        "\u0661\u0667",  # Arabic-Indic digits: str.isdigit() would take them
    ],
)
def test_a_malformed_timestamp_is_refused(timestamp: str) -> None:
    reason = refusal(verifier(), TASK, timestamp, sign(TASK, timestamp))
    assert reason == f"{TIMESTAMP_HEADER} must be Unix seconds (decimal digits)"


@pytest.mark.parametrize(
    "signature",
    [
        "not base64 at all!",
        base64.b64encode(b"short").decode(),  # valid base64, wrong length
        base64.b64encode(b"x" * 33).decode(),
        "A" * 129,
        "é" * 44,
        hashlib.sha256(b"hex is not base64").hexdigest(),
    ],
)
def test_a_malformed_signature_is_refused(signature: str) -> None:
    reason = refusal(verifier(), TASK, str(NOW), signature)
    assert reason == "signature is not base64 of an HMAC-SHA256 digest"


def test_rotated_keys_each_pass_and_others_do_not() -> None:
    # Given a rotation: the old key still configured next to the new one
    check = SignatureVerifier.from_setting(" new-key , old-key ,", clock=lambda: float(NOW))
    for key in (b"new-key", b"old-key"):
        check.verify(TASK, str(NOW), sign(TASK, str(NOW), key=key))
    refusal(check, TASK, str(NOW), sign(TASK, str(NOW), key=b"retired-key"))


def test_a_single_key_setting_is_used_as_its_utf8_bytes() -> None:
    check = SignatureVerifier.from_setting("clé", clock=lambda: float(NOW))
    check.verify(TASK, str(NOW), sign(TASK, str(NOW), key="clé".encode()))


@pytest.mark.parametrize("setting", ["", " , ,"])
def test_a_setting_without_a_key_is_a_config_error(setting: str) -> None:
    with pytest.raises(ConfigError):
        SignatureVerifier.from_setting(setting)


@pytest.mark.parametrize("keys", [b"", [], [b"ok", b""]])
def test_an_empty_key_is_a_config_error(keys: bytes | list[bytes]) -> None:
    with pytest.raises(ConfigError):
        SignatureVerifier(keys)


def test_no_reason_echoes_the_key_or_a_signature() -> None:
    # Given a refusal of every kind
    check = verifier()
    expected = sign(TASK, str(NOW))
    wrong = sign(TASK, str(NOW), key=b"someone-else")
    stale = str(NOW - 999)
    reasons = [
        refusal(check, TASK, str(NOW), wrong),
        refusal(check, TASK, stale, sign(TASK, stale)),
        refusal(check, TASK, "garbage", wrong),
        refusal(check, TASK, str(NOW), "garbage"),
        refusal(check, TASK, None, wrong),
    ]
    # Then none holds the key, the expected signature or the one received (in any spelling)
    secrets = [KEY.decode(), expected, expected.rstrip("="), wrong, wrong.rstrip("="), sign(TASK, stale)]
    for reason in reasons:
        assert not any(secret in reason for secret in secrets), reason
