"""The planner: pure functions from the spec and what was observed to an ordered plan."""

from .model import Action, HostView, Observation, Op, Plan, Problem, Severity, VmSeen, VmWant
from .plan import plan_fleet

__all__ = ["Action", "HostView", "Observation", "Op", "Plan", "Problem", "Severity", "VmSeen", "VmWant", "plan_fleet"]
