"""``mjhook rejected list`` with a kept entry another program wrote, whose status or body size is a
number past what JSON's 64-bit integers hold: listed as an unreadable entry, not a traceback."""

from __future__ import annotations

import json

import orjson
import pytest

from shared import keys
from shared.rejected import read_entry
from tests.cli.conftest import RunCli
from tests.support.servers import RedisServer

GOOD = {"at": "2026-11-27T00:00:01.000Z", "status": 401, "reason": "bad token", "body": "{}", "bodySize": 2}


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"status": 1e30}, id="status-float"),
        pytest.param({"status": 2**63}, id="status-just-past"),
        pytest.param({"status": -1e20}, id="status-far-below"),
        pytest.param({"bodySize": "99999999999999999999999"}, id="body-size-text"),
        pytest.param({"bodySize": "9" * 5000}, id="body-size-too-many-digits"),
    ],
)
def test_a_number_past_64_bits_makes_an_unreadable_entry(
    redis_server: RedisServer, run_cli: RunCli, fields: dict[str, object]
) -> None:
    # Given a readable entry, and one whose number is past a signed 64-bit integer (orjson writes
    # none such: Python's json does)
    odd = json.dumps({**GOOD, "at": "2026-11-27T00:00:00.000Z", **fields}).encode()
    client = redis_server.client()
    client.lpush(keys.REJECTED, odd, orjson.dumps(GOOD))
    # When they are read, and listed
    entry = read_entry(odd)
    result = run_cli({"MJHOOK_REDIS_URL": redis_server.url}, "rejected", "list", "--json")
    table = run_cli({"MJHOOK_REDIS_URL": redis_server.url}, "rejected", "list")
    # Then the odd one is an unreadable entry, its bytes as the body (orjson raised "Integer
    # exceeds 64-bit range"), and the other is listed as it was kept
    assert (entry.reason, entry.status, entry.body_size, entry.body) == (
        "unreadable entry",
        0,
        len(odd),
        odd.decode(),
    )
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert listed["total"] == 2
    assert [(row["reason"], row["status"]) for row in listed["rejected"]] == [
        ("bad token", 401),
        ("unreadable entry", 0),
    ]
    assert table.exit_code == 0, table.output


def test_the_largest_64_bit_numbers_are_read() -> None:
    raw = json.dumps({**GOOD, "status": 2**63 - 1, "bodySize": -(2**63)}).encode()
    entry = read_entry(raw)
    assert (entry.status, entry.body_size) == (2**63 - 1, -(2**63))
