"""The planner: pure functions from the spec and what was observed to an ordered plan."""

from .model import (Action, HostView, Observation, Op, Plan, Problem, Severity, VmSeen, VmWant, listing,
                    summarise)
from .plan import plan_fleet

__all__ = ["Action", "HostView", "Observation", "Op", "Plan", "Problem", "Severity", "VmSeen", "VmWant", "listing",
           "plan_fleet", "summarise"]
