"""One observation of a fleet and what follows from it without further I/O: its plan, the record to write
before acting and after, the domain each VM should have."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from ..api import reasons
from ..hypervisor import DomainSpec, Owner
from ..planner import (
    CloneAction,
    DomainAction,
    HostView,
    Observation,
    Op,
    ParentAction,
    Plan,
    Problem,
    Severity,
    plan_fleet,
)
from .desired import Desired
from .record import CREATING, DELETING, PLACED, REIMAGING, FleetRecord, Placement


def unobservable(desired: Desired, placed: Placement, views: Mapping[str, HostView]) -> str | None:
    """Why the libvirt endpoint a VM was placed on cannot be looked at now, or None when it was (under its
    KvmHost, or under another KvmHost of the same URI: a renamed one)."""
    if not placed.host:
        return None  # nothing recorded to look at (an entry older records made for an unrecorded clone)
    host = desired.hosts.get(placed.host)
    if host is not None and host.uri == placed.uri:
        view = views[placed.host]
        return None if view.reachable else f"host {placed.host} is unreachable ({view.error})"
    if any(h.uri == placed.uri and views[n].reachable for n, h in desired.hosts.items()):
        return None
    if host is None:
        return f"KvmHost {placed.host}, where it was placed, is no longer defined (or not valid)"
    return f"KvmHost {placed.host} now points to {host.uri}; it may still run at {placed.uri}"


@dataclass(frozen=True)
class Snapshot:
    desired: Desired
    seen: Observation
    record: FleetRecord  # as read from the store in this observation
    files: Mapping[int, str]  # ordinal -> its clone file found in the fleet's directory
    released: frozenset[int] = frozenset()  # VMs on hosts a person declared lost
    seeds: Mapping[int, frozenset[str]] = field(default_factory=dict)  # ordinal -> its seed images found
    addresses: Mapping[int, tuple[str, ...]] = field(default_factory=dict)  # ordinal -> its NIC's IP addresses
    leases: Mapping[int, int] = field(default_factory=dict)  # ordinal -> when its MAC's DHCP lease runs out

    def measured(self) -> list[str]:
        """Every file whose space a VM's figures count: its clone and its seed images."""
        out = [self.clone(o) for o in sorted(self.seen.clones)]
        return out + sorted(p for found in self.seeds.values() for p in found)

    def vm_files(self, ordinal: int) -> list[str]:
        files = [self.clone(ordinal)] if ordinal in self.seen.clones else []
        return files + sorted(self.seeds.get(ordinal, ()))

    def addressed(self) -> frozenset[int]:
        """Running VMs whose guest asked for an address since vmfleet last started them (readiness Address): one
        that held a lease then needs one that runs out later (granted since). Once seen, that stays so while it
        runs: a lease table lost, or a host that did not answer for its leases, does not make it look down."""
        out = set()
        for o, vm in self.seen.domains.items():
            placed = self.record.vms.get(o)
            if placed is not None and placed.host == vm.host and placed.answered:
                answered = True
            else:
                fresh = placed is None or not placed.lease or self.leases.get(o, 0) > placed.lease
                answered = o in self.addresses and fresh
            if vm.active and answered:
                out.add(o)
        return frozenset(out)

    def stale_seeds(self, ordinal: int) -> list[str]:
        """The seed images of a VM other than the one it should have."""
        return sorted(self.seeds.get(ordinal, frozenset()) - {self.desired.seed_path(ordinal)})

    def clone(self, ordinal: int) -> str:
        return self.desired.clone(ordinal, self.files)

    def domain_uuid(self, ordinal: int) -> str:
        """The one its domain has (libvirt refuses a new UUID for an existing name), else the derived one."""
        found = self.seen.domains.get(ordinal)
        return found.uuid if found is not None and found.uuid else self.desired.vm_uuid(ordinal)

    def domain_spec(self, ordinal: int, host: str) -> DomainSpec:
        return self.desired.domain_spec(ordinal, host, self.clone(ordinal))

    def owner(self, ordinal: int, host: str, spec: DomainSpec) -> Owner:
        return self.desired.owner(ordinal, host, self.clone(ordinal), spec)

    def plan(self) -> Plan:
        spec_hash = lambda o, host: self.domain_spec(o, host).spec_hash()
        desired = self.desired
        update = desired.update(self.record.reimaged_for(desired.fleet.reimage_request))
        plan = plan_fleet(desired.wants, self.seen, desired.fleet.placement, spec_hash, update)
        return self._wait_for_macs(plan)

    def _wait_for_macs(self, plan: Plan) -> Plan:
        """A VM is not started with a MAC another VM still runs with (a MAC moved between running VMs): everything
        else goes on, and the other takes its new MAC when it restarts (RestartRequired)."""
        for a in [a for a in plan.actions if isinstance(a, DomainAction) and a.op is Op.START]:
            other = self.desired.mac_in_use(a.ordinal)
            if other is not None:
                plan.actions.remove(a)
                plan.problems.append(
                    Problem(
                        Severity.DEGRADED,
                        reasons.MAC_IN_USE,
                        f"not started: {self.desired.vm_name(other)} still runs with its MAC "
                        f"{self.desired.mac(a.ordinal)} until it is restarted",
                        a.ordinal,
                        self.desired.vm_name(a.ordinal),
                    )
                )
        return plan

    def reimage_left(self) -> frozenset[int] | None:
        """The VMs the reimage annotation names that are still to be reimaged; None without the annotation."""
        fleet = self.desired.fleet
        if not fleet.reimage_request:
            return None
        asked = frozenset(o for o in fleet.reimage_requested if o < fleet.replicas)
        return asked - self.record.reimaged_for(fleet.reimage_request)

    def announced(self, plan: Plan) -> FleetRecord:
        """The record as it must stand before `plan` runs: every host a VM is about to be put on, every clone
        about to be made, deleted or replaced, every VM vmfleet is about to stop."""
        uri, vms = self.desired.uri, dict(self.record.vms)
        for a in plan.actions:
            old = vms.get(a.ordinal) if not isinstance(a, ParentAction) else None
            if isinstance(a, DomainAction) and old is not None and a.op is Op.STOP:
                vms[a.ordinal] = old = replace(old, stopped=True)  # until seen running again (settled)
            if isinstance(a, CloneAction):
                if a.op is Op.CREATE_CLONE and plan.placement.get(a.ordinal):
                    host = plan.placement[a.ordinal]
                    vms[a.ordinal] = Placement(host, uri(host), CREATING, self.desired.parent)
                elif a.op is Op.DELETE_CLONE and old is not None:  # unrecorded: its clone file speaks for it
                    vms[a.ordinal] = Placement(old.host, old.uri, DELETING, old.parent)
                elif a.op is Op.REIMAGE:  # its clone is about to go and come back from the parent now
                    host = plan.placement[a.ordinal]
                    was = old.was if old and old.state == REIMAGING else (old.parent if old else "")
                    state = REIMAGING if a.ordinal in self.seen.clones else CREATING  # or made after a cut
                    stopped = bool(old and old.stopped)
                    vms[a.ordinal] = Placement(
                        host, uri(host), state, self.desired.parent, was or self.desired.parent, stopped
                    )
            elif (
                isinstance(a, DomainAction)
                and a.op in (Op.DEFINE, Op.START, Op.MIGRATE)
                and (old is None or old.host != a.host or old.state == DELETING)
            ):
                moving = self.seen.domains.get(a.ordinal)
                vms[a.ordinal] = Placement(
                    a.host,
                    uri(a.host),
                    CREATING if old and old.state == CREATING else PLACED,
                    old.parent if old else "",
                    stopped=bool(old and old.stopped and old.host),  # a drain's move: stopped there, started here
                    finished=bool(old and old.finished)
                    or (moving is not None and not moving.active and moving.stop_reason == "shutdown"),
                )
        return self.record.with_vms(vms)

    def settled(self) -> FleetRecord:
        """The record after a pass: where each VM's domain is now; what is gone for sure forgotten; what may
        still run where nobody can see kept."""
        seen, vms = self.seen, {}
        wanted = {w.ordinal for w in self.desired.wants}
        for o in sorted(set(self.record.vms) | set(seen.domains) | set(seen.clones)):
            domain = seen.domains.get(o)
            old = self.record.vms.get(o)
            if (
                old is not None
                and old.state in (CREATING, REIMAGING)
                and o not in seen.clones
                and (domain is not None or old.state == REIMAGING)
            ):
                vms[o] = old  # a reimage cut short with its old clone gone: the next pass makes the new one
            elif domain is not None:
                stopped = bool(old and old.stopped) and not domain.active
                finished = bool(old and old.finished) and not domain.active
                here = old is not None and old.host == domain.host
                answered = domain.active and (bool(here and old and old.answered) or o in (seen.addressed or ()))
                vms[o] = Placement(
                    domain.host,
                    self.desired.uri(domain.host),
                    PLACED,
                    _parent_found(old),
                    stopped=stopped,
                    lease=old.lease if here and old else 0,
                    answered=answered,
                    finished=finished,
                )
            elif old is None:
                continue  # a clone nobody recorded (made before records existed): nothing to say where it ran
            elif old.state == REIMAGING:  # not begun: its old clone is the one found
                vms[o] = Placement(
                    old.host, old.uri, PLACED, _parent_found(old), stopped=old.stopped, finished=old.finished
                )
            elif o in seen.clones:
                vms[o] = Placement(
                    old.host, old.uri, DELETING if old.state == DELETING and o not in wanted else PLACED, old.parent
                )
            elif o in self.released or old.state == CREATING:
                continue  # released by a person; or announced and never made: nothing can run it
            elif unobservable(self.desired, old, seen.hosts) is not None:
                vms[o] = old  # may still run there
            elif old.state == PLACED and o in wanted:
                vms[o] = old  # its clone is lost: keep saying so
        request = self.desired.fleet.reimage_request
        if request == self.record.reimage_request:
            return self.record.with_vms(vms)
        return replace(self.record.with_vms(vms), reimage_request="", reimaged=frozenset())  # asked no more, or anew

    def clones_by_parent(self) -> dict[str, int]:
        """How many of the fleet's clones each parent must outlive. A clone whose parent was not recorded counts
        for the current one: a count too high keeps a parent longer, never too short."""
        out: dict[str, int] = {}
        record = self.settled()  # as this observation leaves it: a reimage found done counts for its new parent
        for o in self.seen.clones:
            p = record.vms.get(o)
            parent = p.parent if p is not None and p.parent else self.desired.parent
            out[parent] = out.get(parent, 0) + 1
        return out


def _parent_found(old: Placement | None) -> str:
    """The parent of the clone found for a recorded VM: a reimage announced and not begun left the old one."""
    if old is None:
        return ""
    return old.was if old.state == REIMAGING and old.was else old.parent
