"""Prometheus metrics of the operator, served on --metrics-port."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from ..engine import Event

_FLEET = ("namespace", "fleet")
DESIRED = Gauge("vmfleet_fleet_desired_replicas", "VMs a fleet's spec asks for.", _FLEET)
READY = Gauge("vmfleet_fleet_ready_replicas", "VMs in the state their spec asks for.", _FLEET)
LOGICAL = Gauge("vmfleet_fleet_logical_bytes", "Sum of the clones' logical sizes.", _FLEET)
ALLOCATED = Gauge("vmfleet_fleet_allocated_bytes", "Sum of the bytes the clones own.", _FLEET)
SAVED = Gauge("vmfleet_fleet_saved_bytes", "Bytes saved against full copies.", _FLEET)
RECONCILE = Histogram("vmfleet_reconcile_seconds", "Duration of one reconcile pass.", ("kind",),
                      buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
EVENTS = Counter("vmfleet_events_total", "Events posted, by type and reason.", ("type", "reason"))

_FLEET_GAUGES = ((LOGICAL, "logicalBytes"), (ALLOCATED, "allocatedBytes"), (SAVED, "savedBytes"),
                 (READY, "readyReplicas"))


def serve(port: int) -> None:
    start_http_server(port)


def record_fleet(namespace: str, name: str, spec: Mapping[str, Any], status: Mapping[str, Any]) -> None:
    DESIRED.labels(namespace, name).set(spec.get("replicas", 0))
    for gauge, key in _FLEET_GAUGES:
        gauge.labels(namespace, name).set(status.get(key, 0))


def forget_fleet(namespace: str, name: str) -> None:
    for gauge in (DESIRED, *(g for g, _ in _FLEET_GAUGES)):
        try:
            gauge.remove(namespace, name)
        except KeyError:
            pass


def count(events: Iterable[Event]) -> None:
    for e in events:
        EVENTS.labels(e.type, e.reason).inc()
