"""Prometheus metrics: every instrument in one place; the operator serves them on --metrics-port."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from .api.status import clone_count

_FLEET = ("namespace", "fleet")
DESIRED = Gauge("vmfleet_fleet_desired_replicas", "VMs a fleet's spec asks for.", _FLEET)
CLONES = Gauge("vmfleet_fleet_clones", "Clones a fleet has in its store.", _FLEET)
READY = Gauge("vmfleet_fleet_ready_replicas", "VMs in the state their spec asks for.", _FLEET)
LOGICAL = Gauge("vmfleet_fleet_logical_bytes", "Sum of the clones' logical sizes.", _FLEET)
ALLOCATED = Gauge("vmfleet_fleet_allocated_bytes", "Sum of the bytes the clones own.", _FLEET)
SAVED = Gauge("vmfleet_fleet_saved_bytes", "Bytes saved against full copies.", _FLEET)
RECONCILE = Histogram(
    "vmfleet_reconcile_seconds",
    "Duration of one reconcile pass.",
    ("kind",),
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
SSH_SECONDS = Histogram(
    "vmfleet_ssh_command_seconds",
    "Duration of one storage command over SSH.",
    ("target", "command"),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SSH_ERRORS = Counter(
    "vmfleet_ssh_errors_total",
    "Storage commands over SSH that failed to run: no connection, "
    "a dropped one, a timeout (not a command's own non-zero exit).",
    ("target", "error"),
)
LIBVIRT_ERRORS = Counter(
    "vmfleet_libvirt_errors_total", "libvirt calls that failed, by KvmHost and operation.", ("host", "operation")
)
LEADER = Gauge("vmfleet_leader", "1 on the replica that holds the leader Lease (or runs without one), else 0.")
EVENTS = Counter("vmfleet_events_total", "Events posted, by type and reason.", ("type", "reason"))

_FLEET_GAUGES = (
    (LOGICAL, "logicalBytes"),
    (ALLOCATED, "allocatedBytes"),
    (SAVED, "savedBytes"),
    (READY, "readyReplicas"),
)


def serve(port: int) -> None:
    start_http_server(port)


def record_fleet(namespace: str, name: str, spec: Mapping[str, Any], status: Mapping[str, Any]) -> None:
    DESIRED.labels(namespace, name).set(spec.get("replicas", 0))
    if "clones" in status:  # a pass that could not observe leaves the last counts as they were
        CLONES.labels(namespace, name).set(clone_count(status))
    for gauge, key in _FLEET_GAUGES:
        if key in status:
            gauge.labels(namespace, name).set(status[key])


def forget_fleet(namespace: str, name: str) -> None:
    for gauge in (DESIRED, CLONES, *(g for g, _ in _FLEET_GAUGES)):
        try:
            gauge.remove(namespace, name)
        except KeyError:
            pass


def count(events: Iterable[Any]) -> None:
    """Count posted Events (anything with .type and .reason)."""
    for e in events:
        EVENTS.labels(e.type, e.reason).inc()
