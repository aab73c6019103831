"""Reconciling one VmFleet: observe the store and the hosts, plan, act, observe again, measure, report.

The kopf handlers and `vmfleet apply` both call reconcile_fleet and teardown_fleet; nothing here knows
which of them is asking.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from ..api.status import clone_count
from ..clock import now
from ..api.types import HOSTS_LOST_ANNOTATION, CloneStore, KvmHost, VmFleet, VmTemplate
from ..hypervisor import DomainInfo, DomainSpec, HostError, LibvirtHost, Owner, domain_xml
from ..planner import Action, HostView, Observation, Op, Plan, VmSeen, VmWant, listing, plan_fleet
from ..storage import StoreDriver, StoreError, clone_path, fleet_dir, parent_path
from ..storage.base import disk_format_of
from .record import CREATING, DELETING, PLACED, RECORD_NAME, FleetRecord, Placement, read_record, write_record
from .execute import Outcome, Progress, execute
from .runtime import Runtime
from .status import Event, blocked_status, events_for, fleet_status


VM_UUID_NAMESPACE = "3b0f8c52-6d1e-4c57-9a0e-2f6b7d8e9c14"


@dataclass
class FleetResult:
    status: dict[str, Any]
    events: list[Event]
    plan: Plan
    outcomes: list[Outcome] = field(default_factory=list)


class FleetScope:
    """Everything one pass over one fleet needs to name things and reach them. Without a template (a fleet
    being deleted whose template is gone) it can still find and remove what the fleet made."""

    def __init__(self, runtime: Runtime, fleet: VmFleet, template: VmTemplate | None, store: CloneStore,
                 hosts: Sequence[KvmHost]):
        self.fleet, self.template, self.store = fleet, template, store
        self.hosts = {h.meta.name: h for h in hosts}
        self.driver: StoreDriver = runtime.store_driver(store)
        self.endpoints: dict[str, LibvirtHost] = {h.meta.name: runtime.host(h) for h in hosts}
        self.namespace = fleet.meta.namespace or "default"
        self.directory = fleet_dir(self.namespace, fleet.meta.name, fleet.meta.uid)
        self.parent = parent_path(template.image_path, template.image_format) if template else ""
        self.parent_lock = runtime.parent_lock(store, self.parent)
        self.clone_format = self.driver.clone_format(template.image_format) if template else "raw"
        self.forced = fleet.hosts_declared_lost
        self.record = FleetRecord(fleet.meta.uid, self.namespace, fleet.meta.name)
        self.seen: Observation | None = None
        self.released: frozenset[int] = frozenset()  # VMs on hosts declared lost, as of the last observation
        self._clone_files: dict[int, str] = {}
        self._wants = self._make_wants()
        self._clone_name = re.compile(rf"^{re.escape(fleet.meta.name)}-(0|[1-9][0-9]*)\.(img|qcow2)$")

    def clone(self, ordinal: int) -> str:
        """The clone of a VM: the file found for it (whatever format it was made in), else the one to make."""
        found = self._clone_files.get(ordinal)
        if found is not None:
            return f"{self.directory}/{found}"
        return clone_path(self.directory, self.fleet.vm_name(ordinal), self.clone_format)

    def domain_name(self, ordinal: int) -> str:
        # libvirt has no namespaces: qualify by ours. A '.' never occurs in a Kubernetes name.
        return f"{self.namespace}.{self.fleet.vm_name(ordinal)}"

    def domain_uuid(self, ordinal: int) -> str:
        """A VM's libvirt UUID: the one its domain has, else one derived from the fleet's UID and the ordinal,
        so a redefinition updates the domain in place (libvirt refuses a new UUID for an existing name)."""
        found = self.seen.domains.get(ordinal) if self.seen else None
        if found is not None and found.uuid:
            return found.uuid
        return str(uuid.uuid5(uuid.UUID(VM_UUID_NAMESPACE), f"{self.fleet.meta.uid}/{ordinal}"))

    def wants(self) -> list[VmWant]:
        return self._wants

    def _make_wants(self) -> list[VmWant]:
        if self.template is None:
            return []
        out = []
        for o in range(self.fleet.replicas):
            ov = self.fleet.overrides.get(o)
            out.append(VmWant(
                o,
                self.fleet.vm_name(o),
                (ov.vcpus if ov and ov.vcpus else None) or self.template.vcpus,
                (ov.memory_mib if ov and ov.memory_mib else None) or self.template.memory_mib,
                ov.running if ov and ov.running is not None else self.fleet.running,
            ))
        return out

    def domain_spec(self, ordinal: int, host_name: str) -> DomainSpec:
        template = self.template
        assert template is not None, "domains are only defined for a fleet whose template resolves"
        host = self.hosts[host_name]
        want = self._wants[ordinal] if ordinal < len(self._wants) else None
        name = self.domain_name(ordinal)
        clone = self.clone(ordinal)
        return DomainSpec(
            name=name,
            domain_type=host.domain_type,
            vcpus=want.vcpus if want else template.vcpus,
            memory_mib=want.memory_mib if want else template.memory_mib,
            profile=template.profile,
            machine=template.machine_type,
            firmware=template.firmware,
            disk=self.driver.disk_source(clone, host.store_path(self.store, clone)),
            network=template.network,
            console_log=f"{host.console_log_dir.rstrip('/')}/{name}.log" if host.console_log_dir else None,
        )

    def spec_hash(self, ordinal: int, host_name: str) -> str:
        return self.domain_spec(ordinal, host_name).spec_hash()

    def owner(self, ordinal: int, host: str, spec: DomainSpec) -> Owner:
        return Owner(self.fleet.meta.uid, self.namespace, self.fleet.meta.name, ordinal, self.clone(ordinal),
                     spec.spec_hash(), host)

    def plan(self) -> Plan:
        assert self.seen is not None
        return plan_fleet(self.wants(), self.seen, self.fleet.placement, self.spec_hash)

    # ------------------------------------------------------------------ observe

    async def observe(self) -> Observation:
        parent_exists, names, record = await asyncio.gather(
            self.driver.exists(self.parent) if self.template else _false(),
            self.driver.list_dir(self.directory),
            read_record(self.driver, self.directory, self.fleet.meta.uid, self.namespace, self.fleet.meta.name),
        )
        self.record = record
        files: dict[int, str] = {}
        for n in names:
            if m := self._clone_name.match(n):
                o = int(m.group(1))
                # Two files for one VM (a crash between formats): the one of the current format is used.
                if o not in files or disk_format_of(n) == self.clone_format:
                    files[o] = n
        self._clone_files = files
        views = await asyncio.gather(*(self._observe_host(n) for n in self.hosts))
        hosts: dict[str, HostView] = {}
        domains: dict[int, VmSeen] = {}
        duplicates: list[VmSeen] = []
        conflicts: dict[int, str] = {}
        leftovers: list[tuple[VmSeen, DomainInfo]] = []
        ours = {self.domain_name(o): o for o in range(self.fleet.replicas)}
        placed = {o: p.host for o, p in record.vms.items()}
        for view, found in views:
            hosts[view.name] = view
            for d in found:
                if d.owner is not None and d.owner.host not in ("", view.name) and d.owner.host in self.hosts:
                    continue  # placed on another KvmHost that reaches the same libvirtd
                if d.owner is not None and d.owner.fleet_uid == self.fleet.meta.uid:
                    # Placed under a KvmHost name that is gone (renamed): adopted here, and redefined so that
                    # its metadata names this host.
                    renamed = d.owner.host not in ("", view.name)
                    vm = VmSeen(d.owner.ordinal, view.name, d.state, d.active, "" if renamed else d.config_hash,
                                d.live_hash, d.uuid)
                    other = domains.get(vm.ordinal)
                    if other is None:
                        domains[vm.ordinal] = vm
                    elif placed.get(vm.ordinal) == vm.host:
                        domains[vm.ordinal] = vm
                        duplicates.append(other)
                    else:
                        duplicates.append(vm)
                elif (d.owner is not None and not d.active and d.owner.fleet_uid
                      and (d.owner.namespace, d.owner.fleet) == (self.namespace, self.fleet.meta.name)):
                    leftovers.append((VmSeen(d.owner.ordinal, view.name, d.state, False, "", "", d.uuid), d))
                elif d.name in ours:
                    conflicts[ours[d.name]] = view.name
        for vm, d in leftovers:
            # A stopped domain of an earlier fleet of this name: its leftover once its clone is gone (that fleet
            # was deleted while this host was silent), so its definition goes; while the clone is there it may
            # be a live fleet's (`vmfleet apply` beside the operator): a conflict for a person to settle.
            assert d.owner is not None
            if not await self.driver.exists(d.owner.clone):
                duplicates.append(vm)
            elif vm.ordinal < self.fleet.replicas:
                conflicts[vm.ordinal] = f"{vm.host} (a stopped domain of fleet UID {d.owner.fleet_uid}, whose clone " \
                                        "still exists)"
        recorded: dict[int, str] = {}
        elsewhere: dict[int, str] = {}
        released: set[int] = set()
        for o, p in record.vms.items():
            found = domains.get(o)
            if found is not None and found.host == p.host:
                recorded[o] = p.host
                continue
            why = self._unobservable(p, hosts)
            if why is not None and p.host in self.forced:
                released.add(o)  # a person declared its host lost: it counts as stopped there
                continue
            recorded[o] = p.host
            if why is None:
                continue  # where it was placed was looked at: the VM is where it was found, or nowhere
            elsewhere[o] = why
            if found is not None:
                # Found on another host while the one it was placed on cannot be looked at: that one may run it
                # too, so the one found is only a duplicate.
                duplicates.append(domains.pop(o))
        for name in self.forced & set(hosts):
            # Declared lost: nothing new is placed there; while silent, it runs nothing.
            view = hosts[name]
            hosts[name] = replace(view, eligible=False) if view.reachable else HostView(
                name, True, eligible=False, error="declared lost")
        self.released = frozenset(released)
        settling = frozenset(o for o, p in record.vms.items() if p.state != PLACED)
        self.seen = Observation(parent_exists, frozenset(files), domains, hosts, conflicts, recorded, settling,
                                elsewhere, tuple(duplicates))
        return self.seen

    def _unobservable(self, placed: Placement, hosts: Mapping[str, HostView]) -> str | None:
        """Why the libvirt endpoint a VM was placed on cannot be looked at now, or None when it was (under its
        KvmHost, or under another KvmHost of the same URI: a renamed one)."""
        host = self.hosts.get(placed.host)
        if host is not None and host.uri == placed.uri:
            view = hosts[placed.host]
            return None if view.reachable else f"host {placed.host} is unreachable ({view.error})"
        if any(h.uri == placed.uri and hosts[n].reachable for n, h in self.hosts.items()):
            return None
        if host is None:
            return f"KvmHost {placed.host}, where it was placed, is no longer defined (or not valid)"
        return f"KvmHost {placed.host} now points to {host.uri}; it may still run at {placed.uri}"

    async def _observe_host(self, name: str) -> tuple[HostView, list[DomainInfo]]:
        host, endpoint = self.hosts[name], self.endpoints[name]
        eligible = self.fleet.selects(host)
        try:
            found = await endpoint.list_domains()
            capacity = host.capacity or await endpoint.capacity()
        except HostError as e:
            return HostView(name, reachable=False, eligible=eligible, error=str(e)), []
        active = [d for d in found if d.active and (d.owner is None or d.owner.host in ("", name))]
        return HostView(name, True, eligible, capacity.vcpus, capacity.memory_mib,
                        sum(d.vcpus for d in active), sum(d.memory_mib for d in active)), found

    # ------------------------------------------------------------------ the record

    def _uri(self, host: str) -> str:
        return self.hosts[host].uri if host in self.hosts else ""

    def announced(self, plan: Plan) -> FleetRecord:
        """The record as it must stand before `plan` runs: every host a VM is about to be put on, every clone
        about to be deleted."""
        vms = dict(self.record.vms)
        for a in plan.actions:
            if a.ordinal is None:
                continue
            old = vms.get(a.ordinal)
            if a.op is Op.CREATE_CLONE and a.host:
                vms[a.ordinal] = Placement(a.host, self._uri(a.host), CREATING, self.parent)
            elif a.op in (Op.DEFINE, Op.START) and a.host and (old is None or old.host != a.host or
                                                              old.state == DELETING):
                vms[a.ordinal] = Placement(a.host, self._uri(a.host), old.state if old and old.state == CREATING
                                           else PLACED, old.parent if old else "")
            elif a.op is Op.DELETE_CLONE:
                vms[a.ordinal] = Placement(old.host if old else "", old.uri if old else "", DELETING,
                                           old.parent if old else "")
        return self.record.with_vms(vms)

    def settled(self, seen: Observation) -> FleetRecord:
        """The record after a pass: where each VM's domain is now; what is gone for sure forgotten; what may
        still run where nobody can see kept."""
        vms: dict[int, Placement] = {}
        wanted = {w.ordinal for w in self.wants()}
        for o in sorted(set(self.record.vms) | set(seen.domains) | set(seen.clones)):
            domain = seen.domains.get(o)
            old = self.record.vms.get(o)
            if domain is not None:
                vms[o] = Placement(domain.host, self._uri(domain.host), PLACED, old.parent if old else "")
            elif old is None:
                continue  # a clone nobody recorded (made before records existed): nothing to say where it ran
            elif o in seen.clones:
                vms[o] = replace(old, state=DELETING if old.state == DELETING and o not in wanted else PLACED)
            elif o in self.released:
                continue
            elif self._unobservable(old, seen.hosts) is not None:
                vms[o] = old  # may still run there
            elif old.state == PLACED and o in wanted:
                vms[o] = old  # its clone is lost: keep saying so
        return self.record.with_vms(vms)

    def clones_by_parent(self, seen: Observation) -> dict[str, int]:
        """How many of the fleet's clones each parent must outlive. A clone whose parent was not recorded counts
        for the current one: a count too high keeps a parent longer, never too short."""
        out: dict[str, int] = {}
        for o in seen.clones:
            p = self.record.vms.get(o)
            parent = p.parent if p is not None and p.parent else self.parent
            out[parent] = out.get(parent, 0) + 1
        return out

    async def save(self, record: FleetRecord) -> None:
        if record.vms != self.record.vms:
            if record.vms or self.record.vms:
                await write_record(self.driver, self.directory, record)
            self.record = record

    # ------------------------------------------------------------------ act

    async def actuate(self, action: Action) -> None:
        o, host = action.ordinal, action.host
        if action.op is Op.PREPARE_PARENT:
            assert self.template is not None
            async with self.parent_lock:
                await self.driver.prepare_parent(self.template.image_path, self.template.image_format, self.parent)
            return
        assert o is not None
        if action.op is Op.CREATE_CLONE:
            assert self.template is not None
            await self.driver.create_clone(self.parent, self.template.image_format, self.clone(o))
            return
        if action.op is Op.DELETE_CLONE:
            await self.driver.delete(self.clone(o))
            return
        assert host is not None
        if action.op is Op.DEFINE:
            spec = self.domain_spec(o, host)
            await self.endpoints[host].define(domain_xml(spec, self.owner(o, host, spec), self.domain_uuid(o)))
        elif action.op is Op.START:
            await self.endpoints[host].start(self.domain_name(o))
        elif action.op is Op.STOP:
            await self.endpoints[host].stop(self.domain_name(o))
        elif action.op is Op.UNDEFINE:
            await self.endpoints[host].undefine(self.domain_name(o))


async def _false() -> bool:
    return False


async def reconcile_fleet(
    runtime: Runtime,
    fleet: VmFleet,
    template: VmTemplate,
    store: CloneStore,
    hosts: Sequence[KvmHost],
    previous_status: Mapping[str, Any] | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    wanted: Callable[[], bool] = lambda: True,
) -> FleetResult:
    """One pass. `wanted` is asked once the fleet's lock is held: a pass that waited behind the teardown of a
    fleet being deleted must not build it again."""
    try:
        return await _reconcile(runtime, fleet, template, store, hosts, previous_status, dry_run, progress, wanted)
    except StoreError as e:
        return _unavailable(fleet, store, previous_status, e)


def _unavailable(fleet: VmFleet, store: CloneStore, previous_status: Mapping[str, Any] | None, error: StoreError,
                 done: Sequence[Event] = (), outcomes: Sequence[Outcome] = ()) -> FleetResult:
    """The store failed where the pass could not go on; `done`: the events of what it did before."""
    message = f"CloneStore {store.meta.name}: {error}"
    status = blocked_status(fleet.meta.generation, previous_status, "Degraded", "StoreUnavailable", message, now())
    return FleetResult(status, [*done, Event("Warning", "StoreUnavailable", message)], Plan(), list(outcomes))


async def _reconcile(
    runtime: Runtime,
    fleet: VmFleet,
    template: VmTemplate,
    store: CloneStore,
    hosts: Sequence[KvmHost],
    previous_status: Mapping[str, Any] | None,
    dry_run: bool,
    progress: Progress | None,
    wanted: Callable[[], bool],
) -> FleetResult:
    moved = _moved_from(previous_status, store)
    if moved:
        message = (f"spec.templateRef: the fleet's clones are in CloneStore {moved}, its template now uses "
                   f"{store.meta.name}; a fleet cannot move between stores: point it back to a template on {moved}, "
                   "or delete the fleet")
        status = blocked_status(fleet.meta.generation, previous_status, "Stalled", "StoreChanged", message, now())
        return FleetResult(status, [Event("Warning", "StoreChanged", message)], Plan())
    scope = FleetScope(runtime, fleet, template, store, hosts)
    async with runtime.lock(fleet.meta.uid):
        if not wanted():
            return FleetResult(dict(previous_status or {}), [], Plan())
        seen = await scope.observe()
        forced = _forced_events(scope)
        plan = scope.plan()
        outcomes: list[Outcome] = []
        if plan.actions and not dry_run:
            await scope.save(scope.announced(plan))
            outcomes = await execute(plan, scope.actuate, store.concurrency, progress)
            try:
                seen = await scope.observe()
            except StoreError as e:  # what was done is still said
                return _unavailable(fleet, store, previous_status, e, events_for(scope, plan, outcomes, None, None),
                                    outcomes)
            # What failed is reported through outcomes; the problems are those of the state we ended in.
            after = scope.plan()
            plan.problems, plan.restart_required = after.problems, after.restart_required
        try:
            if not dry_run:
                await scope.save(scope.settled(seen))
            space = await scope.driver.measure([scope.clone(o) for o in sorted(seen.clones)])
        except StoreError as e:
            return _unavailable(fleet, store, previous_status, e, events_for(scope, plan, outcomes, None, None),
                                outcomes)
    status = fleet_status(scope, seen, plan, outcomes, space, previous_status, now())
    events = events_for(scope, plan, outcomes, previous_status, status)
    return FleetResult(status, forced + events, plan, outcomes)


def _moved_from(previous_status: Mapping[str, Any] | None, store: CloneStore) -> str:
    """The store the fleet's clones are in, when its template now names another ('' when it does not)."""
    before = (previous_status or {}).get("store")
    return before if before and before != store.meta.name and clone_count(previous_status) else ""


def _forced_events(scope: FleetScope) -> list[Event]:
    """A person declared hosts lost: say which VMs that released, every pass it matters."""
    released = sorted(scope.released)
    if not released:
        return []
    hosts = ", ".join(sorted({scope.record.vms[o].host for o in released}))
    return [Event("Warning", "HostDeclaredLost",
                  f"annotation {HOSTS_LOST_ANNOTATION} declares {hosts} lost: "
                  f"{listing([scope.fleet.vm_name(o) for o in released])} treated as stopped there")]


@dataclass
class TeardownResult:
    events: list[Event]
    complete: bool  # False while something could not be removed: the caller keeps its finalizer


async def teardown_fleet(
    runtime: Runtime, fleet: VmFleet, stores: Sequence[CloneStore], hosts: Sequence[KvmHost]
) -> TeardownResult:
    """Deleting a fleet: every domain goes; clones go too unless deletionPolicy is Retain. What the fleet made
    is found by its UID in each of `stores` (the template's, or every store when the template is gone) and on
    every host; nothing goes while a host that may run one of its VMs cannot be observed."""
    events: list[Event] = []
    complete = True
    async with runtime.lock(fleet.meta.uid):
        for store in stores:
            try:
                done, said = await _teardown_in(runtime, fleet, store, hosts)
            except StoreError as e:
                done, said = False, [Event("Warning", "StoreUnavailable", f"CloneStore {store.meta.name}: {e}")]
            complete = complete and done
            events += said
    return TeardownResult(events, complete)


async def _teardown_in(runtime: Runtime, fleet: VmFleet, store: CloneStore,
                       hosts: Sequence[KvmHost]) -> tuple[bool, list[Event]]:
    retain = fleet.deletion_policy == "Retain"
    emptied = replace(fleet, replicas=0, running=False, overrides={})
    scope = FleetScope(runtime, emptied, None, store, hosts)
    seen = await scope.observe()
    plan = scope.plan()
    if retain:
        plan.actions = [a for a in plan.actions if a.op is not Op.DELETE_CLONE]
    outcomes: list[Outcome] = []
    if plan.actions:
        await scope.save(scope.announced(plan))
        outcomes = await execute(plan, scope.actuate, store.concurrency)
        seen = await scope.observe()
    events = events_for(scope, plan, outcomes, None, None)
    complete = all(o.ok for o in outcomes) and not plan.problems
    if not complete:
        await scope.save(scope.settled(seen))
    elif retain and seen.clones:
        events.append(Event("Normal", "ClonesRetained",
                            f"deletionPolicy Retain: kept {len(seen.clones)} clone(s) under {scope.directory}"))
    elif scope.record.vms or seen.clones:
        await scope.driver.delete(f"{scope.directory}/{RECORD_NAME}")
    return complete, events
