"""An attempt at a message that never ends (its worker dies during it) is given up after a few
starts, not redelivered for good."""

from __future__ import annotations

import pytest
import redis
from dramatiq.middleware.time_limit import TimeLimitExceeded

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


def test_an_attempt_that_ends_leaves_no_count(client: redis.Redis) -> None:
    """Only a dead worker's attempt needs its count; one per ended attempt stayed for the task's
    30 days (about 60 % more memory than the task records)."""
    starts = AttemptStarts(client, max_starts=3, ttl_s=600)
    # Given one attempt that returns and one that raises
    with starts.counted("m1", enqueued_ms=1000, retries=0) as started:
        assert started == 1
        assert client.exists(keys.attempt_starts("m1", 1000, 0))
    with pytest.raises(RuntimeError), starts.counted("m2", enqueued_ms=1000, retries=0):
        raise RuntimeError("a download failed")
    # Then neither leaves its count behind
    assert not client.exists(keys.attempt_starts("m1", 1000, 0), keys.attempt_starts("m2", 1000, 0))


def test_an_attempt_whose_worker_died_keeps_its_count(client: redis.Redis) -> None:
    starts = AttemptStarts(client, max_starts=3, ttl_s=600)
    # Given an attempt whose worker died in it: its block was entered and never left (kept
    # referenced: a collected generator would run its finally, which a dead process never does)
    dead = starts.counted("m1", enqueued_ms=1000, retries=0)
    dead.__enter__()
    assert client.get(keys.attempt_starts("m1", 1000, 0)) == b"1"
    # When it is delivered again, the count goes on from there
    with starts.counted("m1", enqueued_ms=1000, retries=0) as started:
        assert started == 2
    del dead


def test_a_count_not_removed_does_not_hide_the_attempts_outcome(client: redis.Redis) -> None:
    """Redis failing as the count is removed must not replace a permanent failure (dead-lettered)
    with a Redis error (retried) or turn a success into an error: the count just expires."""

    class DeleteFails(redis.Redis):
        def delete(self, *names: object) -> int:
            raise redis.ConnectionError("Connection reset by peer")

    failing = DeleteFails(connection_pool=client.connection_pool)
    starts = AttemptStarts(failing, max_starts=3, ttl_s=600)
    attempt = starts.counted("m1", enqueued_ms=1000, retries=0)
    with pytest.raises(PermanentError, match="not an image"), attempt:
        raise PermanentError("not an image")
    with starts.counted("m2", enqueued_ms=1000, retries=0) as started:
        assert started == 1
    assert 0 < client.ttl(keys.attempt_starts("m2", 1000, 0)) <= 600


def test_the_time_limit_running_out_as_the_count_is_removed_keeps_the_attempts_outcome(
    client: redis.Redis,
) -> None:
    """dramatiq raises an attempt's time limit in its thread wherever it is: within the removal
    of the count (a Redis hanging just then), it must not turn a success into a retry."""

    class LimitInDelete(redis.Redis):
        def delete(self, *names: object) -> int:
            raise TimeLimitExceeded()

    starts = AttemptStarts(LimitInDelete(connection_pool=client.connection_pool), max_starts=3, ttl_s=600)
    done = []
    with starts.counted("m1", enqueued_ms=1000, retries=0):
        done.append("stored")
    assert done == ["stored"]
    attempt = starts.counted("m2", enqueued_ms=1000, retries=0)
    with pytest.raises(PermanentError, match="not an image"), attempt:
        raise PermanentError("not an image")
