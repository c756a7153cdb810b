"""tests/support/procs.free_ports: the ports the tests' servers get. They come from below the
kernel's ephemeral range, where no client connection takes one, and in turn, so that a server
stopped and started again on its ports (a Redis restart, an S3 outage) finds them free."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.support import procs


def test_ports_come_from_below_the_ephemeral_range_distinct_and_free() -> None:
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = procs.free_ports(9)
    assert len(set(ports)) == 9
    assert all(procs.PORT_LOW <= port < ephemeral_low for port in ports)
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_handed_out_comes_back_only_after_the_slice_went_round() -> None:
    bounds = procs._port_slice()
    assert bounds is not None
    low, high = bounds
    first = procs.free_ports(5)
    later = [port for _ in range(200) for port in procs.free_ports(5)]
    assert not set(first) & set(later)
    assert all(low <= port < high for port in first + later)


def test_a_port_in_use_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    port = procs.free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        monkeypatch.setattr(procs, "_next_port", port)
        assert procs.free_port() != port


def test_the_xdist_workers_get_slices_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    first = procs._port_slice()
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    second = procs._port_slice()
    assert first is not None
    assert second is not None
    assert first[0] == procs.PORT_LOW
    assert first[1] == second[0] < second[1]


@pytest.mark.parametrize(
    ("ephemeral", "expected"),
    [
        ("32768\t60999\n", (procs.PORT_LOW, 32000)),
        ("20000 60999", (procs.PORT_LOW, 20000)),
        # Little below it: the ports above it
        ("1024 50000", (50001, 65536)),
        # Too few either side: bind(0), as before
        ("1024 65000", None),
    ],
)
def test_the_slice_keeps_out_of_the_ephemeral_range(
    ephemeral: str, expected: tuple[int, int] | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "range").write_text(ephemeral)
    monkeypatch.setattr(procs, "EPHEMERAL_RANGE", tmp_path / "range")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "1")
    assert procs._port_slice() == expected
    ports = procs.free_ports(3)
    assert len(set(ports)) == 3
    if expected is not None:
        assert all(expected[0] <= port < expected[1] for port in ports)
