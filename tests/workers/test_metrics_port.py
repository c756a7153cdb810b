"""One dramatiq instance per metrics port: the worker processes of one instance share it, a
process of another instance is refused with the pid of the instance that serves it."""

from __future__ import annotations

import os

import pytest

from shared.errors import ConfigError
from tests.support.procs import free_port
from workers.metrics_port import claim_port

#: Stands for the dramatiq main process of another instance: this process's own pid, which cannot be
#: its parent (pid 1 could: a test run whose parent exited is adopted by init).
OTHER_INSTANCE = os.getpid()


def test_the_processes_of_one_instance_share_a_port_and_another_instance_is_refused() -> None:
    # Given a port claimed by a process of one instance (this one: its parent stands for the
    # instance's dramatiq main process)
    port = free_port()
    instance = os.getppid()
    first = claim_port(port, instance=instance)
    try:
        # When another process of the same instance claims it, then it may serve it too
        claim_port(port, instance=instance).release()
        # And a process of another instance is refused, told which instance serves the port
        with pytest.raises(
            ConfigError,
            match=rf"port {port} is served by another dramatiq instance \(main process {instance}\)",
        ):
            claim_port(port, instance=OTHER_INSTANCE)
    finally:
        first.release()
    # And once the instance's processes let go, the other instance may have it
    claim_port(port, instance=OTHER_INSTANCE).release()


def test_releasing_twice_is_harmless() -> None:
    claim = claim_port(free_port(), instance=os.getppid())
    claim.release()
    claim.release()
