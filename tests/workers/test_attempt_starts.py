"""An attempt at a message that never ends (its worker dies during it) is given up after a few
starts, not redelivered for good."""

from __future__ import annotations

import pytest
import redis

from shared import keys
from shared.errors import AttemptNeverEnds, PermanentError
from workers.attempt_starts import AttemptStarts


def test_an_attempt_started_past_the_limit_is_refused_with_the_reason(client: redis.Redis) -> None:
    starts = AttemptStarts(client, max_starts=3, ttl_s=600)
    # Given an attempt started three times (two redeliveries after its worker died)
    assert [starts.start("m1", enqueued_ms=1000, retries=2) for _ in range(3)] == [1, 2, 3]
    # When it is started a fourth time
    with pytest.raises(AttemptNeverEnds) as refused:
        starts.start("m1", enqueued_ms=1000, retries=2)
    # Then it is refused for good, saying why
    assert isinstance(refused.value, PermanentError)
    assert "attempt 3 at this message was started 4 times and never ended" in str(refused.value)
    assert "MJHOOK_MAX_ATTEMPT_STARTS=3" in str(refused.value)


def test_each_attempt_and_each_replay_counts_on_its_own(client: redis.Redis) -> None:
    starts = AttemptStarts(client, max_starts=1, ttl_s=600)
    assert starts.start("m1", enqueued_ms=1000, retries=0) == 1
    # A retry (the next attempt) and a replayed dead letter (enqueued anew) start afresh
    assert starts.start("m1", enqueued_ms=1000, retries=1) == 1
    assert starts.start("m1", enqueued_ms=2000, retries=0) == 1
    # And another message is not counted with this one
    assert starts.start("m2", enqueued_ms=1000, retries=0) == 1
    with pytest.raises(AttemptNeverEnds):
        starts.start("m1", enqueued_ms=1000, retries=0)


def test_the_count_expires(client: redis.Redis) -> None:
    AttemptStarts(client, max_starts=3, ttl_s=600).start("m1", enqueued_ms=1000, retries=0)
    assert 0 < client.ttl(keys.attempt_starts("m1", 1000, 0)) <= 600
