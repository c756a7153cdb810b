"""Review reproductions of simulator defects: reuse the simulator suite's fixtures."""

from tests.simulator.conftest import make_sim, receiver, sim, trickling_receiver  # noqa: F401
