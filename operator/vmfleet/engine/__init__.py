"""The reconcile engine shared by the operator and standalone mode: observe, plan, act, report."""

from .fleet import FleetResult, TeardownResult, reconcile_fleet, teardown_fleet
from .probe import host_status, store_status
from .runtime import Runtime
from .status import Event
from .template import reconcile_template, release_parent, release_retired, retire

__all__ = [
    "Event",
    "FleetResult",
    "Runtime",
    "TeardownResult",
    "host_status",
    "reconcile_fleet",
    "reconcile_template",
    "release_parent",
    "release_retired",
    "retire",
    "store_status",
    "teardown_fleet",
]
