"""Bringing VMs that exist to the fleet's revision, and keeping them in the power state their run strategy asks.

A VM is on the revision when its definition is the one the spec gives it (hardware, seed, MAC: the spec hash) and
its clone came from the template's parent now. Reaching it may need the VM down: a running VM whose definition
changed is restarted, one whose image changed is reimaged (a new clone of the new parent, same UUID, MAC and
host). RollingUpdate takes down at most `budget` VMs that are ready, from the highest ordinal; a VM that is not
ready is already down and is updated at once. OnDelete, and a Manual VM, are updated only when they are off.
Nothing below the partition changes but its power state, as a StatefulSet's canary keeps its pods.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..api import reasons
from .model import CloneAction, DomainAction, Observation, Op, Plan, Problem, Severity, SpecHash, Update, VmSeen, VmWant


def should_run(
    want: VmWant, vm: VmSeen | None, stopped_by_vmfleet: bool = False, finished: bool = False
) -> bool | None:
    """True: start it when off; False: stop it when on; None: leave it as it is."""
    strategy = want.run
    if strategy == "Always":
        return True
    if strategy == "Halted":
        return False
    if strategy == "Manual":
        return None if vm is not None else False
    # RerunOnFailure: not again after the guest powered itself off (its job is done)
    by_itself = vm is not None and (vm.stop_reason == "shutdown" or (finished and vm.stop_reason == ""))
    done = vm is not None and not vm.active and by_itself and not stopped_by_vmfleet
    return None if done else True


class Rollout:
    """Per pass: which VMs are ready, which are off their revision, and which of those may go down now."""

    def __init__(self, wanted: Mapping[int, VmWant], seen: Observation, spec_hash: SpecHash, update: Update):
        self.seen, self.update = seen, update
        self.hashes = {o: spec_hash(o, vm.host) for o, vm in seen.domains.items() if o in wanted}
        self.ready = {o for o, w in wanted.items() if self._ready(w, seen.domains.get(o), o)}
        self.reimage = {o for o, w in wanted.items() if self._reimage(w, seen.domains.get(o))}
        # Ready VMs that must go down to be updated, granted the budget from the highest ordinal down.
        should_be_up = [o for o, w in wanted.items() if self.run(w, seen.domains.get(o)) is not False]
        room = update.budget - sum(1 for o in should_be_up if o not in self.ready)
        self.granted: set[int] = set()
        for o in sorted(self.hashes, reverse=True):
            vm = seen.domains[o]
            if not self._disruptive(vm, o) or not self._may_restart(wanted[o], vm):
                continue
            if not vm.running and o not in update.reimage:
                continue  # paused: held (see VmSeen.held), or running again soon and then updated in its turn
            if o not in self.ready or o in update.reimage:
                self.granted.add(o)  # already down, or a person asked
            elif room > 0 and update.rolling:
                self.granted.add(o)
                room -= 1
        self.room = room  # what is left of the budget: VMs a drain may take down (cold moves)

    def run(self, want: VmWant, vm: VmSeen | None) -> bool | None:
        return should_run(want, vm, want.ordinal in self.seen.stopped, want.ordinal in self.seen.finished)

    def _ready(self, want: VmWant, vm: VmSeen | None, o: int) -> bool:
        if vm is None or o not in self.seen.clones:
            return False
        run = self.run(want, vm)
        if run is None:
            return True
        if not run:
            return not vm.active
        addressed = self.seen.addressed
        return vm.running and (addressed is None or o in addressed)

    def in_scope(self, o: int) -> bool:
        return o >= self.update.partition or o in self.update.reimage

    def image_outdated(self, o: int) -> bool:
        came_from = self.seen.parents.get(o, "")
        return (
            self.update.reimage_on_image_change
            and bool(self.update.parent)
            and came_from not in ("", self.update.parent)
        )

    def remade(self, o: int) -> bool:
        """A clone made or reimaged and cut short: missing while the record says it is being made (creating), or
        announced for a reimage the spec still asks for. A clone missing under a reimage no longer asked for was
        lost some other way: it is reported, never made again empty."""
        if o in self.seen.clones or o not in self.seen.settling:
            return False
        if o not in self.seen.reimaging:
            return True
        return o in self.update.reimage or self.update.ephemeral or (self.in_scope(o) and self.image_outdated(o))

    def _reimage(self, want: VmWant, vm: VmSeen | None) -> bool:
        o = want.ordinal
        if vm is None:  # a clone without a domain (undefined by hand, say): down already
            asked = o in self.update.reimage
            return o in self.seen.clones and (asked or (self.in_scope(o) and self.image_outdated(o)))
        if self.remade(o):
            return True
        if vm.saved:
            return False  # its saved memory would resume on another disk
        if o in self.update.reimage:
            return True
        if self.in_scope(o) and self.image_outdated(o):
            return True
        return self.update.ephemeral and vm.ran_and_stopped and self.run(want, vm) is True

    def _restart(self, vm: VmSeen, o: int) -> bool:
        """It runs an older definition than the one it should (after this pass's define)."""
        return vm.active and bool(vm.live_hash) and vm.live_hash != self.hashes[o]

    def _disruptive(self, vm: VmSeen, o: int) -> bool:
        return vm.active and self.in_scope(o) and (self._restart(vm, o) or o in self.reimage)

    def _may_restart(self, want: VmWant, vm: VmSeen) -> bool:
        """vmfleet may take it down and bring it up again: not OnDelete, not Manual (unless a person asked)."""
        if want.ordinal in self.update.reimage:
            return True
        return self.update.rolling and self.run(want, vm) is True

    def updated(self, o: int) -> bool:
        vm = self.seen.domains.get(o)
        if vm is None or o not in self.seen.clones:
            return False
        current = vm.spec_hash == self.hashes[o] and not self._restart(vm, o)
        return current and not (self.update.reimage_on_image_change and self.image_outdated(o))

    def converge(self, plan: Plan, want: VmWant, vm: VmSeen) -> None:
        """The actions for one VM whose domain exists, in the order they must run."""
        o, host = want.ordinal, vm.host
        run = self.run(want, vm)
        if vm.held and run is True and o not in self.update.reimage:
            plan.held.add(o)
            plan.problems.append(Problem(Severity.DEGRADED, reasons.VM_PAUSED, _held(vm), o, want.name, vm.state))
        if self.updated(o):
            plan.updated.add(o)
        elif self.in_scope(o):
            plan.pending.add(o)
            if vm.active and not self._may_restart(want, vm):
                plan.waiting.add(o)
        if not self.in_scope(o) and not self.remade(o):
            self._power(plan, o, vm, run)  # a canary's partition: nothing else changes below it
            return
        wanted_hash = self.hashes[o]
        if o in self.seen.seed_missing:
            plan.actions.append(CloneAction(Op.WRITE_SEED, o, "cloud-init seed missing or changed"))
        down = not vm.active
        if vm.active and (o in self.granted or (run is False and self._disruptive(vm, o))):
            plan.actions.append(DomainAction(Op.STOP, o, host, self._why_down(vm, o)))
            down = True
        if down and o in self.reimage:
            plan.actions.append(CloneAction(Op.REIMAGE, o, self._why_reimage(o, vm)))
            if o in self.seen.reformatted:
                return  # its new clone has another name: the next pass defines the domain on it
        relabel = bool(vm.revision and self.update.revision and vm.revision != self.update.revision)
        if vm.spec_hash != wanted_hash or relabel:
            plan.actions.append(DomainAction(Op.DEFINE, o, host, "definition differs from the spec"))
        # An older seed stays while the domain may still read it: running, or saved (managedsave, as libvirt-guests
        # does at a host's shutdown), on an older definition; until it starts afresh on the new one.
        if o in self.seen.stale_seeds and not vm.saved and (down or vm.live_hash == wanted_hash):
            plan.actions.append(CloneAction(Op.DELETE_SEEDS, o, "seed images of an earlier cloud-init"))
        if down:
            # Taken down to be updated: brought back, unless it should be stopped anyway.
            if run is True or (vm.active and o in self.granted and run is not False):
                why = "updated" if vm.active else f"is {vm.state}, should run"
                plan.actions.append(DomainAction(Op.START, o, host, why))
        elif run is False:
            plan.actions.append(DomainAction(Op.STOP, o, host, f"is {vm.state}, should be stopped"))
        elif self._restart(vm, o) and not self._may_restart(want, vm):
            plan.restart_required.append(o)  # OnDelete, or Manual: it takes its definition when restarted

    def _power(self, plan: Plan, o: int, vm: VmSeen, run: bool | None) -> None:
        if run is True and not vm.active:
            plan.actions.append(DomainAction(Op.START, o, vm.host, f"is {vm.state}, should run"))
        elif run is False and vm.active:
            plan.actions.append(DomainAction(Op.STOP, o, vm.host, f"is {vm.state}, should be stopped"))

    def _why_down(self, vm: VmSeen, o: int) -> str:
        return "reimage" if o in self.reimage else "restart on its new definition"

    def _why_reimage(self, o: int, vm: VmSeen) -> str:
        if self.remade(o):
            return "its reimage was cut short"
        if o in self.update.reimage:
            return "reimage requested"
        if self.image_outdated(o):
            return "the template's image changed"
        return f"ephemeral: it stopped ({vm.stop_reason})"


def _held(vm: VmSeen) -> str:
    """Why a held VM is not ready, and what lets it go on (VmSeen.held)."""
    if vm.state == "Suspended":
        why = "suspended by its guest (asleep): wake it (virsh dompmwakeup)"
    elif vm.stop_reason == "user":
        why = "paused by a person (virsh suspend): resume it (virsh resume)"
    elif vm.stop_reason == "ioerror":
        why = "paused by QEMU on an I/O error (is the store full?): free space, then resume it (virsh resume)"
    else:
        why = f"paused ({vm.stop_reason or 'no reason given'}): resume it (virsh resume)"
    return f"{why}; vmfleet neither resumes nor destroys it, and counts it as down"
