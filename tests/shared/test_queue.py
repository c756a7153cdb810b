"""The queue message the ingress writes itself (shared.queue.redis_queued_message) is the one
dramatiq would have written: the workers' broker decodes it into the same message."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from shared import keys
from shared.callback import Callback
from shared.queue import BROKER_NAMESPACE, CALLBACK_QUEUE, callback_message, redis_queued_message

CALLBACK = Callback(
    task_id="t-1",
    code=200,
    msg="success",
    prompt_json='{"prompt":"ünïcode \\"quoted\\""}',
    result_urls=("https://example.com/a.png", "https://example.com/b.png"),
    received_at="2026-11-25T10:00:00.000Z",
)


def test_the_hand_built_message_decodes_as_dramatiqs_own() -> None:
    broker = RedisBroker(url="redis://127.0.0.1:1/0", namespace=BROKER_NAMESPACE, middleware=[])  # type: ignore[no-untyped-call]
    queued = redis_queued_message(broker, CALLBACK)
    assert queued.queue_key == keys.broker_queue(BROKER_NAMESPACE, CALLBACK_QUEUE)
    assert queued.messages_key == keys.broker_messages(BROKER_NAMESPACE, CALLBACK_QUEUE)

    decoded = dramatiq.Message.decode(queued.body)
    expected = callback_message(CALLBACK)
    assert (decoded.queue_name, decoded.actor_name) == (expected.queue_name, expected.actor_name)
    assert decoded.args == expected.args
    assert decoded.kwargs == {}
    assert decoded.options == {"redis_message_id": queued.message_id}
    assert decoded.message_id == queued.message_id
    assert abs(decoded.message_timestamp - expected.message_timestamp) < 60_000
    # Each message gets its own id.
    assert redis_queued_message(broker, CALLBACK).message_id != queued.message_id
