"""Looking at a fleet: its clones and record in the store, its domains on every host. Changes nothing (I6)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, replace

from ..hypervisor import DomainInfo, FleetKey, HostError, Lease, LibvirtHost
from ..planner import HostView, Observation, VmSeen
from ..storage import StoreDriver
from .desired import Desired
from .record import CREATING, PLACED, REIMAGING, read_record
from .snapshot import Snapshot, unobservable


async def observe(desired: Desired, driver: StoreDriver, endpoints: Mapping[str, LibvirtHost]) -> Snapshot:
    fleet = desired.fleet
    parent_exists, names, record = await asyncio.gather(
        driver.exists(desired.parent) if desired.template else _false(),
        driver.list_dir(desired.directory),
        read_record(driver, desired.directory, fleet.meta.uid, desired.namespace, fleet.meta.name),
    )
    files = desired.clone_files(names)
    ours = {desired.domain_name(o): o for o in range(fleet.replicas)}
    key = FleetKey(fleet.meta.uid, desired.namespace, fleet.meta.name, ours.keys())
    views = await asyncio.gather(*(_observe_host(desired, key, n, endpoints[n]) for n in desired.hosts))
    hosts: dict[str, HostView] = {}
    domains: dict[int, VmSeen] = {}
    duplicates: list[VmSeen] = []
    conflicts: dict[int, str] = {}
    leftovers: list[tuple[VmSeen, DomainInfo]] = []
    unknown_macs: dict[int, tuple[str, str]] = {}  # ordinal -> (host, domain) defined before vmfleet chose MACs
    placed = {o: p.host for o, p in record.vms.items()}
    for view, found in views:  # only the domains that can concern this fleet
        hosts[view.name] = view
        for d in found:
            if d.owner is not None and d.owner.host not in ("", view.name) and d.owner.host in desired.hosts:
                continue  # placed on another KvmHost that reaches the same libvirtd
            if d.owner is not None and d.owner.fleet_uid == fleet.meta.uid:
                # Placed under a KvmHost name that is gone (renamed): adopted here, and redefined so that
                # its metadata names this host.
                renamed = d.owner.host not in ("", view.name)
                vm = VmSeen(
                    d.owner.ordinal,
                    view.name,
                    d.state,
                    d.active,
                    "" if renamed else d.config_hash,
                    d.live_hash,
                    d.uuid,
                    d.saved,
                    d.kept_mac,
                    d.live_mac if d.active else None,
                    d.stop_reason,
                    d.owner.revision,
                    d.live_revision if d.active else "",
                )
                if d.owner.mac is None:
                    unknown_macs[vm.ordinal] = (view.name, d.name)
                other = domains.get(vm.ordinal)
                if other is None:
                    domains[vm.ordinal] = vm
                elif placed.get(vm.ordinal) == vm.host:
                    domains[vm.ordinal] = vm
                    duplicates.append(other)
                else:
                    duplicates.append(vm)
            elif (
                d.owner is not None
                and not d.active
                and d.owner.fleet_uid
                and (d.owner.namespace, d.owner.fleet) == (desired.namespace, fleet.meta.name)
            ):
                leftovers.append((VmSeen(d.owner.ordinal, view.name, d.state, False, "", "", d.uuid), d))
            elif d.name in ours:
                conflicts[ours[d.name]] = view.name
    for vm, d in leftovers:
        # A stopped domain of an earlier fleet of this name: its leftover once its clone is gone (that fleet
        # was deleted while this host was silent), so its definition goes; while the clone is there it may
        # be a live fleet's (`vmfleet apply` beside the operator): a conflict for a person to settle.
        assert d.owner is not None
        if not await driver.exists(d.owner.clone):
            duplicates.append(vm)
        elif vm.ordinal < fleet.replicas:
            conflicts[vm.ordinal] = (
                f"{vm.host} (a stopped domain of fleet UID {d.owner.fleet_uid}, whose clone still exists)"
            )
    kept = {o: vm.kept_mac for o, vm in domains.items() if vm.kept_mac}
    unread: dict[int, str] = {}  # VMs whose kept MAC could not be read: held as if out of sight, this pass
    if desired.template and desired.template.network:  # older domains' NICs: until redefined, read from libvirt
        older = [o for o in unknown_macs if o in domains and domains[o].host == unknown_macs[o][0]]
        macs = await asyncio.gather(
            *(endpoints[unknown_macs[o][0]].nic_mac(unknown_macs[o][1]) for o in older), return_exceptions=True
        )
        for o, m in zip(older, macs, strict=True):
            if isinstance(m, HostError):  # not known this pass: it may not be defined with another MAC
                unread[o] = f"its NIC on {domains.pop(o).host} could not be read ({m})"
            elif isinstance(m, BaseException):
                raise m
            elif m:
                kept[o] = m
    desired.keep_macs(kept, {o: vm.live_mac for o, vm in domains.items() if vm.live_mac})
    recorded: dict[int, str] = {}
    elsewhere: dict[int, str] = {}
    released: set[int] = set()
    for o, p in record.vms.items():
        found_vm = domains.get(o)
        if not p.host:
            continue  # recorded without a host (by older versions, for a clone being deleted): as unrecorded
        if p.state == CREATING and o not in files and found_vm is None:
            # Announced, never made (a domain is defined only after its clone): nothing can run anywhere, even
            # where the record's URI can no longer be looked at (an announcement that landed late).
            continue
        if found_vm is not None and found_vm.host == p.host:
            recorded[o] = p.host
            continue
        why = unobservable(desired, p, hosts)
        if why is not None and p.host in desired.forced:
            released.add(o)  # a person declared its host lost: it counts as stopped there
            continue
        recorded[o] = p.host
        if why is None:
            continue  # where it was placed was looked at: the VM is where it was found, or nowhere
        elsewhere[o] = why
        if found_vm is not None:
            # Found on another host while the one it was placed on cannot be looked at: that one may run it
            # too, so the one found is only a duplicate.
            duplicates.append(domains.pop(o))
    for name in desired.forced & set(hosts):
        # Declared lost: nothing new is placed there; while silent, it runs nothing.
        view = hosts[name]
        hosts[name] = (
            replace(view, eligible=False)
            if view.reachable
            else HostView(name, True, eligible=False, error="declared lost")
        )
    elsewhere.update(unread)
    settling = frozenset(o for o, p in record.vms.items() if p.state != PLACED)

    seeds = desired.seed_files(names)
    # Every VM's seed content and digest (its {{ mac }} the adopted one): CPU work, off the event loop.
    wanted_seeds = await asyncio.to_thread(lambda: {o: desired.seed_path(o) for o in range(fleet.replicas)})
    seed_missing = frozenset(o for o, p in wanted_seeds.items() if p is not None and p not in seeds.get(o, ()))
    stale_seeds = frozenset(o for o, found in seeds.items() if found - {wanted_seeds.get(o)})
    seen = Observation(
        parent_exists,
        frozenset(files),
        domains,
        hosts,
        conflicts,
        recorded,
        settling,
        elsewhere,
        tuple(duplicates),
        seed_missing,
        stale_seeds,
        # A reimage announced and not begun (its old clone untouched) leaves the parent of that clone.
        {o: p.was if p.state == REIMAGING and p.was else p.parent for o, p in record.vms.items() if p.parent},
        frozenset(o for o, name in files.items() if f"{desired.directory}/{name}" != desired.fresh_clone(o)),
        None,
        frozenset(o for o, p in record.vms.items() if p.stopped),
        frozenset(o for o, p in record.vms.items() if p.state == REIMAGING),
        frozenset(o for o, p in record.vms.items() if p.finished),
    )
    return Snapshot(desired, seen, record, files, frozenset(released), seeds)


@dataclass(frozen=True)
class Addresses:
    shown: dict[int, tuple[str, ...]]  # running VM -> the IP addresses of its NIC
    leases: dict[int, int]  # VM with a domain -> the latest expiry of its MAC's DHCP leases on its host


async def observe_addresses(
    desired: Desired, domains: Mapping[int, VmSeen], endpoints: Mapping[str, LibvirtHost]
) -> Addresses:
    """The IP addresses of each running VM with a NIC, for its status entry (where to ssh): the network's DHCP
    leases, read once per host and matched by the VM's MAC; the host's ARP table for a VM without a lease. And
    when each VM's lease runs out, running or not: a new lease says that its guest asked again (readiness)."""
    network = desired.template.network if desired.template else None
    if not network:
        return Addresses({}, {})
    running = sorted(o for o, vm in domains.items() if vm.active)
    hosts = sorted({vm.host for vm in domains.values()})
    leases = dict(zip(hosts, await asyncio.gather(*(_leases(endpoints[h], network) for h in hosts)), strict=True))
    of = {o: leases[vm.host].get(desired.mac(o), []) for o, vm in domains.items()}
    found = {o: [lease.address for lease in of[o]] for o in running}
    unleased = [o for o in running if not found[o]]
    arp = await asyncio.gather(*(endpoints[domains[o].host].arp_addresses(desired.domain_name(o)) for o in unleased))
    found.update(zip(unleased, arp, strict=True))
    expiries = {o: max(lease.expiry for lease in held) for o, held in of.items() if held}
    return Addresses({o: reachable_first(a) for o, a in found.items() if a}, expiries)


async def _leases(endpoint: LibvirtHost, network: str) -> dict[str, list[Lease]]:
    try:
        return await endpoint.leases(network)
    except HostError:
        return {}  # its VMs show what ARP has; readiness Address counts a lease seen once started, not this


def reachable_first(addresses: list[str]) -> tuple[str, ...]:
    """At most an IPv4 and an IPv6 address (the first of each, by their order as numbers): where to ssh."""
    ordered = sorted({ipaddress.ip_address(a) for a in addresses if _is_ip(a)}, key=lambda a: (a.version, a))
    v4 = [str(a) for a in ordered if a.version == 4][:1]
    v6 = [str(a) for a in ordered if a.version == 6 and not a.is_link_local][:1]
    return tuple(v4 + v6)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


async def _observe_host(
    desired: Desired, key: FleetKey, name: str, endpoint: LibvirtHost
) -> tuple[HostView, list[DomainInfo]]:
    host = desired.hosts[name]
    eligible = desired.fleet.selects(host)
    try:
        found, used = await endpoint.fleet_domains(key)
        capacity = host.capacity or await endpoint.capacity()
    except HostError as e:
        return HostView(name, reachable=False, eligible=eligible, cordoned=host.cordoned, error=str(e)), []
    return HostView(
        name,
        True,
        eligible,
        capacity.vcpus,
        capacity.memory_mib,
        used.vcpus,
        used.memory_mib,
        cordoned=host.cordoned,
        draining=host.draining,
        uri=host.uri,
    ), found


async def _false() -> bool:
    return False
