"""A simulator of SONAS's and GPFS's clone commands behind a real SSH server (python -m vmfleet.sim)."""

from .fs import SimFs
from .server import Faults, Simulator, start

__all__ = ["Faults", "SimFs", "Simulator", "start"]
