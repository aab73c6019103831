"""Is a CloneStore reachable, is a KvmHost: the status `kubectl get clonestores,kvmhosts` shows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api import CloneStore, KvmHost, reasons
from ..clock import now
from ..errors import HostError, RootMissing, VmfleetError
from ..hypervisor import DomainInfo
from ..planner import listing
from .runtime import Runtime
from .status import condition, summary_conditions


async def host_status(runtime: Runtime, host: KvmHost, previous: Mapping[str, Any] | None) -> dict[str, Any]:
    gen = host.meta.generation
    try:
        domains = await runtime.host(host).list_domains()
    except HostError as e:  # the driver's one error for the host, its Secret and its connection
        return {
            "observedGeneration": gen,
            "conditions": summary_conditions("Degraded", reasons.UNREACHABLE, str(e), gen, previous, now()),
        }
    return {
        "observedGeneration": gen,
        "domains": len(domains),
        "conditions": [
            *summary_conditions(
                "Ready", reasons.CONNECTED, f"{host.uri}: {len(domains)} domain(s)", gen, previous, now()
            ),
            schedulable(host, previous),
            *drained(host, domains, previous),
        ],
    }


def schedulable(host: KvmHost, previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """Whether new VMs are placed on the host: `kubectl get kvh` shows it, as `kubectl get nodes` shows a cordon."""
    if host.draining:
        why, message = reasons.CORDONED, "being drained (annotation vmfleet.io/drain): no new VM is placed here"
    elif host.unschedulable:
        why, message = reasons.CORDONED, "spec.unschedulable: no new VM is placed here; the VMs here stay"
    else:
        why, message = reasons.NOT_CORDONED, ""
    return condition("Schedulable", not host.cordoned, why, message, host.meta.generation, previous, now())


def drained(host: KvmHost, domains: list[DomainInfo], previous: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """While the drain annotation is set: Draining as long as a VM of a fleet is defined here, then Drained."""
    if not host.draining:
        return []
    left = sorted(d.name for d in domains if d.owner is not None and d.owner.host in ("", host.meta.name))
    if left:
        why, message = reasons.DRAINING, f"{len(left)} VM(s) still here: {listing(left)}"
    else:
        why, message = reasons.DRAINED, "no VM of a fleet is defined here; the KvmHost can be deleted"
    return [condition(reasons.DRAINED, not left, why, message, host.meta.generation, previous, now())]


async def store_status(runtime: Runtime, store: CloneStore, previous: Mapping[str, Any] | None) -> dict[str, Any]:
    gen = store.meta.generation
    try:
        ok, reason, message = True, reasons.REACHABLE, await runtime.store_driver(store).probe()
    except RootMissing as e:
        ok, reason, message = False, reasons.ROOT_MISSING, str(e)
    except VmfleetError as e:  # SSH failed, the mount did not answer in time, a Secret cannot be read
        ok, reason, message = False, reasons.UNREACHABLE, str(e)
    return {
        "observedGeneration": gen,
        "conditions": summary_conditions("Ready" if ok else "Degraded", reason, message, gen, previous, now()),
    }
