"""The simulator's settings: values it cannot work with are refused when it is configured."""

from __future__ import annotations

from typing import Any

import pytest

from simulator import FaultConfig, SimulatorConfig
from simulator.faults import FaultPlan, FileFault


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


def test_file_fault_shares_adding_up_to_exactly_1_are_accepted_despite_float_rounding() -> None:
    # Given shares whose float sum is 1.0000000000000002
    shares: dict[str, Any] = {"file_error_share": 0.34, "file_slow_share": 0.55, "file_expired_share": 0.11}
    assert sum(shares.values()) > 1.0
    # Then they are accepted, and every file has one of the faults
    faults = FaultConfig(**shares)
    plan = FaultPlan(faults)
    assert all(plan.for_file(number, 0) is not FileFault.NONE for number in range(200))
    # And shares adding up to more than 1 are refused still
    with pytest.raises(ValueError, match="add up to more than 1"):
        FaultConfig(**{**shares, "file_expired_share": 0.12})


@pytest.mark.parametrize("size", [{"image_width": 4097}, {"image_height": 4097}, {"image_width": 0}])
def test_an_image_side_beyond_4096_pixels_is_refused(size: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="image sizes must be from 1 to 4096"):
        SimulatorConfig(**size)
    assert SimulatorConfig(image_width=4096, image_height=4096).image_width == 4096
