"""The reconcile engine shared by the operator and standalone mode: observe, plan, act, report."""

from .fleet import FleetResult, TeardownResult, clone_count, reconcile_fleet, teardown_fleet
from .runtime import Runtime
from .status import Event
from .template import reconcile_template, release_parent

__all__ = [
    "Event",
    "FleetResult",
    "Runtime",
    "TeardownResult",
    "clone_count",
    "reconcile_fleet",
    "reconcile_template",
    "release_parent",
    "teardown_fleet",
]
