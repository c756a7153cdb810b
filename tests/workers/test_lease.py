"""A task's lease: one holder at a time, renewed while held, lapsing after a crash."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

from shared import keys
from shared.errors import TaskBusy
from tests.support.pipeline import wait_for
from tests.support.servers import RedisServer
from workers.lease import LeaseManager


def test_two_workers_never_hold_the_same_task(client: redis.Redis) -> None:
    first, second = LeaseManager(client, ttl_s=30), LeaseManager(client, ttl_s=30)
    with first.hold("t1"):
        with pytest.raises(TaskBusy), second.hold("t1"):
            pass
        with second.hold("t2"):
            pass
    with second.hold("t1"):
        assert client.exists(keys.lease("t1"))
    assert not client.exists(keys.lease("t1"))


def redis_now_ms(client: redis.Redis) -> int:
    """Redis's own clock, which decides when a key expires."""
    seconds, microseconds = client.time()
    return seconds * 1000 + microseconds // 1000


def test_a_held_lease_is_renewed_past_its_ttl(client: redis.Redis) -> None:
    # Given a held lease of 1 s
    with LeaseManager(client, ttl_s=1).hold("t1") as lease:
        expired_by_ms = redis_now_ms(client) + 1000
        # When more than that has passed by Redis's clock
        wait_for(lambda: redis_now_ms(client) > expired_by_ms, timeout_s=10.0, what="a TTL gone by")
        # Then the lease is still ours, and another worker cannot take the task
        assert client.get(keys.lease("t1")) == lease.token.encode()
        with pytest.raises(TaskBusy), LeaseManager(client, ttl_s=1).hold("t1"):
            pass


def test_a_crashed_holders_lease_lapses(client: redis.Redis) -> None:
    # Given a lease taken by a worker that died without releasing or renewing it
    client.set(keys.lease("t1"), "dead-worker", px=300)
    leases = LeaseManager(client, ttl_s=30)
    with pytest.raises(TaskBusy), leases.hold("t1"):
        pass
    # When its TTL passes, Then another worker can take the task
    time.sleep(0.4)
    with leases.hold("t1"):
        assert client.get(keys.lease("t1")) != b"dead-worker"


def test_a_worker_never_releases_a_lease_it_lost(client: redis.Redis) -> None:
    leases = LeaseManager(client, ttl_s=30)
    with leases.hold("t1"):
        # Someone else's lease replaced ours (ours expired during a long pause)
        client.set(keys.lease("t1"), "other")
    assert client.get(keys.lease("t1")) == b"other"


def wait_until_set(event: threading.Event, *, timeout_s: float = 5.0) -> None:
    assert event.wait(timeout_s), "not set in time"


def test_a_holder_learns_that_its_lease_was_removed(client: redis.Redis) -> None:
    # Given a held lease renewed every third of a second
    with LeaseManager(client, ttl_s=1).hold("t1") as lease:
        assert not lease.lost.is_set()
        lease.confirm()
        # When it disappears from Redis (it lapsed, or Redis lost it)
        client.delete(keys.lease("t1"))
        # Then the renewer marks it lost without taking it back, and confirming it says retry later
        wait_until_set(lease.lost)
        assert not client.exists(keys.lease("t1"))
        with pytest.raises(TaskBusy):
            lease.confirm()


def test_confirming_asks_redis_at_once_whether_the_lease_was_taken(client: redis.Redis) -> None:
    # Given a lease whose renewer would not look again for 10 s
    with LeaseManager(client, ttl_s=30).hold("t1") as lease:
        # When another worker holds the task now
        client.set(keys.lease("t1"), "other")
        # Then confirming it fails straight away, and the other worker's lease stands
        with pytest.raises(TaskBusy):
            lease.confirm()
        assert lease.lost.is_set()
    assert client.get(keys.lease("t1")) == b"other"


def test_confirming_a_held_lease_renews_it(client: redis.Redis) -> None:
    with LeaseManager(client, ttl_s=30).hold("t1") as lease:
        client.pexpire(keys.lease("t1"), 1000)
        lease.confirm()
        assert client.pttl(keys.lease("t1")) > 25_000
        assert not lease.lost.is_set()


def test_a_holder_cut_off_from_redis_for_a_whole_ttl_knows_its_lease_lapsed(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    # Given a held lease of 1 s
    with LeaseManager(client, ttl_s=1).hold("t1") as lease:
        # When Redis goes away for longer than that
        redis_server.stop()
        # Then the holder counts the lease lost while Redis is still away, and once it is back
        # confirming the lease says retry later
        wait_until_set(lease.lost)
        assert not redis_server.is_running()
        redis_server.start()
        with pytest.raises(TaskBusy):
            lease.confirm()


def test_a_lease_let_go_counts_as_lost_for_work_left_running(client: redis.Redis) -> None:
    # Given a lease whose holder's block ended (it raised, say) while a download of its own runs on
    with LeaseManager(client, ttl_s=30).hold("t1") as lease:
        lease.check()
    # When that download is about to store its file, Then it is told to leave it: another worker
    # may hold the task by now
    assert lease.lost.is_set()
    with pytest.raises(TaskBusy):
        lease.check()


def test_checking_a_lease_asks_nothing_of_redis(client: redis.Redis) -> None:
    # Given a held lease another worker took, which no renewal has noticed yet
    with LeaseManager(client, ttl_s=30).hold("t1") as lease:
        client.set(keys.lease("t1"), "other")
        # Then checking it passes (only confirming asks Redis), until the loss is known
        lease.check()
        with pytest.raises(TaskBusy):
            lease.confirm()
        with pytest.raises(TaskBusy):
            lease.check()


def test_a_lease_no_renewal_reached_for_a_whole_ttl_fails_the_check_before_the_renewer_says_so(
    client: redis.Redis,
) -> None:
    """Given a held lease whose renewals have not got through for a whole TTL (its renewer blocked
    on an unreachable Redis, which takes seconds to report it): by the holder's own clock the lease
    has lapsed, and another worker may hold the task
    When the holder checks it before writing a file
    Then the check refuses (TaskBusy) without asking Redis; it passed until the renewer noticed."""
    now = [0.0]
    leases = LeaseManager(client, ttl_s=30, clock=lambda: now[0])
    with leases.hold("t1") as lease:
        lease.check()
        now[0] = 30.0
        with pytest.raises(TaskBusy):
            lease.check()
        assert lease.lost.is_set()


class LateRedis(redis.Redis):
    """A Redis whose script answers (a renewal's) come ``late_s`` seconds by ``now`` after they
    were sent: a server stalled in between, which may have run the script at any moment."""

    def __init__(self, client: redis.Redis, now: list[float], late_s: float) -> None:
        super().__init__(connection_pool=client.connection_pool)
        self._now = now
        self._late_s = late_s

    def evalsha(self, *args: Any, **kwargs: Any) -> Any:
        answer = super().evalsha(*args, **kwargs)
        self._now[0] += self._late_s
        return answer


def test_a_renewal_that_took_long_holds_the_lease_a_ttl_from_when_it_was_sent(client: redis.Redis) -> None:
    """Given a held lease of 30 s whose confirmation (a renewal) is sent at 10 s and answered at
    30 s (a Redis stalled for 20 s)
    When the holder checks the lease at 40 s, a TTL after the renewal was sent
    Then the check refuses: Redis may have let the lease lapse already, and another worker may
    hold the task. Counting the TTL from the answer (30 s) let the holder write files for 20 s
    more while another worker could hold the task."""
    now = [0.0]
    leases = LeaseManager(LateRedis(client, now, late_s=20.0), ttl_s=30, clock=lambda: now[0])
    with leases.hold("t1") as lease:
        now[0] = 10.0
        lease.confirm()
        assert now[0] == 30.0
        now[0] = 40.0
        with pytest.raises(TaskBusy):
            lease.check()
        assert lease.lost.is_set()


def test_a_lease_not_renewed_for_exactly_a_ttl_is_not_renewed_then(client: redis.Redis) -> None:
    """Given a held lease of 30 s, no renewal since it was taken at 0 s
    When a renewal (a confirmation before the manifest) comes at exactly 30 s
    Then it is refused as lapsed, as check() refuses at that moment, without asking Redis (whose
    key may still be there by its own clock)."""
    now = [0.0]
    leases = LeaseManager(client, ttl_s=30, clock=lambda: now[0])
    with leases.hold("t1") as lease:
        now[0] = 30.0
        assert lease.renew() is False
        assert lease.lost.is_set()
        with pytest.raises(TaskBusy):
            lease.confirm()
