"""A task's lease: one holder at a time, renewed while held, lapsing after a crash."""

from __future__ import annotations

import time

import pytest
import redis

from shared import keys
from shared.errors import TaskBusy
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


def test_a_held_lease_is_renewed_past_its_ttl(client: redis.Redis) -> None:
    leases = LeaseManager(client, ttl_s=1)
    with leases.hold("t1"):
        time.sleep(1.6)
        assert client.exists(keys.lease("t1"))
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
