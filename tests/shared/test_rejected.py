"""The kept rejected callbacks on a real Redis: written by RejectLog, read back, replayed."""

from __future__ import annotations

import hashlib

import orjson
import pytest
import redis

from shared import keys
from shared.callback import Callback, CallbackLimits
from shared.errors import QueueUnavailable
from shared.rejected import (
    LOGGED_BODY_CHARS,
    RejectedCallback,
    Rejection,
    RejectLog,
    count_rejected,
    list_rejected,
    read_entry,
    replay_rejected,
)
from tests.support.servers import RedisServer

AT = 1_795_000_000.25  # 2026-11-18T11:06:40.250Z


def callback_body(task_id: str, urls: int = 1) -> bytes:
    return orjson.dumps(
        {
            "code": 200,
            "msg": "success",
            "data": {
                "taskId": task_id,
                "promptJson": '{"prompt":"a lake"}',
                "resultUrls": [f"https://example.com/{task_id}/{i}.png" for i in range(urls)],
            },
        }
    )


def keep(
    client: redis.Redis, body: bytes, *, status: int = 401, body_bytes: int = 16 * 1024
) -> RejectedCallback:
    """Given ``body`` refused with ``status`` and kept: its entry as read back."""
    log = RejectLog(client, keep=10, body_bytes=body_bytes, clock=lambda: AT)
    log.record(
        Rejection(
            status=status,
            reason="missing or wrong token",
            body=body,
            size=len(body),
            remote_addr="203.0.113.9",
            content_type="application/json",
            vouched=status not in (401, 403),
        )
    )
    return list_rejected(client, limit=1)[0]


class Queue:
    """Records what a replay queues; refuses from the ``fail_from``-th callback on."""

    def __init__(self, fail_from: int | None = None) -> None:
        self.queued: list[Callback] = []
        self._fail_from = fail_from

    def __call__(self, callback: Callback) -> None:
        if self._fail_from is not None and len(self.queued) + 1 >= self._fail_from:
            raise QueueUnavailable("cannot enqueue: ConnectionError")
        self.queued.append(callback)


def test_a_size_claimed_past_64_bits_is_kept_capped(client: redis.Redis) -> None:
    # Given a refused body whose Content-Length claimed more than JSON's integers hold
    RejectLog(client, keep=10, body_bytes=1024, clock=lambda: AT).record(
        Rejection(
            status=413,
            reason="body too large",
            body=b"{}",
            size=10**23,
            remote_addr="203.0.113.9",
            content_type="application/json",
            vouched=True,
        )
    )
    # Then it is kept (it was a TypeError: the ingress answered 500 and kept nothing)
    (entry,) = list_rejected(client, limit=1)
    assert entry.body_size == 2**63 - 1
    assert entry.status == 413


def test_a_kept_entry_reads_back_with_an_id_made_of_its_bytes(client: redis.Redis) -> None:
    entry = keep(client, callback_body("t-1"))
    [raw] = client.lrange(keys.REJECTED_UNAUTHENTICATED, 0, -1)  # a 401: the list anyone can fill
    assert entry.id == hashlib.sha256(raw).hexdigest()[:16]
    assert (entry.at, entry.status, entry.reason) == (
        "2026-11-18T11:06:40.250Z",
        401,
        "missing or wrong token",
    )
    assert (entry.remote_addr, entry.content_type) == ("203.0.113.9", "application/json")
    assert entry.body.encode() == callback_body("t-1")
    assert entry.body_size == len(callback_body("t-1"))
    assert not entry.truncated
    assert not entry.body_lossy
    assert entry.replay_refusal is None
    assert orjson.loads(raw)["bodyLossy"] is False


def test_a_body_that_is_not_utf8_is_kept_marked_lossy_and_cannot_be_replayed(client: redis.Redis) -> None:
    entry = keep(client, b'{"code": 200, "msg": "\xff"}', status=400)
    assert entry.body_lossy
    assert "\ufffd" in entry.body
    assert entry.replay_refusal is not None
    assert "not UTF-8" in entry.replay_refusal


def test_an_entry_written_before_the_lossy_flag_reads_as_not_lossy() -> None:
    raw = orjson.dumps({"at": "2026-11-01T00:00:00.000Z", "status": 400, "reason": "r", "body": "{}"})
    entry = read_entry(raw)
    assert (entry.at, entry.status, entry.body, entry.body_lossy, entry.truncated) == (
        "2026-11-01T00:00:00.000Z",
        400,
        "{}",
        False,
        False,
    )


@pytest.mark.parametrize(
    "raw", [b"not json", b"[1, 2]", b'{"status": 400}', b'{"at": "x", "status": "four"}']
)
def test_an_unreadable_entry_is_listed_but_never_replayed(raw: bytes) -> None:
    entry = read_entry(raw)
    assert entry.at == ""
    assert entry.reason == "unreadable entry"
    assert entry.replay_refusal == "the entry cannot be read"


def test_replay_queues_the_callback_as_it_arrived_and_drops_its_entry(client: redis.Redis) -> None:
    first = keep(client, callback_body("t-first", urls=3))
    second = keep(client, callback_body("t-second"))
    queue = Queue()

    result = replay_rejected(client, [first.id], limits=CallbackLimits(), queue=queue)

    assert result.replayed == [(first.id, "t-first")]
    assert (result.missing, result.refused, result.error) == ([], [], None)
    [callback] = queue.queued
    assert callback.task_id == "t-first"
    assert callback.received_at == first.at  # when it first came, not now
    assert len(callback.result_urls) == 3
    assert [entry.id for entry in list_rejected(client)] == [second.id]


def test_replay_checks_the_body_again_with_the_limits_given(client: redis.Redis) -> None:
    entry = keep(client, callback_body("t-many", urls=5), status=400)
    queue = Queue()

    refused = replay_rejected(client, [entry.id], limits=CallbackLimits(max_result_urls=4), queue=queue)
    assert refused.replayed == []
    [(entry_id, why)] = refused.refused
    assert entry_id == entry.id
    assert why.startswith("still invalid:")
    assert "resultUrls" in why
    assert [kept.id for kept in list_rejected(client)] == [entry.id]

    # once the limit is raised, the same entry goes through
    accepted = replay_rejected(client, [entry.id], limits=CallbackLimits(max_result_urls=8), queue=queue)
    assert accepted.replayed == [(entry.id, "t-many")]
    assert list_rejected(client) == []


def test_a_body_kept_only_in_part_is_refused_and_kept(client: redis.Redis) -> None:
    entry = keep(client, callback_body("t-cut", urls=4), body_bytes=100)
    assert entry.truncated
    queue = Queue()
    result = replay_rejected(client, [entry.id], limits=CallbackLimits(), queue=queue)
    [(entry_id, why)] = result.refused
    assert entry_id == entry.id
    assert "first 100 of its" in why
    assert queue.queued == []
    assert len(list_rejected(client)) == 1


def test_a_body_the_ingress_read_only_in_part_is_refused(client: redis.Redis) -> None:
    # Given a body over the size limit: the ingress read its start only, and kept all it read
    start = callback_body("t-big") + b" "
    RejectLog(client, keep=10, body_bytes=1 << 20).record(
        Rejection(
            status=413, reason="body too large", body=start, size=300_000, remote_addr="", content_type=""
        )
    )
    [entry] = list_rejected(client)
    assert not entry.truncated
    # When it is replayed, although what was kept parses
    result = replay_rejected(client, [entry.id], limits=CallbackLimits(), queue=Queue())
    # Then it is refused: the rest of the body was never read
    assert result.refused == [(entry.id, f"only the first {len(start)} of its 300000 bytes were kept")]
    assert len(list_rejected(client)) == 1


def test_a_body_the_ingress_stopped_reading_is_marked_cut_short_and_refused(client: redis.Redis) -> None:
    # Given a body over the limit sent without a length: what was read is all the size known
    start = callback_body("t-chunked")
    RejectLog(client, keep=10, body_bytes=1 << 20).record(
        Rejection(
            status=413,
            reason="body too large",
            body=start,
            size=len(start),
            remote_addr="",
            content_type="",
            partial=True,
        )
    )
    [entry] = list_rejected(client)
    assert entry.truncated
    result = replay_rejected(client, [entry.id], limits=CallbackLimits(), queue=Queue())
    assert [why for _, why in result.refused] == [f"only its first {len(start)} bytes were kept"]


def test_an_entry_written_before_the_lossy_flag_with_replacement_characters_is_lossy() -> None:
    raw = orjson.dumps({"at": "2026-11-01T00:00:00.000Z", "status": 401, "reason": "r", "body": "{\ufffd}"})
    assert read_entry(raw).body_lossy


class LremFails(redis.Redis):
    """A client whose LREM fails, as when Redis goes away right after a replay queued."""

    def lrem(self, *args: object, **kwargs: object) -> int:
        raise redis.ConnectionError("gone")


def test_an_entry_queued_but_not_dropped_is_reported_as_such(redis_server: RedisServer) -> None:
    client = LremFails.from_url(redis_server.url)
    first = keep(client, callback_body("t-a"))
    second = keep(client, callback_body("t-b"))
    queue = Queue()
    result = replay_rejected(client, [first.id, second.id], limits=CallbackLimits(), queue=queue)
    assert result.replayed == [(first.id, "t-a")]
    assert result.error == f"{first.id} was queued but is still listed (ConnectionError)"
    assert [callback.task_id for callback in queue.queued] == ["t-a"]


def test_unknown_ids_are_reported_and_each_id_is_replayed_once(client: redis.Redis) -> None:
    entry = keep(client, callback_body("t-once"))
    queue = Queue()
    result = replay_rejected(
        client, ["0123456789abcdef", entry.id, entry.id], limits=CallbackLimits(), queue=queue
    )
    assert result.missing == ["0123456789abcdef"]
    assert result.replayed == [(entry.id, "t-once")]
    assert [callback.task_id for callback in queue.queued] == ["t-once"]


def test_a_queue_that_refuses_stops_the_replay_and_keeps_the_entries(client: redis.Redis) -> None:
    first = keep(client, callback_body("t-a"))
    second = keep(client, callback_body("t-b"))
    third = keep(client, callback_body("t-c"))
    queue = Queue(fail_from=2)

    result = replay_rejected(client, [first.id, second.id, third.id], limits=CallbackLimits(), queue=queue)

    assert result.replayed == [(first.id, "t-a")]
    assert result.error == "cannot enqueue: ConnectionError"
    # the refused one and the one after it stay kept, for another try
    assert sorted(entry.id for entry in list_rejected(client)) == sorted([second.id, third.id])


def test_a_rejected_callback_redis_cannot_take_is_kept_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """Given Redis unreachable (nothing listens on port 1)
    When a callback is refused
    Then its entry, body included (as JSON: controls escaped), goes to the log instead; it was
    lost, with only the error's type logged, although bad input must be kept for inspection."""
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    body = callback_body("t-while-down").replace(b"a lake", b"a lake\x1b[2J")  # a raw ESC
    with caplog.at_level("WARNING", logger="shared.rejected"):
        RejectLog(dead, keep=10, body_bytes=16 * 1024, clock=lambda: AT).record(
            Rejection(
                status=401,
                reason="missing or wrong token",
                body=body,
                size=len(body),
                remote_addr="203.0.113.9",
                content_type="application/json",
            )
        )
    [message] = [record.getMessage() for record in caplog.records]
    assert message.startswith("could not keep a rejected callback for inspection in Redis (ConnectionError)")
    entry = orjson.loads(message.split("; the entry: ", 1)[1])
    assert (entry["status"], entry["body"]) == (401, body.decode())
    assert "\x1b" not in message


def test_a_refused_body_logged_for_want_of_redis_has_no_callback_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Given a genuine callback refused while Redis is away (a retry whose timestamp fell out of
    the signature's window, say), its promptJson echoing mjhook submit's callBackUrl with
    MJHOOK_CALLBACK_TOKEN
    Then the logged entry has the body without that URL's value, as the manifest has it."""
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    prompt = {"prompt": "a lake", "callBackUrl": "https://hooks.example/callbacks/midjourney?token=s3cret"}
    document = orjson.loads(callback_body("t-token"))
    document["data"]["promptJson"] = orjson.dumps(prompt).decode()
    body = orjson.dumps(document)
    with caplog.at_level("WARNING", logger="shared.rejected"):
        RejectLog(dead, keep=10, body_bytes=16 * 1024, clock=lambda: AT).record(
            Rejection(
                status=401,
                reason="stale timestamp",
                body=body,
                size=len(body),
                remote_addr="",
                content_type="",
            )
        )
    [message] = [record.getMessage() for record in caplog.records]
    entry = orjson.loads(message.split("; the entry: ", 1)[1])
    assert "a lake" in entry["body"]
    assert "s3cret" not in message


def test_a_refused_body_logged_for_want_of_redis_is_cut_shorter(caplog: pytest.LogCaptureFixture) -> None:
    """Refusals cost the sender nothing: while Redis is away, a logged body is cut at
    LOGGED_BODY_CHARS (marked truncated), not kept whole up to the list's 16 KiB."""
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    body = b"x" * 10_000
    with caplog.at_level("WARNING", logger="shared.rejected"):
        RejectLog(dead, keep=10, body_bytes=16 * 1024, clock=lambda: AT).record(
            Rejection(
                status=400, reason="not JSON", body=body, size=len(body), remote_addr="", content_type=""
            )
        )
    [message] = [record.getMessage() for record in caplog.records]
    entry = orjson.loads(message.split("; the entry: ", 1)[1])
    assert (len(entry["body"]), entry["truncated"], entry["bodySize"]) == (LOGGED_BODY_CHARS, True, 10_000)


def test_refusals_anyone_can_cause_cannot_push_out_the_others(client: redis.Redis) -> None:
    """Given a callback that passed the token check but was refused by a limit set too low (the
    only copy once the provider stops retrying), when anyone without the token sends as many junk
    requests as the log keeps, then the genuine refusal is still kept: refusals of senders not
    vouched for fill a list of their own, capped alike. Both are listed as one, newest first, and
    replayed."""
    now = [AT]
    log = RejectLog(client, keep=3, body_bytes=16 * 1024, clock=lambda: now[0])

    def refuse(body: bytes, status: int, reason: str, *, vouched: bool) -> None:
        now[0] += 1
        log.record(
            Rejection(status, reason, body, len(body), "203.0.113.9", "application/json", vouched=vouched)
        )

    refuse(callback_body("genuine", urls=5), 400, "too many resultUrls", vouched=True)
    for i in range(5):
        refuse(callback_body(f"junk-{i}"), 401, "missing or wrong token", vouched=False)

    listed = list_rejected(client)
    assert [entry.status for entry in listed] == [401, 401, 401, 400]  # newest first, each list capped
    assert orjson.loads(listed[-1].body)["data"]["taskId"] == "genuine"
    assert count_rejected(client) == 4
    assert [entry.id for entry in list_rejected(client, limit=2)] == [entry.id for entry in listed[:2]]

    queue = Queue()
    result = replay_rejected(client, [listed[0].id, listed[-1].id], limits=CallbackLimits(), queue=queue)
    assert [task_id for _, task_id in result.replayed] == ["junk-4", "genuine"]
    assert [entry.id for entry in list_rejected(client)] == [entry.id for entry in listed[1:3]]
