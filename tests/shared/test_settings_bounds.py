"""The upper bounds of the numeric settings: an absurd value is refused at start-up, naming the
variable, instead of being taken and failing later (a TTL Redis refuses on every write, a timeout
no wait can take)."""

from __future__ import annotations

import annotated_types
import pytest

from shared.errors import ConfigError
from shared.settings import Settings

YEAR_S = 365 * 86_400
KIB, MIB, GIB, TIB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

#: Each bounded variable with the largest value taken (the next integer, or a thousandth more,
#: is refused). MJHOOK_POLL_GIVE_UP_S has a test of its own.
LARGEST = [
    ("MJHOOK_CONNECT_TIMEOUT_S", 300),
    ("MJHOOK_READ_TIMEOUT_S", 3600),
    ("MJHOOK_MIN_DOWNLOAD_RATE", GIB),
    ("MJHOOK_MIN_DOWNLOAD_RATE_AFTER_S", 86_400),
    ("MJHOOK_MAX_IMAGE_BYTES", 5 * TIB),
    ("MJHOOK_MAX_VIDEO_BYTES", 5 * TIB),
    ("MJHOOK_MAX_TASK_BYTES", 5 * TIB),
    ("MJHOOK_SPOOL_MEMORY_BYTES", GIB),
    ("MJHOOK_MAX_IMAGE_PIXELS", (2**32 - 1) ** 2),
    ("MJHOOK_MAX_IMAGE_SIDE", 2**32 - 1),
    ("MJHOOK_MAX_BODY_BYTES", 512 * MIB),
    ("MJHOOK_MAX_PROMPT_JSON_BYTES", 512 * MIB),
    ("MJHOOK_REJECTED_KEEP", 1_000_000),
    ("MJHOOK_REJECTED_BODY_BYTES", 512 * MIB),
    ("MJHOOK_REDIS_TIMEOUT_S", 60),
    ("MJHOOK_SPOOL_MAX_BYTES", TIB),
    ("MJHOOK_SPOOL_DRAIN_INTERVAL_S", 3600),
    ("MJHOOK_LEASE_TTL_S", 3600),
    ("MJHOOK_REDELIVERY_S", 3600),
    ("MJHOOK_DEAD_MESSAGE_TTL_S", YEAR_S),
    ("MJHOOK_TASK_TTL_S", YEAR_S),
    ("MJHOOK_MAX_RETRIES", 100),
    ("MJHOOK_MAX_ATTEMPT_STARTS", 100),
    ("MJHOOK_MIN_BACKOFF_MS", 86_400_000),
    ("MJHOOK_MAX_BACKOFF_MS", 86_400_000),
    ("MJHOOK_TASK_TIME_LIMIT_S", 86_400),
    ("MJHOOK_POLL_GRACE_S", YEAR_S),
    ("MJHOOK_POLL_INTERVAL_S", 86_400),
    ("MJHOOK_PRESIGN_EXPIRY_S", 7 * 86_400),  # the longest S3 signs for
]
FLOATS = [
    "MJHOOK_CONNECT_TIMEOUT_S",
    "MJHOOK_READ_TIMEOUT_S",
    "MJHOOK_MIN_DOWNLOAD_RATE_AFTER_S",
    "MJHOOK_REDIS_TIMEOUT_S",
    "MJHOOK_SPOOL_DRAIN_INTERVAL_S",
]


@pytest.mark.parametrize(("name", "largest"), LARGEST)
def test_a_value_past_its_bound_is_refused_at_start_up(name: str, largest: int) -> None:
    """Given a numeric variable set one past its upper bound
    When the settings are read
    Then a ConfigError names it and the bound; the bound itself is taken."""
    assert getattr(Settings.from_env({name: str(largest)}), name[len("MJHOOK_") :].lower()) == largest
    past = f"{largest}.001" if name in FLOATS else str(largest + 1)
    with pytest.raises(ConfigError, match=f"{name}: Input should be less than or equal to {largest}"):
        Settings.from_env({name: past})


def test_the_polling_gives_up_within_a_year_and_before_the_task_record_expires() -> None:
    # Its own bound is a year; the task TTL, itself at most a year, must outlast it by an hour
    taken = Settings.from_env({"MJHOOK_POLL_GIVE_UP_S": str(YEAR_S - 3600), "MJHOOK_TASK_TTL_S": str(YEAR_S)})
    assert (taken.poll_give_up_s, taken.task_ttl_s) == (YEAR_S - 3600, YEAR_S)
    with pytest.raises(
        ConfigError, match=f"MJHOOK_POLL_GIVE_UP_S: Input should be less than or equal to {YEAR_S}"
    ):
        Settings.from_env({"MJHOOK_POLL_GIVE_UP_S": str(YEAR_S + 1)})


@pytest.mark.parametrize("name", [*(name for name, _ in LARGEST), "MJHOOK_POLL_GIVE_UP_S"])
def test_an_absurd_integer_is_refused_at_start_up(name: str) -> None:
    """MJHOOK_TASK_TTL_S=99999999999999999999 was taken, and every callback then got a 503: Redis
    refused each EXPIRE (the spool kept them, and its drain failed each round)."""
    with pytest.raises(ConfigError, match=f"{name}: "):
        Settings.from_env({name: "99999999999999999999"})


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "NaN", "1e309", "Infinity"])
def test_a_float_that_is_not_finite_is_refused_at_start_up(name: str, value: str) -> None:
    """A timeout or an interval of "inf" (or of a number past a float's range, "1e309") was
    taken, and a socket or a wait given it raised OverflowError ("nan" and "-inf": refused
    already, by the lower bound)."""
    with pytest.raises(ConfigError, match=f"{name}: "):
        Settings.from_env({name: value})


@pytest.mark.parametrize("ports", ["0", "65536", "443,-1", "99999999999999999999"])
def test_a_fetch_port_that_tcp_has_not_is_refused_at_start_up(ports: str) -> None:
    with pytest.raises(ConfigError, match="MJHOOK_FETCH_PORTS: "):
        Settings.from_env({"MJHOOK_FETCH_PORTS": ports})
    assert Settings.from_env({"MJHOOK_FETCH_PORTS": "1,65535"}).fetch_ports == (1, 65535)


def test_every_numeric_setting_has_an_upper_bound() -> None:
    """A new number without one would take an absurd value again."""
    unbounded = [
        name
        for name, field in Settings.model_fields.items()
        if field.annotation in (int, float)
        and not any(isinstance(rule, (annotated_types.Le, annotated_types.Lt)) for rule in field.metadata)
    ]
    assert unbounded == []
