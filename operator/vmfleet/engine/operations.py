"""Every operation the planner may ask for, each defined once: how it is carried out, the reasons it reports
when it succeeds and when it fails, and how its Event words what was done.

Adding an operation is a member of `planner.Op`, one `@operation` here (its reasons in api/reasons.py, with
the hint of the failure), and the planner rule that asks for it. A test holds every Op to one definition.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ..api import reasons
from ..errors import HostTimeout
from ..hypervisor import HostError, LibvirtHost, domain_xml
from ..planner import Action, CloneAction, DomainAction, Op, ParentAction
from ..storage import StoreDriver
from .record import RecordKeeper
from .snapshot import Snapshot


@dataclass(frozen=True)
class Actor:
    """What carrying out a fleet's actions needs: the observation they were planned from and the drivers."""

    snapshot: Snapshot
    driver: StoreDriver
    endpoints: Mapping[str, LibvirtHost]
    parent_lock: asyncio.Lock
    record: RecordKeeper  # the record as the plan was announced, for operations that move it on

    async def __call__(self, action: Action) -> str | None:
        return await OPERATIONS[action.op].run(self, action)


A = TypeVar("A", ParentAction, CloneAction, DomainAction)
CarryOut = Callable[[Actor, A], Awaitable[str | None]]  # a note: done another way than planned


@dataclass(frozen=True)
class Operation:
    op: Op
    done: str  # the Normal Event's reason, once per pass for all VMs it was done for
    did: str  # how that Event says it: "<did> 3 VM(s): web-0, web-1, web-2"
    failed: str  # the Warning Event's and the Degraded condition's reason when it fails
    kind: type[Action]
    carry_out: Callable[[Actor, Any], Awaitable[str | None]]

    async def run(self, actor: Actor, action: Action) -> str | None:
        assert isinstance(action, self.kind), (self.op, action)
        return await self.carry_out(actor, action)


OPERATIONS: dict[Op, Operation] = {}


def operation(op: Op, kind: type[A], done: str, did: str, failed: str) -> Callable[[CarryOut[A]], CarryOut[A]]:
    def register(fn: CarryOut[A]) -> CarryOut[A]:
        assert op not in OPERATIONS, f"{op} is defined twice"
        assert reasons.known(done) and failed in reasons.HINTS, (done, failed)
        OPERATIONS[op] = Operation(op, done, did, failed, kind, fn)
        return fn

    return register


@operation(
    Op.PREPARE_PARENT, ParentAction, reasons.PARENT_PREPARED, "prepared the clone parent", reasons.PREPARE_PARENT_FAILED
)
async def prepare_parent(actor: Actor, _: ParentAction) -> None:
    desired = actor.snapshot.desired
    assert desired.template is not None
    async with actor.parent_lock:  # the template's pass and each of its fleets' may find it missing at once
        await actor.driver.prepare_parent(desired.template.image_path, desired.template.image_format, desired.parent)


@operation(Op.CREATE_CLONE, CloneAction, reasons.CLONES_CREATED, "created clone(s) for", reasons.CREATE_CLONE_FAILED)
async def create_clone(actor: Actor, a: CloneAction) -> None:
    desired = actor.snapshot.desired
    assert desired.template is not None
    await actor.driver.create_clone(desired.parent, desired.template.image_format, actor.snapshot.clone(a.ordinal))


@operation(Op.DELETE_CLONE, CloneAction, reasons.CLONES_DELETED, "deleted clone(s) of", reasons.DELETE_CLONE_FAILED)
async def delete_clone(actor: Actor, a: CloneAction) -> None:
    await actor.driver.delete(actor.snapshot.clone(a.ordinal))


@operation(Op.REIMAGE, CloneAction, reasons.REIMAGED, "reimaged", reasons.REIMAGE_FAILED)
async def reimage(actor: Actor, a: CloneAction) -> None:
    """A new clone of the parent in place of the VM's (whose domain is off: the planner stopped it first). The
    record announced it (reimaging: the old clone untouched); once the old clone is gone it says creating, so
    a pass cut short before the new one is made makes it, and one cut short after leaves it be."""
    desired = actor.snapshot.desired
    assert desired.template is not None
    old, new = actor.snapshot.clone(a.ordinal), desired.fresh_clone(a.ordinal)
    vm = actor.snapshot.seen.domains.get(a.ordinal)
    if vm is not None:  # looked at again: a view may be older than a person's start or managedsave (I1)
        await actor.endpoints[vm.host].ensure_off(desired.domain_name(a.ordinal))
    await actor.driver.delete(old)
    if new != old:
        await actor.driver.delete(new)  # a leftover of a reimage cut short, in the new format
    asked = a.ordinal in desired.fleet.reimage_requested
    await actor.record.reimaging(a.ordinal, desired.fleet.reimage_request if asked else "")
    await actor.driver.create_clone(desired.parent, desired.template.image_format, new)


@operation(Op.WRITE_SEED, CloneAction, reasons.SEEDS_WRITTEN, "wrote cloud-init seeds for", reasons.WRITE_SEED_FAILED)
async def write_seed(actor: Actor, a: CloneAction) -> None:
    desired = actor.snapshot.desired
    seed, path = desired.seed(a.ordinal), desired.seed_path(a.ordinal)
    assert seed is not None and path is not None
    await actor.driver.write_file(path, await asyncio.to_thread(seed.image))


@operation(
    Op.DELETE_SEEDS,
    CloneAction,
    reasons.SEEDS_DELETED,
    "deleted older cloud-init seeds of",
    reasons.DELETE_SEEDS_FAILED,
)
async def delete_seeds(actor: Actor, a: CloneAction) -> None:
    for path in actor.snapshot.stale_seeds(a.ordinal):
        await actor.driver.delete(path)


@operation(Op.DEFINE, DomainAction, reasons.DOMAINS_DEFINED, "defined domain(s) for", reasons.DEFINE_FAILED)
async def define(actor: Actor, a: DomainAction) -> None:
    snap = actor.snapshot
    spec = snap.domain_spec(a.ordinal, a.host)
    await actor.endpoints[a.host].define(
        domain_xml(spec, snap.owner(a.ordinal, a.host, spec), snap.domain_uuid(a.ordinal))
    )


@operation(Op.START, DomainAction, reasons.DOMAINS_STARTED, "started", reasons.START_FAILED)
async def start(actor: Actor, a: DomainAction) -> None:
    desired, endpoint = actor.snapshot.desired, actor.endpoints[a.host]
    if desired.needs_address and desired.template and desired.template.network:
        # readiness Address: the lease its MAC holds now, with the guest off, is not one it asked for once started
        held = (await endpoint.leases(desired.template.network)).get(desired.mac(a.ordinal), [])
        await actor.record.starting(a.ordinal, max((lease.expiry for lease in held), default=0))
    await endpoint.start(desired.domain_name(a.ordinal))


@operation(Op.STOP, DomainAction, reasons.DOMAINS_STOPPED, "stopped", reasons.STOP_FAILED)
async def stop(actor: Actor, a: DomainAction) -> None:
    """The ACPI power button, then the plug after spec.shutdown.gracePeriodSeconds (at once for a paused guest,
    if it was paused already when the plan was made)."""
    snap = actor.snapshot
    vm = snap.seen.domains.get(a.ordinal)
    paused = vm is not None and vm.active and not vm.running
    await actor.endpoints[a.host].shutdown(
        snap.desired.domain_name(a.ordinal), snap.desired.fleet.grace_seconds, paused
    )


@operation(Op.UNDEFINE, DomainAction, reasons.DOMAINS_UNDEFINED, "undefined domain(s) of", reasons.UNDEFINE_FAILED)
async def undefine(actor: Actor, a: DomainAction) -> None:
    await actor.endpoints[a.host].undefine(actor.snapshot.desired.domain_name(a.ordinal))


@operation(Op.MIGRATE, DomainAction, reasons.MIGRATED, "moved (drain)", reasons.MIGRATE_FAILED)
async def migrate(actor: Actor, a: DomainAction) -> str | None:
    """A running VM to host `a.host`: live (peer to peer, its disk on the shared store, not copied), defined there
    as vmfleet would define it and undefined here. Where libvirt refuses, cold: the VM is shut down as a stop
    does, defined there, undefined here and started there (the planner took it from maxUnavailable for that).
    The record names the new host already (Snapshot.announced)."""
    snap = actor.snapshot
    source, target = actor.endpoints[snap.seen.domains[a.ordinal].host], actor.endpoints[a.host]
    name = snap.desired.domain_name(a.ordinal)
    spec = snap.domain_spec(a.ordinal, a.host)
    xml = domain_xml(spec, snap.owner(a.ordinal, a.host, spec), snap.domain_uuid(a.ordinal))
    address = snap.desired.hosts[a.host].migration_address
    try:
        await source.migrate(name, target.uri, xml, f"tcp://{address}" if address else None)
        target.view.changed(name)  # arrived there: looked at before the target's view shows it
        return None
    except HostTimeout:
        target.view.changed(name)
        raise  # it may still be under way: not moved cold beside it; the next pass looks where it runs
    except HostError as e:
        refused = str(e)
    await source.shutdown(name, snap.desired.fleet.grace_seconds, paused=False)  # it ran when it was planned
    await target.define(xml)
    await source.undefine(name)
    await target.start(name)
    return f"not migrated live ({refused}); moved cold to {a.host}"
