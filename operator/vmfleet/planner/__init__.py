"""The planner: pure functions from the spec and what was observed to an ordered plan."""

from .model import (
    Action,
    CloneAction,
    DomainAction,
    HostView,
    Observation,
    Op,
    ParentAction,
    Plan,
    Problem,
    Severity,
    Update,
    VmAction,
    VmSeen,
    VmWant,
    listing,
    summarise,
)
from .plan import plan_fleet

__all__ = [
    "Action",
    "CloneAction",
    "DomainAction",
    "HostView",
    "Observation",
    "Op",
    "ParentAction",
    "Plan",
    "Problem",
    "Severity",
    "Update",
    "VmAction",
    "VmSeen",
    "VmWant",
    "listing",
    "plan_fleet",
    "summarise",
]
