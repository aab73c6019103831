"""Reconciling one VmFleet: observe the store and the hosts, plan, act, observe again, measure, report.

The kopf handlers and `vmfleet apply` both call reconcile_fleet and teardown_fleet; nothing here knows
which of them is asking.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..api.types import CloneStore, KvmHost, VmFleet, VmTemplate
from ..hypervisor import DomainInfo, DomainSpec, HostError, LibvirtHost, Owner, domain_xml
from ..planner import Action, HostView, Observation, Op, Plan, VmSeen, VmWant, plan_fleet
from ..storage import StoreDriver, StoreError, clone_path, fleet_dir, parent_path
from .execute import Outcome, Progress, execute
from .runtime import Runtime
from .status import Event, blocked_status, events_for, fleet_status


@dataclass
class FleetResult:
    status: dict[str, Any]
    events: list[Event]
    plan: Plan
    outcomes: list[Outcome] = field(default_factory=list)


class FleetScope:
    """Everything one pass over one fleet needs to name things and reach them."""

    def __init__(self, runtime: Runtime, fleet: VmFleet, template: VmTemplate, store: CloneStore,
                 hosts: Sequence[KvmHost]):
        self.fleet, self.template, self.store = fleet, template, store
        self.hosts = {h.meta.name: h for h in hosts}
        self.driver: StoreDriver = runtime.store_driver(store)
        self.endpoints: dict[str, LibvirtHost] = {h.meta.name: runtime.host(h) for h in hosts}
        self.parent = parent_path(template.image_path, template.image_format)
        self.parent_lock = runtime.parent_lock(store, self.parent)
        self.clone_format = self.driver.clone_format(template.image_format)
        self.namespace = fleet.meta.namespace or "default"
        self._wants = self._make_wants()
        self._clone_name = re.compile(rf"^{re.escape(fleet.meta.name)}-(0|[1-9][0-9]*){re.escape(self.suffix)}$")

    @property
    def suffix(self) -> str:
        return ".qcow2" if self.clone_format == "qcow2" else ".img"

    def clone(self, ordinal: int) -> str:
        return clone_path(self.namespace, self.fleet.meta.name, self.fleet.vm_name(ordinal), self.clone_format)

    def domain_name(self, ordinal: int) -> str:
        # libvirt has no namespaces: qualify by ours. A '.' never occurs in a Kubernetes name.
        return f"{self.namespace}.{self.fleet.vm_name(ordinal)}"

    def wants(self) -> list[VmWant]:
        return self._wants

    def _make_wants(self) -> list[VmWant]:
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
        host = self.hosts[host_name]
        want = self._wants[ordinal] if ordinal < len(self._wants) else None
        name = self.domain_name(ordinal)
        return DomainSpec(
            name=name,
            domain_type=host.domain_type,
            vcpus=want.vcpus if want else self.template.vcpus,
            memory_mib=want.memory_mib if want else self.template.memory_mib,
            profile=self.template.profile,
            machine=self.template.machine_type,
            firmware=self.template.firmware,
            disk_path=host.store_path(self.store, self.clone(ordinal)),
            disk_format=self.clone_format,
            network=self.template.network,
            console_log=f"{host.console_log_dir.rstrip('/')}/{name}.log" if host.console_log_dir else None,
        )

    def owner(self, ordinal: int, host: str, spec: DomainSpec) -> Owner:
        return Owner(self.fleet.meta.uid, self.namespace, self.fleet.meta.name, ordinal, self.clone(ordinal),
                     spec.spec_hash(), host)

    # ------------------------------------------------------------------ observe

    async def observe(self, recorded: Mapping[int, str]) -> Observation:
        parent_exists, names = await asyncio.gather(
            self.driver.exists(self.parent),
            self.driver.list_dir(fleet_dir(self.namespace, self.fleet.meta.name)),
        )
        clones = frozenset(int(m.group(1)) for n in names if (m := self._clone_name.match(n)))
        views = await asyncio.gather(*(self._observe_host(n) for n in self.hosts))
        hosts: dict[str, HostView] = {}
        domains: dict[int, VmSeen] = {}
        conflicts: dict[int, str] = {}
        ours = {self.domain_name(o): o for o in range(self.fleet.replicas)}
        for view, found in views:
            hosts[view.name] = view
            for d in found:
                if d.owner is not None and d.owner.host not in ("", view.name):
                    continue  # placed on another KvmHost that reaches the same libvirtd
                if d.owner is not None and d.owner.fleet_uid == self.fleet.meta.uid:
                    domains[d.owner.ordinal] = VmSeen(d.owner.ordinal, view.name, d.state, d.active,
                                                      d.owner.spec_hash)
                elif d.name in ours:
                    conflicts[ours[d.name]] = view.name
        return Observation(parent_exists, clones, domains, hosts, conflicts, dict(recorded))

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

    # ------------------------------------------------------------------ act

    async def actuate(self, action: Action) -> None:
        o, host = action.ordinal, action.host
        if action.op is Op.PREPARE_PARENT:
            async with self.parent_lock:
                await self.driver.prepare_parent(self.template.image_path, self.template.image_format, self.parent)
        elif action.op is Op.CREATE_CLONE:
            await self.driver.create_clone(self.parent, self.template.image_format, self.clone(o))
        elif action.op is Op.DELETE_CLONE:
            await self.driver.delete(self.clone(o))
        elif action.op is Op.DEFINE:
            spec = self.domain_spec(o, host)
            await self.endpoints[host].define(domain_xml(spec, self.owner(o, host, spec)))
        elif action.op is Op.START:
            await self.endpoints[host].start(self.domain_name(o))
        elif action.op is Op.STOP:
            await self.endpoints[host].stop(self.domain_name(o))
        elif action.op is Op.UNDEFINE:
            await self.endpoints[host].undefine(self.domain_name(o))


def recorded_hosts(previous_status: Mapping[str, Any] | None) -> dict[int, str]:
    """Which VMs had a clone at the last pass, and where they ran: a clone missing now was lost."""
    out = {}
    for entry in (previous_status or {}).get("clones", []) or []:
        if entry.get("state") not in (None, "Pending") and "ordinal" in entry:
            out[int(entry["ordinal"])] = entry.get("host") or ""
    return out


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


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
        message = f"CloneStore {store.meta.name}: {e}"
        status = blocked_status(fleet.meta.generation, previous_status, "Degraded", "StoreUnavailable", message,
                                now())
        return FleetResult(status, [Event("Warning", "StoreUnavailable", message)], Plan())


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
    scope = FleetScope(runtime, fleet, template, store, hosts)
    recorded = recorded_hosts(previous_status)
    async with runtime.lock(fleet.meta.uid):
        if not wanted():
            return FleetResult(dict(previous_status or {}), [], Plan())
        seen = await scope.observe(recorded)
        plan = plan_fleet(scope.wants(), seen, fleet.placement, lambda o, h: scope.domain_spec(o, h).spec_hash())
        outcomes: list[Outcome] = []
        if plan.actions and not dry_run:
            outcomes = await execute(plan, scope.actuate, store.concurrency, progress)
            seen = await scope.observe(recorded)
            # What failed is reported through outcomes; the problems are those of the state we ended in.
            plan.problems = plan_fleet(
                scope.wants(), seen, fleet.placement, lambda o, h: scope.domain_spec(o, h).spec_hash()
            ).problems
        space = await scope.driver.measure([scope.clone(o) for o in sorted(seen.clones)])
    status = fleet_status(scope, seen, plan, outcomes, space, previous_status, now())
    return FleetResult(status, events_for(scope, plan, outcomes, previous_status, status), plan, outcomes)


@dataclass
class TeardownResult:
    events: list[Event]
    complete: bool  # False while something could not be removed: the caller keeps its finalizer


async def teardown_fleet(
    runtime: Runtime, fleet: VmFleet, template: VmTemplate, store: CloneStore, hosts: Sequence[KvmHost]
) -> TeardownResult:
    """Deleting a fleet: every domain goes; clones go too unless deletionPolicy is Retain."""
    retain = fleet.deletion_policy == "Retain"
    emptied = VmFleet(fleet.meta, fleet.template, 0, fleet.match_labels, fleet.placement, False,
                      fleet.deletion_policy)
    scope = FleetScope(runtime, emptied, template, store, hosts)
    async with runtime.lock(fleet.meta.uid):
        seen = await scope.observe({})
        plan = plan_fleet([], seen, fleet.placement, lambda o, h: "")
        if retain:
            plan.actions = [a for a in plan.actions if a.op is not Op.DELETE_CLONE]
        outcomes = await execute(plan, scope.actuate, store.concurrency)
    events = events_for(scope, plan, outcomes, None, None)
    complete = all(o.ok for o in outcomes) and not plan.problems
    if complete and retain and seen.clones:
        events.append(Event("Normal", "ClonesRetained",
                            f"deletionPolicy Retain: kept {len(seen.clones)} clone(s) under "
                            f"{fleet_dir(scope.namespace, fleet.meta.name)}"))
    return TeardownResult(events, complete)
