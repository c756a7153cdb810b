"""``mjhook dlq``: dead letters made by a real worker, listed with their reason, replayed onto the
queue and purged."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import orjson
import pytest
import redis
from click.testing import CliRunner, Result

from cli.dlq import purge_command
from shared import keys
from shared.queue import BROKER_NAMESPACE, CALLBACK_QUEUE, POLL_QUEUE, PROCESS_CALLBACK
from shared.redis_broker import RedisClockBroker
from shared.settings import Settings
from tests.cli.conftest import RunCli, dead_letters_from_real_workers
from tests.support.pipeline import queued_callback
from tests.support.servers import RedisServer

pytestmark = pytest.mark.integration

DEAD = keys.broker_dead(BROKER_NAMESPACE, CALLBACK_QUEUE)
READY = keys.broker_queue(BROKER_NAMESPACE, CALLBACK_QUEUE)
MESSAGES = keys.broker_messages(BROKER_NAMESPACE, CALLBACK_QUEUE)


def test_dead_letters_are_listed_with_their_reason_then_replayed_or_purged(
    app_env: dict[str, str], tmp_path: Path, run_cli: RunCli
) -> None:
    client = redis.Redis.from_url(app_env["MJHOOK_REDIS_URL"])
    # Given three callbacks a real worker refused for good
    task_ids = ["dlq-1", "dlq-2", "dlq-3"]
    dead_letters_from_real_workers(app_env, tmp_path, [queued_callback(t, code="oops") for t in task_ids])

    # list: each with its taskId and why it died
    result = run_cli(app_env, "dlq", "list", "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert listed["total"] == 3
    by_task = {message["taskId"]: message for message in listed["messages"]}
    assert sorted(by_task) == task_ids
    for message in by_task.values():
        assert "'code' must be an integer" in message["reason"]
        assert message["retries"] == 0
        assert message["ageSeconds"] >= 0
    human = run_cli(app_env, "dlq", "list")
    assert human.exit_code == 0, human.output
    assert "dlq-1" in human.stdout
    assert "must be an integer" in human.stdout

    # replay one by id: it is back on the ready list, fresh, and no longer dead
    first = by_task["dlq-1"]["id"]
    result = run_cli(app_env, "dlq", "replay", first)
    assert result.exit_code == 0, result.output
    ready = [member.decode() for member in client.lrange(READY, 0, -1)]
    assert len(ready) == 1
    body = orjson.loads(client.hget(MESSAGES, ready[0]))
    assert body["args"][0]["taskId"] == "dlq-1"
    assert "retries" not in body["options"]
    assert client.zscore(DEAD, first) is None

    # replay of an id that is not dead: exit code 1
    result = run_cli(app_env, "dlq", "replay", first)
    assert result.exit_code == 1
    assert "not a dead letter" in result.stderr

    # purge of one id: only that one is dropped
    result = run_cli(app_env, "dlq", "purge", "--yes", by_task["dlq-2"]["id"])
    assert result.exit_code == 0, result.output
    assert client.zcard(DEAD) == 1

    # replay with no ids: all that is left; the dead letters are then empty
    result = run_cli(app_env, "dlq", "replay")
    assert result.exit_code == 0, result.output
    assert client.zcard(DEAD) == 0
    assert client.hlen(keys.broker_dead_messages(BROKER_NAMESPACE, CALLBACK_QUEUE)) == 0
    tasks_ready = {
        orjson.loads(client.hget(MESSAGES, m))["args"][0]["taskId"] for m in client.lrange(READY, 0, -1)
    }
    assert tasks_ready == {"dlq-1", "dlq-3"}
    client.close()


def test_a_hostile_dead_letter_is_listed_without_its_terminal_controls(
    app_env: dict[str, str], tmp_path: Path, run_cli: RunCli
) -> None:
    # Given a queued callback the workers refused, whose taskId and msg carry terminal controls
    hostile = queued_callback("t\x1b[2J", msg="\x1b]0;pwned\x07", code="oops")
    dead_letters_from_real_workers(app_env, tmp_path, [hostile])
    # When an operator lists the dead letters
    result = run_cli(app_env, "dlq", "list")
    # Then the taskId is shown with its controls as escapes, none of them sent
    assert result.exit_code == 0, result.output
    assert "t\\x1b[2J" in result.stdout
    assert not {"\x1b", "\x07"} & set(result.stdout)


def run_purge(env: dict[str, str], *args: str, terminal: bool, answer: str | None = None) -> Result:
    """``mjhook dlq purge *args`` with stdin a terminal or not, and ``answer`` typed at its question."""
    command = purge_command(is_terminal=lambda: terminal)
    return CliRunner().invoke(command, list(args), obj=Settings.from_env(env), input=answer)


def dead_letter_ids(client: redis.Redis) -> list[str]:
    return sorted(member.decode() for member in client.zrange(DEAD, 0, -1))


@pytest.fixture
def three_dead_letters(app_env: dict[str, str], tmp_path: Path) -> Iterator[redis.Redis]:
    """Three callbacks a real worker refused for good; a client of their Redis."""
    task_ids = ("purge-1", "purge-2", "purge-3")
    dead_letters_from_real_workers(app_env, tmp_path, [queued_callback(t, code="oops") for t in task_ids])
    client = redis.Redis.from_url(app_env["MJHOOK_REDIS_URL"])
    yield client
    client.close()


def test_purge_from_a_script_drops_all_the_dead_letters_without_asking(
    app_env: dict[str, str], three_dead_letters: redis.Redis, run_cli: RunCli
) -> None:
    # When a script (stdin not a terminal) runs the contract's plain `mjhook dlq purge`
    result = run_cli(app_env, "dlq", "purge")
    # Then all are gone, and nothing was asked
    assert result.exit_code == 0, result.output
    assert "3 dead letter(s) purged" in result.stdout
    assert "Purge" not in result.output
    assert three_dead_letters.zcard(DEAD) == 0


def test_purge_at_a_terminal_answered_no_keeps_the_dead_letters(
    app_env: dict[str, str], three_dead_letters: redis.Redis
) -> None:
    before = dead_letter_ids(three_dead_letters)
    # When an operator at a terminal purges all, then one by id, and answers no each time
    everything = run_purge(app_env, terminal=True, answer="n\n")
    one = run_purge(app_env, before[0], terminal=True, answer="\n")  # Enter: the default, no
    # Then each question said what would go, each answer purged nothing and exited 1
    assert f"Purge all 3 dead letter(s) of {CALLBACK_QUEUE} for good? [y/N]" in everything.stderr
    assert f"Purge 1 dead letter(s) of {CALLBACK_QUEUE} for good: {before[0]}? [y/N]" in one.stderr
    for result in (everything, one):
        assert result.exit_code == 1, result.output
        assert "nothing purged" in result.stderr
        assert "purged from" not in result.stdout
    assert dead_letter_ids(three_dead_letters) == before


def test_purge_at_a_terminal_answered_yes_drops_the_dead_letters(
    app_env: dict[str, str], three_dead_letters: redis.Redis
) -> None:
    first, *rest = dead_letter_ids(three_dead_letters)
    # When an operator at a terminal purges one by id and answers yes
    result = run_purge(app_env, first, terminal=True, answer="y\n")
    # Then that one only is gone
    assert result.exit_code == 0, result.output
    assert f"for good: {first}? [y/N]" in result.stderr
    assert "1 dead letter(s) purged" in result.stdout
    assert dead_letter_ids(three_dead_letters) == rest
    # And when they purge all and answer yes, the rest are gone too
    result = run_purge(app_env, terminal=True, answer="y\n")
    assert result.exit_code == 0, result.output
    assert "Purge all 2 dead letter(s)" in result.stderr
    assert "2 dead letter(s) purged" in result.stdout
    assert three_dead_letters.zcard(DEAD) == 0
    # And with none left, nothing is asked
    result = run_purge(app_env, terminal=True)
    assert result.exit_code == 0, result.output
    assert "Purge" not in result.output
    assert "0 dead letter(s) purged" in result.stdout


def test_purge_with_yes_at_a_terminal_drops_them_without_asking(
    app_env: dict[str, str], three_dead_letters: redis.Redis
) -> None:
    # When an operator at a terminal purges with --yes, typing nothing
    result = run_purge(app_env, "--yes", terminal=True)
    # Then all are gone and no question was asked (one would have met the end of input: exit 1)
    assert result.exit_code == 0, result.output
    assert "Purge" not in result.output
    assert "3 dead letter(s) purged" in result.stdout
    assert three_dead_letters.zcard(DEAD) == 0


def test_purge_all_at_a_terminal_drops_only_what_the_question_counted(
    app_env: dict[str, str], three_dead_letters: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a letter is dead-lettered while the operator reads the question, and they answer yes
    def answer_yes_after_a_new_dead_letter(question: str, **_: object) -> bool:
        three_dead_letters.zadd(DEAD, {"late-1": time.time()})
        return True

    monkeypatch.setattr("click.confirm", answer_yes_after_a_new_dead_letter)
    # When they purge all
    result = run_purge(app_env, terminal=True)
    # Then the three they were asked about are gone, the late one is kept
    assert result.exit_code == 0, result.output
    assert "3 dead letter(s) purged" in result.stdout
    assert dead_letter_ids(three_dead_letters) == ["late-1"]


def plant_dead_letter(client: redis.Redis, task_id: str) -> str:
    """A dead letter of ``task_id``'s callback, as dramatiq's nack leaves it (dispatch.lua); its id."""
    redis_id = str(uuid.uuid4())
    message: dramatiq.Message[None] = dramatiq.Message(
        queue_name=CALLBACK_QUEUE,
        actor_name=PROCESS_CALLBACK,
        args=(queued_callback(task_id),),
        kwargs={},
        options={"redis_message_id": redis_id, "retries": 3},
    )
    client.zadd(DEAD, {redis_id: int(time.time() * 1000)})
    client.hset(keys.broker_dead_messages(BROKER_NAMESPACE, CALLBACK_QUEUE), redis_id, message.encode())
    return redis_id


def plant_dead_letter_of_id(client: redis.Redis, redis_id: bytes) -> bytes:
    """A dead letter of a fine callback whose broker id is ``redis_id`` (bytes another program may
    write, not only a UUID), the oldest; its id."""
    message: dramatiq.Message[None] = dramatiq.Message(
        queue_name=CALLBACK_QUEUE,
        actor_name=PROCESS_CALLBACK,
        args=(queued_callback("odd"),),
        kwargs={},
        options={"retries": 1},
    )
    client.zadd(DEAD, {redis_id: 1_000})
    client.hset(keys.broker_dead_messages(BROKER_NAMESPACE, CALLBACK_QUEUE), redis_id, message.encode())
    return redis_id


def test_replay_of_an_id_named_twice_queues_it_once(
    redis_server: RedisServer, client: redis.Redis, run_cli: RunCli
) -> None:
    """Given one dead letter
    When `mjhook dlq replay ID ID` names it twice
    Then one message is back on the queue and one is reported replayed."""
    dead_id = plant_dead_letter(client, "twice")
    result = run_cli({"MJHOOK_REDIS_URL": redis_server.url}, "dlq", "replay", dead_id, dead_id)
    assert result.exit_code == 0, result.output
    assert client.llen(READY) == 1
    assert client.zcard(DEAD) == 0
    assert result.stdout.count(f"replayed {dead_id} as ") == 1
    assert f"1 dead letter(s) replayed onto {CALLBACK_QUEUE}" in result.stdout


def test_purge_of_an_id_named_twice_asks_about_and_counts_it_once(
    redis_server: RedisServer, client: redis.Redis, run_cli: RunCli
) -> None:
    """Given two dead letters
    When `mjhook dlq purge ID ID` names one twice, from a script, then the other twice at a
    terminal, answered yes
    Then each purge reports one purged, and the question counted and named it once."""
    env = {"MJHOOK_REDIS_URL": redis_server.url}
    first, second = plant_dead_letter(client, "one"), plant_dead_letter(client, "two")
    scripted = run_cli(env, "dlq", "purge", first, first)
    asked = run_purge(env, second, second, terminal=True, answer="y\n")
    for result in (scripted, asked):
        assert result.exit_code == 0, result.output
        assert f"1 dead letter(s) purged from {CALLBACK_QUEUE}" in result.stdout
    assert f"Purge 1 dead letter(s) of {CALLBACK_QUEUE} for good: {second}? [y/N]" in asked.stderr
    assert client.zcard(DEAD) == 0


def test_purge_at_a_terminal_asks_only_about_the_ids_that_are_dead_letters(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    """Given one dead letter
    When `mjhook dlq purge` at a terminal names it and an id that is no dead letter, answered yes,
    and then names only ids that are none
    Then the question counts and names the dead letter alone, saying the other is none, and the
    second purge asks nothing: each exits 1 naming what is not a dead letter. It asked to purge
    2 dead letters, and then 1, of ids that were none."""
    env = {"MJHOOK_REDIS_URL": redis_server.url}
    dead_id = plant_dead_letter(client, "one")

    mixed = run_purge(env, dead_id, "nope", terminal=True, answer="y\n")
    none = run_purge(env, "nope", terminal=True)  # a question would meet the end of input

    assert (
        f"Purge 1 dead letter(s) of {CALLBACK_QUEUE} for good: {dead_id} (1 other id(s) named: "
        "not dead letters)? [y/N]"
    ) in mixed.stderr
    assert f"1 dead letter(s) purged from {CALLBACK_QUEUE}" in mixed.stdout
    assert "Purge" not in none.output
    assert f"0 dead letter(s) purged from {CALLBACK_QUEUE}" in none.stdout
    for result in (mixed, none):
        assert result.exit_code == 1, result.output
        assert result.stderr.endswith("Error: not a dead letter: nope\n")
    assert client.zcard(DEAD) == 0


def odd_dead_letter(client: redis.Redis, dead_id: str, score: float, **fields: object) -> None:
    """A dead letter written by hand: a callback message with ``fields`` replaced, at ``score``."""
    message = {
        "queue_name": CALLBACK_QUEUE,
        "actor_name": PROCESS_CALLBACK,
        "args": [queued_callback("odd")],
        "kwargs": {},
        "options": {},
        "message_id": "m-odd",
        "message_timestamp": 1,
    }
    client.zadd(DEAD, {dead_id: score})
    client.hset(
        keys.broker_dead_messages(BROKER_NAMESPACE, CALLBACK_QUEUE),
        dead_id,
        json.dumps({**message, **fields}),
    )


UNDECODABLE: dict[str, object] = {"taskId": None, "reason": "the message cannot be decoded"}
NO_TIME: dict[str, object] = {"taskId": "odd", "deadAt": None, "ageSeconds": None}
ODD_LETTERS: dict[str, tuple[dict[str, object], float, dict[str, object]]] = {
    # case: (fields of the message, score, what the JSON list says of it)
    "options-a-list": ({"options": [1, 2]}, 1_700_000_000_000, UNDECODABLE),
    "retries-no-number": ({"options": {"retries": "x"}}, 1_700_000_000_000, UNDECODABLE),
    "retries-past-64-bits": ({"options": {"retries": 2**64}}, 1_700_000_000_000, UNDECODABLE),
    "score-past-any-date": ({}, 1e300, NO_TIME),
    "score-minus-infinity": ({}, float("-inf"), NO_TIME),
    "task-id-of-a-megabyte": (
        {"args": [{"taskId": "T" * 1_000_000}]},
        1_700_000_000_000,
        {"taskId": "T" * 63 + "\u2026"},
    ),
}


@pytest.mark.parametrize("case", sorted(ODD_LETTERS))
def test_an_odd_dead_letter_is_listed_beside_the_others(
    redis_server: RedisServer, client: redis.Redis, run_cli: RunCli, case: str
) -> None:
    """Given a dead letter and one written by hand: options no object, retries no number or past
    what JSON takes, a score no date shows, a taskId of a megabyte
    When the dead letters are listed, as JSON and as a table
    Then both are, exit code 0: the odd one as one that cannot be decoded, without a time, or
    with its taskId shortened. Each was a traceback that hid every dead letter, or a megabyte
    of taskId on the terminal."""
    fields, score, expected = ODD_LETTERS[case]
    good = plant_dead_letter(client, "good")
    odd_dead_letter(client, "odd-1", score, **fields)
    env = {"MJHOOK_REDIS_URL": redis_server.url}

    listed = run_cli(env, "dlq", "list", "--json")
    table = run_cli(env, "dlq", "list")

    assert listed.exit_code == 0, listed.output[:500]
    messages = {message["id"]: message for message in json.loads(listed.stdout)["messages"]}
    assert messages[good]["taskId"] == "good"
    assert messages[good]["retries"] == 3
    assert {name: messages["odd-1"][name] for name in expected} == expected
    assert table.exit_code == 0, table.output[:500]
    assert "good" in table.stdout
    assert "odd-1" in table.stdout
    assert len(table.stdout) < 10_000


def test_a_replay_of_all_leaves_an_odd_dead_letter_and_replays_the_others(
    redis_server: RedisServer, client: redis.Redis, run_cli: RunCli
) -> None:
    """Given two dead letters, and between them in age one whose options are no object, its id
    with a terminal control
    When all are replayed
    Then both others are on the queue and listed as replayed, and the odd one is said to be left
    in place (exit code 1), and is: the replay raised at it, saying nothing of the one it had
    replayed, and every replay after stopped there again."""
    first, last = plant_dead_letter(client, "first"), plant_dead_letter(client, "last")
    client.zadd(DEAD, {first: 1_000, last: 3_000})
    odd_dead_letter(client, "odd\x1b", 2_000, options=[1])

    result = run_cli({"MJHOOK_REDIS_URL": redis_server.url}, "dlq", "replay")

    assert result.exit_code == 1, result.output
    assert result.stdout.startswith(f"replayed {first} as ")
    assert f"\nreplayed {last} as " in result.stdout
    assert f"2 dead letter(s) replayed onto {CALLBACK_QUEUE}" in result.stdout
    assert result.stderr == "Error: cannot be decoded, left in place: odd\\x1b\n"
    assert client.llen(READY) == 2
    assert dead_letter_ids(client) == ["odd\x1b"]


def test_a_dead_letter_whose_id_is_no_utf8_is_listed_left_by_replay_and_purged(
    redis_server: RedisServer, client: redis.Redis, run_cli: RunCli
) -> None:
    """Given a dead letter, and an older one whose broker id is bytes that are no UTF-8 text (written
    by another program), its message a fine callback, stored as dramatiq's nack leaves one
    When the dead letters are listed (JSON and table), all are replayed, then all are purged
    Then it is listed with its id escaped, as one that cannot be decoded; the replay queues the
    other and says it left this one in place (exit code 1), and it is; the purge drops it. Each
    was a traceback: the id was decoded as UTF-8 wherever it was read."""
    good = plant_dead_letter(client, "good")
    odd_id = plant_dead_letter_of_id(client, b"caf\xe9-\xff")
    env = {"MJHOOK_REDIS_URL": redis_server.url}

    listed = run_cli(env, "dlq", "list", "--json")
    table = run_cli(env, "dlq", "list")
    replayed = run_cli(env, "dlq", "replay")

    assert listed.exit_code == 0, listed.output[:500]
    messages = {message["id"]: message for message in json.loads(listed.stdout)["messages"]}
    assert set(messages) == {good, "caf\\xe9-\\xff"}
    assert messages["caf\\xe9-\\xff"]["taskId"] is None
    assert messages["caf\\xe9-\\xff"]["reasonSource"] == "unknown"
    assert table.exit_code == 0, table.output[:500]
    assert "caf\\xe9-\\xff" in table.stdout
    assert replayed.exit_code == 1, replayed.output
    assert replayed.stdout.startswith(f"replayed {good} as ")
    assert replayed.stderr == "Error: cannot be decoded, left in place: caf\\xe9-\\xff\n"
    assert client.llen(READY) == 1
    assert client.zrange(DEAD, 0, -1) == [odd_id]

    purged = run_cli(env, "dlq", "purge", "--yes")
    assert purged.exit_code == 0, purged.output
    assert f"1 dead letter(s) purged from {CALLBACK_QUEUE}" in purged.stdout
    assert client.zcard(DEAD) == 0
    assert client.hlen(keys.broker_dead_messages(BROKER_NAMESPACE, CALLBACK_QUEUE)) == 0


def test_a_dead_letter_with_a_lone_surrogate_or_a_reason_that_is_no_utf8_is_listed_without_a_traceback(
    redis_server: RedisServer, client: redis.Redis, run_cli: RunCli
) -> None:
    """Given a dead letter whose message's id is JSON text escaping a lone surrogate, and a fine one
    whose recorded reason is bytes that are no UTF-8 (both written by another program)
    When the dead letters are listed (JSON and table), and a replay names an id holding a lone
    surrogate
    Then the first is listed as one that cannot be decoded, the second with its reason's odd bytes
    replaced, and the replay says the id is not a dead letter. Each was a traceback."""
    good = plant_dead_letter(client, "good")
    client.set(keys.dead_reason(good), b"gave up: caf\xe9")
    body = dramatiq.Message(
        queue_name=CALLBACK_QUEUE,
        actor_name=PROCESS_CALLBACK,
        args=(queued_callback("odd"),),
        kwargs={},
        options={"retries": 1},
    ).encode()
    odd = orjson.loads(body)
    odd["message_id"] = "odd-id"
    client.zadd(DEAD, {"odd": 1_000})
    client.hset(
        keys.broker_dead_messages(BROKER_NAMESPACE, CALLBACK_QUEUE),
        "odd",
        orjson.dumps(odd).replace(b'"odd-id"', b'"odd-\\udcff"'),
    )
    env = {"MJHOOK_REDIS_URL": redis_server.url}

    listed = run_cli(env, "dlq", "list", "--json")
    table = run_cli(env, "dlq", "list")
    replayed = run_cli(env, "dlq", "replay", "lone-\ud800")

    assert listed.exit_code == 0, listed.output[:500]
    messages = {message["id"]: message for message in json.loads(listed.stdout)["messages"]}
    assert messages["odd"]["reason"] == "the message cannot be decoded"
    assert messages[good]["reason"] == "gave up: caf\N{REPLACEMENT CHARACTER}"
    assert table.exit_code == 0, table.output[:500]
    assert replayed.exit_code == 1
    assert replayed.stderr == "Error: not a dead letter: lone-\\ud800\n"


def test_a_dead_letter_whose_id_is_no_utf8_is_named_by_the_id_the_listing_shows(
    redis_server: RedisServer, client: redis.Redis, run_cli: RunCli
) -> None:
    """Given a dead letter whose broker id is bytes that are no UTF-8 text, listed as caf\\xe9-\\xff
    When a replay, then a purge, name it as listed (the escaped text)
    Then the replay finds it (left in place: cannot be decoded) and the purge drops it: the id
    the listing showed named no dead letter, and only a purge of every letter reached it."""
    plant_dead_letter_of_id(client, b"caf\xe9-\xff")
    kept = plant_dead_letter(client, "kept")
    env = {"MJHOOK_REDIS_URL": redis_server.url}
    (shown,) = [
        letter["id"]
        for letter in json.loads(run_cli(env, "dlq", "list", "--json").stdout)["messages"]
        if letter["id"] != kept
    ]

    replayed = run_cli(env, "dlq", "replay", shown)
    purged = run_cli(env, "dlq", "purge", "--yes", shown)

    assert shown == "caf\\xe9-\\xff"
    assert replayed.stderr == "Error: cannot be decoded, left in place: caf\\xe9-\\xff\n"
    assert purged.exit_code == 0, purged.output
    assert client.zrange(DEAD, 0, -1) == [kept.encode()]


def test_a_dead_letter_s_age_is_read_on_redis_s_clock_which_stamped_it(
    redis_server: RedisServer, client: redis.Redis, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a letter that died just now by Redis's clock (the one dramatiq's brokers stamp it with)
    When a host whose clock runs an hour ahead lists the dead letters
    Then its age is seconds, not an hour."""
    seconds, micros = client.time()
    odd_dead_letter(client, "just-now", seconds * 1000 + micros // 1000)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)

    result = run_cli({"MJHOOK_REDIS_URL": redis_server.url}, "dlq", "list", "--json")

    assert result.exit_code == 0, result.output
    [letter] = json.loads(result.stdout)["messages"]
    assert 0 <= letter["ageSeconds"] < 60


def test_the_polling_fallback_s_dead_letters_are_listed_replayed_and_purged_with_queue_poll(
    redis_server: RedisServer, client: redis.Redis, run_cli: RunCli
) -> None:
    """Given a poll pass dead-lettered (`mjhook status` counts it under the poll queue)
    When the operator runs `mjhook dlq --queue poll` list, replay and purge
    Then it is listed, replayed onto the poll queue, and a second one purged; the callbacks'
    dead letters are untouched. (dlq saw the callback queue alone: it could not be reached.)"""
    env = {"MJHOOK_REDIS_URL": redis_server.url}
    for dead_id in ("dead-poll-1", "dead-poll-2"):
        body = orjson.dumps(
            {
                "queue_name": POLL_QUEUE,
                "actor_name": "poll_silent_tasks",
                "args": [],
                "kwargs": {},
                "options": {"retries": 20},
                "message_id": f"m-{dead_id}",
                "message_timestamp": 1_700_000_000_000,
            }
        )
        client.zadd(keys.broker_dead(BROKER_NAMESPACE, POLL_QUEUE), {dead_id: 1_700_000_000_000})
        client.hset(keys.broker_dead_messages(BROKER_NAMESPACE, POLL_QUEUE), dead_id, body)
    odd_dead_letter(client, "dead-callback", 1_700_000_000_000)

    listed = run_cli(env, "dlq", "--queue", "poll", "list", "--json")
    assert listed.exit_code == 0, listed.output
    document = json.loads(listed.stdout)
    assert (document["queue"], document["total"]) == (POLL_QUEUE, 2)
    assert {letter["id"] for letter in document["messages"]} == {"dead-poll-1", "dead-poll-2"}

    replayed = run_cli(env, "dlq", "--queue", "poll", "replay", "dead-poll-1")
    assert replayed.exit_code == 0, replayed.output
    assert client.llen(keys.broker_queue(BROKER_NAMESPACE, POLL_QUEUE)) == 1

    purged = run_cli(env, "dlq", "--queue", "poll", "purge", "--yes", "dead-poll-2")
    assert purged.exit_code == 0, purged.output
    assert client.zcard(keys.broker_dead(BROKER_NAMESPACE, POLL_QUEUE)) == 0
    assert client.zrange(DEAD, 0, -1) == [b"dead-callback"]


def test_dead_letters_are_listed_when_redis_refuses_time(
    redis_server: RedisServer, client: redis.Redis, run_cli: RunCli
) -> None:
    """Given a Redis account that may not run TIME (an ACL), as the workers may run on
    Then `mjhook dlq list` ages the letters on this host's clock, as the workers then stamp them,
    instead of failing with "Redis unavailable"."""
    client.acl_setuser(
        "operator", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all", "-time"]
    )
    odd_dead_letter(client, "old", time.time() * 1000 - 60_000)
    env = {"MJHOOK_REDIS_URL": redis_server.url.replace("redis://", "redis://operator:pw@", 1)}

    result = run_cli(env, "dlq", "list", "--json")

    assert result.exit_code == 0, result.output
    [letter] = json.loads(result.stdout)["messages"]
    assert 59 <= letter["ageSeconds"] < 120


def test_replay_interrupted_lists_the_letters_it_replayed_and_exits_130(
    redis_server: RedisServer, client: redis.Redis, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given two dead letters, and the operator pressing Ctrl-C as the second is enqueued
    Then the first, replayed, is listed, the interruption said, exit code 130: only "Aborted!"
    was printed, and nothing told which letter was on the queue again."""
    odd_dead_letter(client, "dead-1", 1_700_000_000_001)
    odd_dead_letter(client, "dead-2", 1_700_000_000_002)
    real_enqueue = RedisClockBroker.enqueue
    sent: list[object] = []

    def enqueue(self: RedisClockBroker, message: dramatiq.Message[Any], **options: Any) -> Any:
        if sent:
            raise KeyboardInterrupt
        sent.append(message)
        return real_enqueue(self, message, **options)

    monkeypatch.setattr(RedisClockBroker, "enqueue", enqueue)
    result = run_cli({"MJHOOK_REDIS_URL": redis_server.url}, "dlq", "replay", "dead-1", "dead-2")

    assert result.exit_code == 130, result.output
    assert "replayed dead-1 as " in result.stdout
    assert "1 dead letter(s) replayed" in result.stdout
    assert "interrupted" in result.stderr
    assert client.zrange(DEAD, 0, -1) == [b"dead-2"]


def test_replay_the_broker_refuses_exits_1_and_keeps_the_letter(
    redis_server: RedisServer, client: redis.Redis, run_cli: RunCli
) -> None:
    """Given a dead letter, and an account that may read the dead letters but not run the broker's
    enqueue script (an ACL; a queue Redis refusing writes would do the same)
    When `mjhook dlq replay` runs
    Then it says it stopped and why, exit code 1, and the letter is still a dead letter: exit 0
    told a script that everything was replayed."""
    odd_dead_letter(client, "dead-1", 1_700_000_000_001)
    client.acl_setuser(
        "operator",
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-evalsha", "-eval", "-script"],
    )
    env = {"MJHOOK_REDIS_URL": redis_server.url.replace("redis://", "redis://operator:pw@", 1)}

    result = run_cli(env, "dlq", "replay")

    assert result.exit_code == 1, result.output
    assert "0 dead letter(s) replayed" in result.stdout
    assert "stopped: the broker refused the message" in result.stderr
    assert client.zrange(DEAD, 0, -1) == [b"dead-1"]
    assert client.llen(READY) == 0
