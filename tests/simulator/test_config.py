"""The simulator's settings: values it cannot work with are refused when it is configured."""

from __future__ import annotations

import pytest

from simulator import SimulatorConfig


@pytest.mark.parametrize("host", ["0.0.0.0", "::", ""])
def test_a_wildcard_host_needs_a_public_url_for_its_result_urls(host: str) -> None:
    # Given a simulator to listen on every address: no URL a client could download from
    with pytest.raises(ValueError, match="public_url"):
        SimulatorConfig(host=host)
    # Then with the base URL clients reach it at, it is fine
    assert SimulatorConfig(host=host, public_url="http://sim.internal:8090").host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "sim.internal"])
def test_a_host_of_its_own_needs_no_public_url(host: str) -> None:
    assert SimulatorConfig(host=host).public_url == ""
