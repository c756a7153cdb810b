"""``mjhook`` reads its settings when a command runs: a bad one is one ``Error:`` line with exit
code 1 for every command that uses them, and ``--help`` works whatever they are."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest

from cli.main import main
from tests.cli.conftest import RunCli
from tests.support.procs import free_port

#: Every command that reads the settings, with the arguments it needs to get that far.
COMMANDS = [
    ("status",),
    ("tasks",),
    ("dlq", "list"),
    ("dlq", "replay"),
    ("dlq", "purge", "--yes"),
    ("rejected", "list"),
    ("rejected", "replay", "r-1"),
    ("get", "t-1"),
    ("recover",),
    ("submit", "a fox"),
    ("upscale", "t-1", "0"),
    ("vary", "t-1", "0"),
    ("simulate", "load", "--callback-url", "http://127.0.0.1:9/callbacks/midjourney"),
]


def nowhere() -> str:
    """A Redis URL where nothing listens: a command that got past its settings would fail there."""
    return f"redis://127.0.0.1:{free_port()}/0"


def leaf_commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from leaf_commands(command, (*path, name))
        else:
            yield (*path, name)


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"MJHOOK_DEAD_MESSAGE_TTL": "86400"}, "MJHOOK_DEAD_MESSAGE_TTL: no such setting (misspelled?)"),
        ({"MJHOOK_MAX_RETRIES": "-1"}, "MJHOOK_MAX_RETRIES: Input should be greater than or equal to 0"),
        (
            {"MJHOOK_REDIS_URL": "redis://:s3cr3t@127.0.0.1:99999/0"},
            "MJHOOK_REDIS_URL: Value error, not a valid Redis URL: Port out of range 0-65535",
        ),
        (
            {"MJHOOK_BROKER_URL": "amqp://guest:s3cr3t@[::1/"},
            "MJHOOK_BROKER_URL: Value error, not a valid RabbitMQ URL: Invalid IPv6 URL",
        ),
        (
            {"MJHOOK_S3_ENDPOINT": "http://u@127.0.0.1:1"},
            "MJHOOK_S3_ENDPOINT: Value error, not a valid S3 endpoint URL:"
            " username in endpoint is not allowed",
        ),
        (
            {"MJHOOK_S3_BUCKET": "a..b"},
            "MJHOOK_S3_BUCKET: Value error, bucket name a..b contains invalid successive characters",
        ),
        (
            {"MJHOOK_S3_ACCESS_KEY": "k3y"},
            "MJHOOK_S3_ACCESS_KEY and MJHOOK_S3_SECRET_KEY must be set together, or neither",
        ),
    ],
    ids=[
        "misspelled",
        "out-of-range",
        "redis-port",
        "broker-ipv6",
        "s3-endpoint-user",
        "s3-bucket",
        "s3-key-alone",
    ],
)
@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_a_bad_setting_is_one_error_line_for_every_command(
    run_cli: RunCli, args: tuple[str, ...], bad: dict[str, str], named: str
) -> None:
    """Given a misspelled MJHOOK_* name, a value out of its range, or one its client library
    (redis-py, pika, minio) cannot read
    When any command that uses the settings runs
    Then it prints one `Error:` line naming the variable and exits 1, before it does anything:
    no traceback (run_cli lets one through), and no password from a URL."""
    result = run_cli({"MJHOOK_REDIS_URL": nowhere(), **bad}, *args)
    assert result.exit_code == 1, result.output
    assert result.stderr == f"Error: invalid configuration: {named}\n"
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args", [("status",), ("tasks",), ("rejected", "list"), ("dlq", "list")], ids=" ".join
)
def test_a_redis_url_without_its_scheme_is_one_error_line_naming_it(
    run_cli: RunCli, args: tuple[str, ...]
) -> None:
    """Given MJHOOK_REDIS_URL as a host and port without redis:// (and no MJHOOK_BROKER_URL)
    When a command reading Redis or the queue runs
    Then it prints one `Error:` line naming MJHOOK_REDIS_URL, not MJHOOK_BROKER_URL, and exits 1:
    not redis-py's ValueError traceback."""
    result = run_cli({"MJHOOK_REDIS_URL": f"127.0.0.1:{free_port()}"}, *args)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: invalid configuration: MJHOOK_REDIS_URL: ")
    assert "redis://, rediss://, unix://" in result.stderr
    assert "MJHOOK_BROKER_URL" not in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("args", list(leaf_commands(main)), ids=" ".join)
def test_help_works_whatever_the_settings(run_cli: RunCli, args: tuple[str, ...]) -> None:
    """Given settings that are wrong twice over (a misspelled name, a scheme-less Redis URL)
    When `mjhook ... --help` asks any command how it is used
    Then it says so, exit code 0: the settings are read only when a command runs."""
    env = {"MJHOOK_REDIS_ULR": nowhere(), "MJHOOK_REDIS_URL": "127.0.0.1:6379"}
    result = run_cli(env, *args, "--help")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: {' '.join(('main', *args))} ")  # CliRunner calls it "main"
