"""A local stand-in for the Midjourney API provider (kie.ai): its API, its callbacks with
their retry schedule and signature, its expiring result files, and injectable faults.

Start one in-process with :func:`run_simulator`; ``mjhook simulate`` runs it from the CLI.
"""

from simulator.config import FaultConfig, SimulatorConfig
from simulator.files import expected_file
from simulator.server import RunningSimulator, run_simulator

__all__ = ["FaultConfig", "RunningSimulator", "SimulatorConfig", "expected_file", "run_simulator"]
