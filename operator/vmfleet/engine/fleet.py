"""Reconciling one VmFleet: observe the store and the hosts, plan, act, observe again, measure, report.

The kopf handlers and `vmfleet apply` both call reconcile_fleet and teardown_fleet; nothing here knows
which of them is asking. Naming is desired.py's, looking observe.py's, deciding the planner's, acting
operations.py's: this module only puts them in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..api import reasons
from ..api.status import clone_count
from ..api.types import HOSTS_LOST_ANNOTATION, CloneStore, KvmHost, SecretRef, VmFleet, VmTemplate
from ..clock import now
from ..credentials import user_data
from ..errors import CredentialsError
from ..hypervisor import LibvirtHost
from ..planner import Op, Plan, listing
from ..storage import StoreDriver, StoreError
from .desired import Desired, cloud_init_of
from .execute import Outcome, Progress, execute
from .observe import observe, observe_addresses
from .operations import Actor
from .record import RECORD_NAME, FleetRecord, RecordKeeper, write_record
from .runtime import Runtime
from .snapshot import Snapshot
from .status import Event, blocked_status, events_for, fleet_status, rollout_goes_on


@dataclass
class FleetResult:
    status: dict[str, Any]
    events: list[Event]
    plan: Plan
    outcomes: list[Outcome] = field(default_factory=list)
    # A rolling update goes on: come back in seconds (a VM may become ready), not at the next resync.
    rolling: bool = False
    # The VMs the reimage annotation names that are still to be reimaged (None: no annotation).
    reimage_left: frozenset[int] | None = None


class FleetDrivers:
    """The store driver and libvirt endpoints one pass over one fleet uses (the runtime keeps them open)."""

    def __init__(self, runtime: Runtime, desired: Desired):
        self.desired = desired
        self.driver: StoreDriver = runtime.store_driver(desired.store)
        self.endpoints: dict[str, LibvirtHost] = {n: runtime.host(h) for n, h in desired.hosts.items()}
        self.parent_lock = runtime.parent_lock(desired.store, desired.parent)
        self.measurer = runtime.measurer(desired.store)

    async def observe(self, fresh: bool = False) -> Snapshot:
        """`fresh`: every host listed in full, not from its view (which misses a change whose event was lost)."""
        if fresh:
            for endpoint in self.endpoints.values():
                endpoint.view.forget()
        snap = await observe(self.desired, self.driver, self.endpoints)
        if not self.desired.needs_address:
            return snap
        snap = await self.with_addresses(snap)  # readiness Address: the plan needs them
        return replace(snap, seen=replace(snap.seen, addressed=snap.addressed()))

    async def with_addresses(self, snap: Snapshot) -> Snapshot:
        found = await observe_addresses(self.desired, snap.seen.domains, self.endpoints)
        return replace(snap, addresses=found.shown, leases=found.leases)

    async def run(self, snap: Snapshot, plan: Plan, concurrency: int, progress: Progress | None) -> list[Outcome]:
        """Announce `plan` in the record, then carry it out."""
        announced = snap.announced(plan)
        await self.measurer.forget(snap.measured())  # what the plan changes is not told as it was
        await self.save(snap, announced)
        keeper = RecordKeeper(self.driver, self.desired.directory, announced)
        return await execute(
            plan, Actor(snap, self.driver, self.endpoints, self.parent_lock, keeper), concurrency, progress
        )

    async def save(self, snap: Snapshot, record: FleetRecord) -> None:
        """Write the fleet's record when what it says differs from the one observed: its VMs, or the reimage request
        it carried out (forgotten once the annotation goes, so that the same value asked again is a new request)."""
        if record.content() != snap.record.content():
            await write_record(self.driver, self.desired.directory, record)


def desire(
    runtime: Runtime,
    fleet: VmFleet,
    template: VmTemplate | None,
    store: CloneStore,
    hosts: Sequence[KvmHost],
    user_data: str | None = None,
) -> Desired:
    driver = runtime.store_driver(store)
    clone_format = driver.clone_format(template.image_format) if template else "raw"
    return Desired(fleet, template, store, hosts, clone_format, driver.disk_source, user_data)


async def _user_data(runtime: Runtime, fleet: VmFleet, template: VmTemplate) -> str | None:
    """The text of spec.cloudInit.userDataSecretRef, read in the fleet's namespace; CredentialsError if it cannot
    be, or is not a Secret of type vmfleet.io/user-data (credentials.user_data)."""
    ci = cloud_init_of(fleet, template)
    if ci is None or ci.user_data_secret is None:
        return None
    name, key = ci.user_data_secret
    ref = SecretRef(name, fleet.meta.namespace)
    return await asyncio.to_thread(user_data, ref, key, runtime.read_secret)


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


def _unavailable(
    fleet: VmFleet,
    store: CloneStore,
    previous_status: Mapping[str, Any] | None,
    error: StoreError,
    done: Sequence[Event] = (),
    outcomes: Sequence[Outcome] = (),
) -> FleetResult:
    """The store failed where the pass could not go on; `done`: the events of what it did before."""
    message = f"CloneStore {store.meta.name}: {error}"
    status = blocked_status(
        fleet.meta.generation, previous_status, "Degraded", reasons.STORE_UNAVAILABLE, message, now()
    )
    return FleetResult(status, [*done, Event("Warning", reasons.STORE_UNAVAILABLE, message)], Plan(), list(outcomes))


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
        message = (
            f"spec.templateRef: the fleet's clones are in CloneStore {moved}, its template now uses "
            f"{store.meta.name}; a fleet cannot move between stores: point it back to a template on {moved}, "
            "or delete the fleet"
        )
        return _stalled(fleet, previous_status, reasons.STORE_CHANGED, message)
    if fleet.reimage_problem:
        return _stalled(fleet, previous_status, reasons.INVALID_SPEC, fleet.reimage_problem)
    try:
        secret_user_data = await _user_data(runtime, fleet, template)
    except CredentialsError as e:
        return _stalled(fleet, previous_status, reasons.USER_DATA_UNREADABLE, str(e))
    ci = cloud_init_of(fleet, template)
    problem = ci.network_data_problem() if ci else None
    if problem:
        return _stalled(fleet, previous_status, reasons.INVALID_SPEC, problem)
    desired = desire(runtime, fleet, template, store, hosts, secret_user_data)
    drivers = FleetDrivers(runtime, desired)
    async with runtime.lock(fleet.meta.uid):
        if not wanted():
            return FleetResult(dict(previous_status or {}), [], Plan())
        first = snap = await drivers.observe()
        clash = desired.duplicate_mac() if template.network else None
        if clash:  # only known once the MACs of older domains are read
            return _stalled(fleet, previous_status, reasons.INVALID_SPEC, clash)
        forced = _forced_events(snap)
        plan = wave = snap.plan()
        if _destroys(wave) and not dry_run:
            first = snap = await drivers.observe(fresh=True)
            plan = wave = snap.plan()
        outcomes: list[Outcome] = []
        # A rolling update goes in waves of at most maxUnavailable VMs: each wave is planned from what the one
        # before left, in this pass, for as long as every action succeeds and a VM is ready to go next.
        waves = 2 + len(desired.wants) // max(1, desired.update().budget)
        while wave.actions and not dry_run and waves > 0:
            waves -= 1
            done = await drivers.run(snap, wave, store.concurrency, progress)
            outcomes += done
            try:
                snap = await drivers.observe()
                # What failed is reported through outcomes; the problems are those of the state we ended in.
                wave = snap.plan()
                if _destroys(wave):
                    snap = await drivers.observe(fresh=True)
                    wave = snap.plan()
            except StoreError as e:  # what was done is still said
                return _unavailable(
                    fleet, store, previous_status, e, events_for(first, plan, outcomes, None, None), outcomes
                )
            plan.observed(wave)
            if not all(o.ok for o in done) or not (wave.pending or wave.moving):
                break
        try:
            if not dry_run:
                await drivers.save(snap, snap.settled())
            space = await drivers.measurer.measure(snap.measured())
        except StoreError as e:
            return _unavailable(
                fleet, store, previous_status, e, events_for(first, plan, outcomes, None, None), outcomes
            )
        if not desired.needs_address:
            snap = await drivers.with_addresses(snap)  # of the state the status speaks of, once a pass
    status = fleet_status(snap, plan, outcomes, space, previous_status, now())
    events = events_for(first, plan, outcomes, previous_status, status)
    return FleetResult(
        status, forced + events, plan, outcomes, rolling=rollout_goes_on(status), reimage_left=snap.reimage_left()
    )


# What takes a disk or a domain away is decided on a full listing of the hosts, never on a view alone: a view
# misses a change whose event was lost (a person's `virsh define` and `start` of a domain it thinks gone).
DESTRUCTIVE = frozenset({Op.UNDEFINE, Op.DELETE_CLONE, Op.DELETE_SEEDS, Op.REIMAGE, Op.MIGRATE})


def _destroys(plan: Plan) -> bool:
    return any(a.op in DESTRUCTIVE for a in plan.actions)


def _stalled(fleet: VmFleet, previous_status: Mapping[str, Any] | None, reason: str, message: str) -> FleetResult:
    """Nothing is done until someone changes something: the status and the Event say what and why."""
    status = blocked_status(fleet.meta.generation, previous_status, "Stalled", reason, message, now())
    return FleetResult(status, [Event("Warning", reason, message)], Plan())


def _moved_from(previous_status: Mapping[str, Any] | None, store: CloneStore) -> str:
    """The store the fleet's clones are in, when its template now names another ('' when it does not)."""
    before = (previous_status or {}).get("store")
    return before if before and before != store.meta.name and clone_count(previous_status) else ""


def _forced_events(snap: Snapshot) -> list[Event]:
    """A person declared hosts lost: say which VMs that released, every pass it matters."""
    released = sorted(snap.released)
    if not released:
        return []
    hosts = ", ".join(sorted({snap.record.vms[o].host for o in released}))
    return [
        Event(
            "Warning",
            reasons.HOST_DECLARED_LOST,
            f"annotation {HOSTS_LOST_ANNOTATION} declares {hosts} lost: "
            f"{listing([snap.desired.vm_name(o) for o in released])} treated as stopped there",
        )
    ]


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
                done, said = False, [Event("Warning", reasons.STORE_UNAVAILABLE, f"CloneStore {store.meta.name}: {e}")]
            complete = complete and done
            events += said
    return TeardownResult(events, complete)


async def _teardown_in(
    runtime: Runtime, fleet: VmFleet, store: CloneStore, hosts: Sequence[KvmHost]
) -> tuple[bool, list[Event]]:
    retain = fleet.deletion_policy == "Retain"
    emptied = replace(fleet, replicas=0, running=False, overrides={})
    drivers = FleetDrivers(runtime, desire(runtime, emptied, None, store, hosts))
    first = snap = await drivers.observe(fresh=True)  # a teardown takes everything away: on full listings
    plan = snap.plan()
    if retain:  # the clones and their seeds stay, as they were
        plan.actions = [a for a in plan.actions if a.op not in (Op.DELETE_CLONE, Op.DELETE_SEEDS)]
    outcomes: list[Outcome] = []
    if plan.actions:
        outcomes = await drivers.run(snap, plan, store.concurrency, None)
        snap = await drivers.observe(fresh=True)
    events = events_for(first, plan, outcomes, None, None)
    complete = all(o.ok for o in outcomes) and not plan.problems
    directory = drivers.desired.directory
    if not complete:
        await drivers.save(snap, snap.settled())
    elif retain and snap.seen.clones:
        events.append(
            Event(
                "Normal",
                reasons.CLONES_RETAINED,
                f"deletionPolicy Retain: kept {len(snap.seen.clones)} clone(s) under {directory}",
            )
        )
    elif snap.record.vms or snap.seen.clones:
        await drivers.driver.delete(f"{directory}/{RECORD_NAME}")
    return complete, events
