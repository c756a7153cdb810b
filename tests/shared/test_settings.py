"""The one settings object, read from MJHOOK_* variables."""

from __future__ import annotations

import pytest

from shared.errors import ConfigError
from shared.settings import Settings


def test_defaults_follow_the_contract() -> None:
    settings = Settings.from_env({})
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.queue_url == settings.redis_url
    assert settings.s3_endpoint == "http://127.0.0.1:8333"
    assert settings.s3_bucket == "midjourney"
    assert settings.provider_url == "https://api.kie.ai"
    assert settings.poll_grace_s == 1500
    assert settings.poll_interval_s == 30
    assert settings.callback_tokens == ()


def test_variables_are_read_and_typed() -> None:
    settings = Settings.from_env(
        {
            "MJHOOK_REDIS_URL": "redis://10.1.2.3:6380/2",
            "MJHOOK_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672",
            "MJHOOK_MAX_RETRIES": "3",
            "MJHOOK_FETCH_ALLOW": " 127.0.0.1, ::1 ,,localhost",
            "MJHOOK_CALLBACK_TOKEN": "new-secret,old-secret",
            "PATH": "/usr/bin",
        }
    )
    assert settings.redis_url == "redis://10.1.2.3:6380/2"
    assert settings.queue_url == "amqp://guest:guest@127.0.0.1:5672"
    assert settings.max_retries == 3
    assert settings.fetch_allow == ("127.0.0.1", "::1", "localhost")
    assert settings.callback_tokens == ("new-secret", "old-secret")


def test_a_misspelled_variable_is_an_error_not_a_silent_default() -> None:
    with pytest.raises(ConfigError, match="MJHOOK_REDIS_ULR"):
        Settings.from_env({"MJHOOK_REDIS_ULR": "redis://x"})


def test_a_bad_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="MJHOOK_MAX_RETRIES"):
        Settings.from_env({"MJHOOK_MAX_RETRIES": "many"})


def test_fetch_ports_are_a_comma_separated_list() -> None:
    assert Settings.from_env({}).fetch_ports == (80, 443)
    assert Settings.from_env({"MJHOOK_FETCH_PORTS": "443, 8443"}).fetch_ports == (443, 8443)
    with pytest.raises(ConfigError, match="MJHOOK_FETCH_PORTS"):
        Settings.from_env({"MJHOOK_FETCH_PORTS": "https"})
