"""Choosing a host for a new VM: spread (fewest of this fleet's VMs first) or pack (fill hosts in name order)."""

from __future__ import annotations

from dataclasses import dataclass

from .model import HostView, VmWant


@dataclass
class HostLoad:
    view: HostView
    used_vcpus: int
    used_memory_mib: int
    fleet_vms: int = 0

    def fits(self, vm: VmWant) -> bool:
        if not vm.running:
            return True
        return (
            self.used_vcpus + vm.vcpus <= self.view.vcpus
            and self.used_memory_mib + vm.memory_mib <= self.view.memory_mib
        )

    def add(self, vm: VmWant) -> None:
        self.fleet_vms += 1
        if vm.running:
            self.used_vcpus += vm.vcpus
            self.used_memory_mib += vm.memory_mib


def choose_host(vm: VmWant, loads: dict[str, HostLoad], policy: str) -> str | None:
    candidates = [
        load
        for load in loads.values()
        if load.view.eligible and load.view.reachable and not load.view.cordoned and load.fits(vm)
    ]
    if not candidates:
        return None
    if policy == "pack":
        return min(candidates, key=lambda h: h.view.name).view.name
    return min(candidates, key=lambda h: (h.fleet_vms, h.used_memory_mib - h.view.memory_mib, h.view.name)).view.name
