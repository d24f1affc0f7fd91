"""The simulator: the scheduling core (``twin.core``) executed on a SimPy clock.

``simulator`` holds the one-GPU executor, ``fast_forward`` the steady decode runs it advances
in one event, ``disagg`` the two-GPU executor.
"""

from twin.sim.simulator import EngineConfig, SimResult, Simulator, make_simulator

__all__ = ["EngineConfig", "SimResult", "Simulator", "make_simulator"]
