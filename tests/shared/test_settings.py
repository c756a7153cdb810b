"""The one settings object, read from MJHOOK_* variables."""

from __future__ import annotations

import re

import pytest

from shared.errors import ConfigError
from shared.settings import MAX_JSON_DEPTH, Settings


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
    assert settings.fetch_allow == ("127.0.0.1", "::1", "localhost")  # comma_list
    assert settings.callback_tokens == ("new-secret", "old-secret")


def test_a_misspelled_variable_is_an_error_not_a_silent_default() -> None:
    with pytest.raises(ConfigError, match="MJHOOK_REDIS_ULR"):
        Settings.from_env({"MJHOOK_REDIS_ULR": "redis://x"})


def test_a_misspelled_variable_is_said_to_be_no_setting() -> None:
    """Given a misspelled MJHOOK_* name
    When the settings are read
    Then the error says that no such setting exists, not pydantic's "Extra inputs"."""
    with pytest.raises(ConfigError, match=r"MJHOOK_DEAD_MESSAGE_TTL: no such setting \(misspelled\?\)$"):
        Settings.from_env({"MJHOOK_DEAD_MESSAGE_TTL": "86400"})


def test_a_bad_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="MJHOOK_MAX_RETRIES"):
        Settings.from_env({"MJHOOK_MAX_RETRIES": "many"})


def test_a_json_depth_past_what_answers_can_carry_is_refused_at_start_up() -> None:
    """A manifest holds promptJson's params a level down and GET /tasks/{taskId} answers it one more:
    past MAX_JSON_DEPTH (200), a stored manifest could be nested deeper than orjson writes."""
    assert Settings.from_env({"MJHOOK_MAX_JSON_DEPTH": str(MAX_JSON_DEPTH)}).max_json_depth == MAX_JSON_DEPTH
    with pytest.raises(ConfigError, match="MJHOOK_MAX_JSON_DEPTH"):
        Settings.from_env({"MJHOOK_MAX_JSON_DEPTH": str(MAX_JSON_DEPTH + 1)})


def test_task_records_that_would_expire_before_the_polling_gives_up_are_refused_at_start_up() -> None:
    """A silent task's record and index entry expire MJHOOK_TASK_TTL_S after its submission: with
    a TTL under MJHOOK_POLL_GIVE_UP_S (an hour of dedup memory, the 1-day give-up) the task was
    never given up, failed nor stored: lost, without a word at start-up."""
    with pytest.raises(ConfigError, match="MJHOOK_TASK_TTL_S must be MJHOOK_POLL_GIVE_UP_S plus an hour"):
        Settings.from_env({"MJHOOK_TASK_TTL_S": "3600"})
    with pytest.raises(ConfigError, match="MJHOOK_TASK_TTL_S"):
        Settings.from_env({"MJHOOK_TASK_TTL_S": "90000", "MJHOOK_POLL_GIVE_UP_S": "90000"})
    taken = Settings.from_env({"MJHOOK_TASK_TTL_S": "7200", "MJHOOK_POLL_GIVE_UP_S": "3600"})
    assert (taken.task_ttl_s, taken.poll_give_up_s) == (7200, 3600)


def test_fetch_ports_are_a_comma_separated_list() -> None:
    assert Settings.from_env({}).fetch_ports == (80, 443)
    assert Settings.from_env({"MJHOOK_FETCH_PORTS": "443, 8443"}).fetch_ports == (443, 8443)
    with pytest.raises(ConfigError, match="MJHOOK_FETCH_PORTS"):
        Settings.from_env({"MJHOOK_FETCH_PORTS": "https"})


@pytest.mark.parametrize("url", ["127.0.0.1:6379", "localhost", "http://127.0.0.1:6379/0", "", ":pw@host:1"])
def test_a_redis_url_without_a_redis_scheme_is_refused_at_start_up(url: str) -> None:
    """Given MJHOOK_REDIS_URL without redis://, rediss:// or unix:// (a host and port alone)
    When the settings are read, as every entry point does at start-up
    Then a ConfigError names the variable and the schemes, and not the URL (it may hold a
    password), instead of redis-py's ValueError at the first command; each of those schemes is
    taken."""
    with pytest.raises(ConfigError, match=r"MJHOOK_REDIS_URL.*redis://, rediss://, unix://") as raised:
        Settings.from_env({"MJHOOK_REDIS_URL": url})
    assert "MJHOOK_BROKER_URL" not in str(raised.value)
    assert ":pw@" not in str(raised.value)
    for redis_url in ("redis://r:6379/0", "rediss://r:6380/1", "unix:///run/redis.sock"):
        assert Settings.from_env({"MJHOOK_REDIS_URL": redis_url}).queue_url == redis_url


@pytest.mark.parametrize("url", ["127.0.0.1:5672", "rabbitmq", "http://127.0.0.1:5672/", "kafka://x:9092"])
def test_a_broker_url_without_a_broker_scheme_is_refused_at_start_up(url: str) -> None:
    """Given MJHOOK_BROKER_URL set without a Redis or RabbitMQ scheme
    When the settings are read
    Then a ConfigError names that variable and the schemes it may use; each of those is taken, and
    an empty broker URL still means the Redis URL."""
    with pytest.raises(
        ConfigError, match=r"MJHOOK_BROKER_URL.*redis://, rediss://, unix://, amqp://, amqps://"
    ):
        Settings.from_env({"MJHOOK_BROKER_URL": url})
    for broker_url in ("redis://q/0", "rediss://q/0", "unix:///q.sock", "amqp://q:5672", "amqps://q:5671"):
        assert Settings.from_env({"MJHOOK_BROKER_URL": broker_url}).queue_url == broker_url
    assert Settings.from_env({"MJHOOK_BROKER_URL": ""}).queue_url == Settings().redis_url


@pytest.mark.parametrize("name", ["MJHOOK_CALLBACK_TOKEN", "MJHOOK_WEBHOOK_HMAC_KEY", "MJHOOK_API_TOKEN"])
@pytest.mark.parametrize("value", [" ", ",", " , ,"])
def test_a_secret_set_to_blanks_or_commas_alone_is_refused_at_start_up(name: str, value: str) -> None:
    """Given a token or key variable set, but to blanks or commas alone (a quoting slip in an .env)
    When the settings are read
    Then a ConfigError names the variable: such a value turned the check it enables off, silently,
    while the operator believed it on; empty still means off, and a real value is taken."""
    with pytest.raises(ConfigError, match=f"{name}.*holds no token"):
        Settings.from_env({name: value})
    assert Settings.from_env({name: ""}) == Settings()
    assert Settings.from_env({name: "s3cret,next"}) != Settings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("MJHOOK_MAX_URL_LENGTH", str((1 << 20) + 1)), ("MJHOOK_MAX_RESULT_URLS", str((1 << 16) + 1))],
)
def test_a_callback_limit_past_what_a_queued_callback_may_carry_is_refused(variable: str, value: str) -> None:
    # The drain and the worker re-check a queued callback against fixed limits: an ingress allowed
    # more would acknowledge callbacks they then drop as unreadable
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: value})


@pytest.mark.parametrize("token", ["secret ", " secret", "t\u00f6ken", "two words", "tab\there"])
def test_an_api_token_a_header_cannot_carry_is_refused(token: str) -> None:
    """A token with blanks at its ends or outside printable ASCII never passed as a Bearer header
    (the dashboard opened, and each of its reads was refused)."""
    with pytest.raises(ConfigError, match="MJHOOK_API_TOKEN"):
        Settings.from_env({"MJHOOK_API_TOKEN": token})


def test_an_api_token_of_base64_characters_is_taken() -> None:
    assert Settings.from_env({"MJHOOK_API_TOKEN": "q8Zk+fW3/xY=="}).api_token == "q8Zk+fW3/xY=="


#: Settings whose client library refuses them (at the first command, or when its first client is
#: made) with a bare ValueError, or another exception, or misreads them, each with what the
#: one-line error says about it. "s3cr3t" is a password in the URL, which the error must not show.
UNREADABLE = [
    ("MJHOOK_REDIS_URL", "redis://127.0.0.1:99999/0", "Port out of range"),
    ("MJHOOK_REDIS_URL", "redis://:s3cr3t@127.0.0.1:99999/0", "Port out of range"),
    ("MJHOOK_REDIS_URL", "redis://[::1/0", "Invalid IPv6 URL"),
    ("MJHOOK_REDIS_URL", "redis://127.0.0.1:1/0?socket_timeout=abc", "'socket_timeout'"),
    ("MJHOOK_REDIS_URL", "redis://:s3cr3t/x@127.0.0.1:6379/0", "not percent-encoded"),
    ("MJHOOK_BROKER_URL", "redis://:s3cr3t@127.0.0.1:99999/0", "not a valid Redis URL"),
    ("MJHOOK_BROKER_URL", "amqp://[::1", "Invalid IPv6 URL"),
    ("MJHOOK_BROKER_URL", "amqp://127.0.0.1:99999/", "Port out of range"),
    ("MJHOOK_BROKER_URL", "amqp://guest:s3cr3t@127.0.0.1:99999/", "Port out of range"),
    ("MJHOOK_BROKER_URL", "amqp://127.0.0.1:1/?heartbeat=abc", "heartbeat"),
    ("MJHOOK_BROKER_URL", "amqp://guest:s3cr3t/x@127.0.0.1:5672/", "not percent-encoded"),
    ("MJHOOK_S3_ENDPOINT", "http://127.0.0.1:99999", "invalid port"),
    ("MJHOOK_S3_ENDPOINT", "http://[::1", "Invalid IPv6 URL"),
    ("MJHOOK_S3_ENDPOINT", "http://u@127.0.0.1:1", "username in endpoint"),
    ("MJHOOK_S3_ENDPOINT", "http://u:s3cr3t@127.0.0.1:1", "username in endpoint"),
    ("MJHOOK_S3_PUBLIC_ENDPOINT", "http://127.0.0.1:99999", "invalid port"),
    ("MJHOOK_S3_BUCKET", "Bad_Bucket!", "invalid bucket name"),
    ("MJHOOK_S3_BUCKET", "ab", "invalid bucket name"),
    ("MJHOOK_S3_BUCKET", "a..b", "successive characters"),
    ("MJHOOK_S3_BUCKET", "192.168.1.1", "IP address"),
    ("MJHOOK_PROVIDER_URL", "http://127.0.0.1:99999", "Port out of range"),
    ("MJHOOK_PROVIDER_URL", "https://u:s3cr3t@[::1", "Invalid IPv6 URL"),
    ("MJHOOK_PUBLIC_URL", "https://127.0.0.1:99999", "Port out of range"),
    # Raised no ValueError (pika: a TypeError from ssl), or read as something else (redis-py: a
    # path that is no number as database 0, "/1/2" as 12)
    ("MJHOOK_BROKER_URL", "amqps://guest:s3cr3t@127.0.0.1:5671/%2f?ssl_options={'x':1}", "RabbitMQ URL"),
    ("MJHOOK_REDIS_URL", "redis://:s3cr3t@127.0.0.1:6379/x", "database number"),
    ("MJHOOK_REDIS_URL", "redis://127.0.0.1:6379/1/2", "database number"),
    ("MJHOOK_REDIS_URL", "rediss://:s3cr3t@127.0.0.1:6379/-1", "database number"),
    ("MJHOOK_BROKER_URL", "redis://:s3cr3t@127.0.0.1:6379/zero", "database number"),
    # No host: redis-py and pika connect to localhost, which the URL did not name
    ("MJHOOK_REDIS_URL", "redis://:s3cr3t@:6379/0", "names no host"),
    ("MJHOOK_REDIS_URL", "rediss:///0", "names no host"),
    ("MJHOOK_BROKER_URL", "redis://:6379", "names no host"),
    ("MJHOOK_BROKER_URL", "amqp://guest:s3cr3t@:5672/", "names no host"),
    ("MJHOOK_BROKER_URL", "amqp://", "names no host"),
]


@pytest.mark.parametrize(("name", "value", "reason"), UNREADABLE)
def test_a_value_its_client_library_cannot_read_is_refused_at_start_up(
    name: str, value: str, reason: str
) -> None:
    """Given a URL or bucket name its client library (redis-py, pika, minio, httpx) cannot read
    When the settings are read, as every entry point does at start-up
    Then a ConfigError names the variable and says what is wrong, on one line and without the
    URL's password: not the library's ValueError traceback at the first command."""
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({name: value})
    message = str(raised.value)
    assert message.startswith(f"invalid configuration: {name}: ")
    assert reason in message
    assert "s3cr3t" not in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "env",
    [
        {"MJHOOK_REDIS_URL": "redis://:pass@127.0.0.1:6379/0"},
        {"MJHOOK_REDIS_URL": "rediss://user:pass@127.0.0.1:6380/1?socket_timeout=2.5"},
        {"MJHOOK_REDIS_URL": "unix:///run/redis.sock?db=1"},
        {"MJHOOK_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672/"},
        {"MJHOOK_BROKER_URL": "amqps://q:5671/?heartbeat=30"},
        {"MJHOOK_BROKER_URL": "redis://:pass@[::1]:6379/0"},
        {"MJHOOK_REDIS_URL": "redis://:pass@127.0.0.1:6379/", "MJHOOK_BROKER_URL": "redis://q:6379"},
        {
            "MJHOOK_S3_ENDPOINT": "http://127.0.0.1:8333",
            "MJHOOK_S3_PUBLIC_ENDPOINT": "https://s3.example.com",
        },
        {"MJHOOK_S3_ENDPOINT": "http://[::1]:9000/", "MJHOOK_S3_BUCKET": "acme.results-2"},
        {"MJHOOK_S3_ACCESS_KEY": "AKIDEXAMPLE", "MJHOOK_S3_SECRET_KEY": "s3cr3t"},
        {"MJHOOK_PROVIDER_URL": "https://api.kie.ai:443", "MJHOOK_PUBLIC_URL": "https://hooks.example.com"},
    ],
)
def test_readable_urls_and_names_are_taken_without_connecting(env: dict[str, str]) -> None:
    settings = Settings.from_env(env)
    assert {getattr(settings, key[len("MJHOOK_") :].lower()) for key in env} == set(env.values())


@pytest.mark.parametrize("given", ["MJHOOK_S3_ACCESS_KEY", "MJHOOK_S3_SECRET_KEY"])
def test_one_s3_key_without_the_other_is_refused_at_start_up(given: str) -> None:
    """Given an S3 access key without its secret key, or the other way round
    When the settings are read
    Then a one-line ConfigError names both (minio refused it only when its first client was
    made), and does not show the key."""
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({given: "k3y-value"})
    assert str(raised.value) == (
        "invalid configuration: MJHOOK_S3_ACCESS_KEY and MJHOOK_S3_SECRET_KEY must be set together,"
        " or neither"
    )


def test_a_settings_object_built_in_code_refuses_a_bad_value_with_a_config_error() -> None:
    """Built directly (a test, the bench) rather than from the environment, a refused value is a
    ConfigError naming the variable too, not pydantic's ValidationError."""
    with pytest.raises(ConfigError, match="invalid configuration: MJHOOK_MAX_RETRIES: "):
        Settings(max_retries=-1)


@pytest.mark.parametrize("entry", ["bad host!", "10.0.0.0/33", "http://minio", "1.2.3.4.5", "two words"])
def test_a_fetch_allow_entry_the_guard_cannot_read_is_refused_at_start_up(entry: str) -> None:
    """Given MJHOOK_FETCH_ALLOW holding an entry that is no hostname, IP address or CIDR network
    When the settings are read
    Then a ConfigError names the variable and the entry: the fetcher's guard refused it only when a
    worker process built it, which dramatiq logged and went on from, dead-lettering every
    callback; hostnames, addresses and networks are still taken."""
    with pytest.raises(ConfigError, match=r"MJHOOK_FETCH_ALLOW: .*is not a hostname, IP address or CIDR"):
        Settings.from_env({"MJHOOK_FETCH_ALLOW": f"127.0.0.1,{entry}"})
    allowed = "127.0.0.1, ::1, LocalHost., 10.0.0.0/8, minio.internal, 0x7f.1, [fe80::1]"
    assert Settings.from_env({"MJHOOK_FETCH_ALLOW": allowed}).fetch_allow == (
        "127.0.0.1",
        "::1",
        "LocalHost.",
        "10.0.0.0/8",
        "minio.internal",
        "0x7f.1",
        "[fe80::1]",
    )


@pytest.mark.parametrize("name", ["MJHOOK_CALLBACK_ALLOW_FROM", "MJHOOK_TRUSTED_PROXIES"])
@pytest.mark.parametrize("entry", ["proxy.internal", "10.0.0.0/33", "1.2.3.4.5", "::g"])
def test_an_address_list_entry_the_ingress_cannot_read_is_refused_at_start_up(name: str, entry: str) -> None:
    """Given an allow list or the trusted proxies holding an entry that is no IP address or CIDR
    network (a hostname included: the ingress compares addresses)
    When the settings are read
    Then a ConfigError names the variable and the entry: it was refused only as each gunicorn
    worker built its app; addresses and networks, bracketed IPv6 ones too, are still taken."""
    refused = rf"{name}: .*'{re.escape(entry)}' is not an IP address or CIDR network"
    with pytest.raises(ConfigError, match=refused):
        Settings.from_env({name: f"10.0.0.1,{entry}", "MJHOOK_TRUSTED_PROXY_HEADER": "X-Real-IP"})
    entries = " 10.0.0.1 , 10.0.0.0/8, [::1], fd00::/64"
    taken = Settings.from_env({"MJHOOK_TRUSTED_PROXIES": "::1", name: entries})
    expected = ("10.0.0.1", "10.0.0.0/8", "[::1]", "fd00::/64")
    assert getattr(taken, name.removeprefix("MJHOOK_").lower()) == expected


def test_a_trusted_proxy_header_without_trusted_proxies_is_refused_at_start_up() -> None:
    """Given MJHOOK_TRUSTED_PROXY_HEADER set and MJHOOK_TRUSTED_PROXIES not
    When the settings are read
    Then a ConfigError names both (whose header to believe?); with proxies, or without the header
    (blanks alone count as none), they are taken."""
    with pytest.raises(ConfigError, match="MJHOOK_TRUSTED_PROXY_HEADER needs MJHOOK_TRUSTED_PROXIES"):
        Settings.from_env({"MJHOOK_TRUSTED_PROXY_HEADER": "X-Forwarded-For"})
    both = {"MJHOOK_TRUSTED_PROXY_HEADER": "X-Forwarded-For", "MJHOOK_TRUSTED_PROXIES": "10.0.0.2"}
    assert Settings.from_env(both).trusted_proxies == ("10.0.0.2",)
    assert Settings.from_env({"MJHOOK_TRUSTED_PROXY_HEADER": "  "}).trusted_proxies == ()
    with pytest.raises(ConfigError, match="MJHOOK_TRUSTED_PROXY_HEADER needs MJHOOK_TRUSTED_PROXIES"):
        Settings(trusted_proxy_header="X-Forwarded-For", trusted_proxies=(" ",))  # built in code


@pytest.mark.parametrize("name", ["MJHOOK_S3_ENDPOINT", "MJHOOK_S3_PUBLIC_ENDPOINT"])
@pytest.mark.parametrize("url", ["http://", "https://", "http://:9000", "http:///bucket"])
def test_an_s3_endpoint_without_a_host_is_refused_at_start_up(name: str, url: str) -> None:
    """minio took an endpoint naming no host, and every store and presigned link then failed."""
    with pytest.raises(ConfigError, match=f"{name}: .*names no host"):
        Settings.from_env({name: url})


@pytest.mark.parametrize(
    "key", [" ", "\t", "k3y\n", "k3y ", " k3y", "k3y\r", "k\u00e9y", "k3y\uff4b", "k3y\x1b[2J", "two words"]
)
def test_a_provider_api_key_a_header_cannot_carry_is_refused_at_start_up(key: str) -> None:
    """Given MJHOOK_PROVIDER_API_KEY set to blanks, or with blanks at an end (a newline from an
    .env), or holding what a header cannot carry (non-ASCII, a control)
    When the settings are read
    Then a ConfigError names the variable, without the key: each provider call failed as a
    transport error, retried for ever."""
    with pytest.raises(ConfigError, match=r"MJHOOK_PROVIDER_API_KEY: .*printable ASCII") as raised:
        Settings.from_env({"MJHOOK_PROVIDER_API_KEY": key})
    if key.strip():
        assert key.strip() not in str(raised.value)


def test_a_provider_api_key_is_one_key_not_a_rotation() -> None:
    """The provider key is sent whole as a Bearer token: a comma-separated "rotation" (as the
    callback token and the signature keys allow) would be sent as one key and refused."""
    with pytest.raises(ConfigError, match=r"MJHOOK_PROVIDER_API_KEY: .*one key") as raised:
        Settings.from_env({"MJHOOK_PROVIDER_API_KEY": "n3w-key,0ld-key"})
    assert "n3w-key" not in str(raised.value)
    assert Settings.from_env({"MJHOOK_PROVIDER_API_KEY": "q8Zk+fW3/xY=="}).provider_api_key == "q8Zk+fW3/xY=="
    assert Settings.from_env({"MJHOOK_PROVIDER_API_KEY": ""}).provider_api_key == ""


@pytest.mark.parametrize(
    ("access_key", "secret_key", "refused"),
    [
        (" ", "s3cr3t-key", "MJHOOK_S3_ACCESS_KEY"),
        ("AKID ", "s3cr3t-key", "MJHOOK_S3_ACCESS_KEY"),
        ("AK\u00cfD", "s3cr3t-key", "MJHOOK_S3_ACCESS_KEY"),
        ("AK ID", "s3cr3t-key", "MJHOOK_S3_ACCESS_KEY"),
        ("AKID", "s3cr3t-key\n", "MJHOOK_S3_SECRET_KEY"),
        ("AKID", " s3cr3t-key", "MJHOOK_S3_SECRET_KEY"),
        ("AKID", "s3cr3t\r-key", "MJHOOK_S3_SECRET_KEY"),
        ("AKID", " ", "MJHOOK_S3_SECRET_KEY"),
    ],
)
def test_s3_keys_with_a_quoting_slip_are_refused_at_start_up(
    access_key: str, secret_key: str, refused: str
) -> None:
    """The access key goes into the Authorization header of every S3 request, and the secret key
    signs it: blanks at an end or a control character (a quoting slip) failed every request.
    The error names the variable, not the key."""
    with pytest.raises(ConfigError, match=refused) as raised:
        Settings.from_env({"MJHOOK_S3_ACCESS_KEY": access_key, "MJHOOK_S3_SECRET_KEY": secret_key})
    assert "s3cr3t" not in str(raised.value)
    taken = Settings.from_env({"MJHOOK_S3_ACCESS_KEY": "AKIDEXAMPLE", "MJHOOK_S3_SECRET_KEY": "wJal r/K+=="})
    assert (taken.s3_access_key, taken.s3_secret_key) == ("AKIDEXAMPLE", "wJal r/K+==")


@pytest.mark.parametrize("level", ["verbose", "", " info", "trace", "notset", "10"])
def test_a_log_level_logging_does_not_know_is_refused_at_start_up(level: str) -> None:
    """Given MJHOOK_LOG_LEVEL naming no logging level
    When the settings are read
    Then a ConfigError names the variable and the levels it may name: each process died later,
    setting up its logs, with "ValueError: Unknown level"."""
    with pytest.raises(
        ConfigError, match=r"MJHOOK_LOG_LEVEL: .*must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
    ):
        Settings.from_env({"MJHOOK_LOG_LEVEL": level})


def test_a_log_level_is_read_in_any_case_as_upper_case() -> None:
    assert Settings.from_env({}).log_level == "INFO"
    assert Settings.from_env({"MJHOOK_LOG_LEVEL": "debug"}).log_level == "DEBUG"
    assert Settings.from_env({"MJHOOK_LOG_LEVEL": "Warning"}).log_level == "WARNING"
    # and the other names Python's logging knows for two of them
    assert Settings.from_env({"MJHOOK_LOG_LEVEL": "warn"}).log_level == "WARNING"
    assert Settings.from_env({"MJHOOK_LOG_LEVEL": "FATAL"}).log_level == "CRITICAL"


@pytest.mark.parametrize("name", ["MJHOOK_PROVIDER_URL", "MJHOOK_PUBLIC_URL"])
@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://api.example", "must start with http://, https://"),
        ("javascript:alert(1)", "must start with http://, https://"),
        ("abc", "must start with http://, https://"),
        ("//hooks.example.com/x", "must start with http://, https://"),
        ("http:hooks.example.com", "must start with http://, https://"),
        ("https://", "names no host"),
        ("http://:8080/x", "names no host"),
        ("https://api.example?x=1", "no query"),
        ("https://api.example/base#frag", "no query"),
        ("http://127.0.0.1:8090/?", "no query"),
        ("http://127.0.0.1:8090#", "no query"),
    ],
)
def test_an_http_url_without_http_or_a_host_is_refused_at_start_up(name: str, url: str, reason: str) -> None:
    """Given the provider's URL or our public URL with another scheme, or no host
    When the settings are read
    Then a ConfigError names the variable; each call to the provider, or each task submitted with
    such a callback address, failed instead. Empty keeps its meaning for both."""
    with pytest.raises(ConfigError, match=f"{name}: .*{reason}"):
        Settings.from_env({name: url})
    assert getattr(Settings.from_env({name: ""}), name[len("MJHOOK_") :].lower()) == ""


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("MJHOOK_PROVIDER_URL", "HTTPS://api.example/v2"),  # a scheme in any case, as httpx reads it
        ("MJHOOK_PUBLIC_URL", "Https://hooks.example"),
        ("MJHOOK_REDIS_URL", "redis://127.0.0.1:6379/0/"),  # redis-py: database 0
    ],
)
def test_urls_their_clients_read_are_taken(name: str, url: str) -> None:
    assert getattr(Settings.from_env({name: url}), name[len("MJHOOK_") :].lower()) == url


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MJHOOK_S3_BUCKET", "bucket-\udcff"),
        ("MJHOOK_REDIS_URL", "redis://:s3cr3t\udcff@127.0.0.1:6379/0"),
        ("MJHOOK_BROKER_URL", "amqp://u:s3cr3t\udcff@127.0.0.1:5672/"),
        ("MJHOOK_CALLBACK_TOKEN", "s3cr3t\udcff"),
        ("MJHOOK_WEBHOOK_HMAC_KEY", "s3cr3t\udce9"),
        ("MJHOOK_S3_REGION", "eu\udcff"),
    ],
)
def test_a_value_that_is_not_utf8_is_refused_at_start_up_by_name(name: str, value: str) -> None:
    """Given a variable whose bytes are no UTF-8 (os.environ gives each such byte as a lone
    surrogate)
    When the settings are read
    Then a one-line ConfigError names the variable, not its value: it raised a UnicodeEncodeError
    (a traceback) where it was first encoded, reading the settings or on a request."""
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({name: value})
    message = str(raised.value)
    assert message == f"invalid configuration: {name}: not valid UTF-8 (bytes no text decodes to)"
    message.encode()  # printable anywhere


def test_a_spool_directory_may_be_named_in_any_bytes() -> None:
    # A path is bytes: the spool handles a name with no UTF-8 (tests/cli/test_non_utf8_...)
    assert Settings.from_env({"MJHOOK_SPOOL_DIR": "/var/spool-\udcff"}).spool_dir == "/var/spool-\udcff"


def test_the_repr_of_settings_shows_no_secret() -> None:
    """Given every secret set, and passwords in the Redis and broker URLs
    When the settings are shown (repr, str: a log line, a traceback's locals)
    Then none of the secrets appears, the URLs show their host with the credentials masked, and
    the code still reads every value as it is."""
    env = {
        "MJHOOK_REDIS_URL": "redis://user:r3dis-pw@127.0.0.1:6379/0?password=q-pw",
        "MJHOOK_BROKER_URL": "amqp://guest:amqp-pw@127.0.0.1:5672/",
        "MJHOOK_S3_ACCESS_KEY": "AKIDSECRET",
        "MJHOOK_S3_SECRET_KEY": "s3-secret",
        "MJHOOK_CALLBACK_TOKEN": "cb-token",
        "MJHOOK_WEBHOOK_HMAC_KEY": "hmac-key",
        "MJHOOK_API_TOKEN": "api-token",
        "MJHOOK_PROVIDER_API_KEY": "provider-key",
        "MJHOOK_PROVIDER_URL": "https://u:prov-pw@api.example.com",
    }
    settings = Settings.from_env(env)
    for shown in (repr(settings), str(settings)):
        for secret in ("r3dis-pw", "q-pw", "amqp-pw", "AKIDSECRET", "s3-secret", "cb-token", "hmac-key"):
            assert secret not in shown
        for secret in ("api-token", "provider-key", "prov-pw", "user:", "guest:"):
            assert secret not in shown
        assert "redis_url='redis://***@127.0.0.1:6379/0?password=***'" in shown
        assert "broker_url='amqp://***@127.0.0.1:5672/'" in shown
    assert {getattr(settings, key[len("MJHOOK_") :].lower()) for key in env} == set(env.values())


def test_an_upper_case_broker_scheme_is_refused_naming_every_scheme_a_broker_may_have() -> None:
    """redis-py and the broker's choice read schemes in lower case: AMQP:// is refused, and the
    message names amqp:// among what it may be (it named the Redis schemes alone)."""
    with pytest.raises(ConfigError, match=r"MJHOOK_BROKER_URL: .*must start with .*amqp://, amqps://"):
        Settings.from_env({"MJHOOK_BROKER_URL": "AMQP://guest:guest@127.0.0.1:5672/"})
