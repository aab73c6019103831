"""The planner: from what the spec wants and what exists, the ordered actions that converge them. No I/O.

Safety first (docs/reliability.md, I1 and I2): what cannot be observed is assumed to be still there. A VM
whose host does not answer, is no longer defined, or moved to another URI is neither started elsewhere nor
has its clone deleted; a clone nobody can account for while some host is silent is left alone too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..api import reasons
from .model import (
    CloneAction,
    DomainAction,
    HostView,
    Observation,
    Op,
    ParentAction,
    Plan,
    Problem,
    Severity,
    SpecHash,
    Update,
    VmSeen,
    VmWant,
)
from .placement import HostLoad, choose_host
from .rollout import Rollout


def plan_fleet(
    wants: Sequence[VmWant],
    seen: Observation,
    policy: str,
    spec_hash: SpecHash,
    update: Update = Update(),
) -> Plan:
    """Scale out in ascending ordinals, scale in from the highest; existing clones and domains are adopted,
    a lost clone or an unobservable host is reported, never papered over. VMs that exist are brought to the
    fleet's revision as `update` says (rollout.py)."""
    plan = Plan()
    wanted = {w.ordinal: w for w in wants}
    rollout = Rollout(wanted, seen, spec_hash, update)
    plan.ready = set(rollout.ready)
    loads = {name: HostLoad(view, view.used_vcpus, view.used_memory_mib) for name, view in seen.hosts.items()}
    for vm in seen.domains.values():
        if vm.host in loads and vm.ordinal in wanted:
            loads[vm.host].fleet_vms += 1

    needs_clone = [
        o
        for o in wanted
        if o not in seen.clones and o not in seen.domains and (o not in seen.recorded or o in seen.settling)
    ] + sorted(rollout.reimage)
    if needs_clone and not seen.parent_exists:
        plan.actions.append(ParentAction(Op.PREPARE_PARENT, "no clone parent for the template image yet"))

    _duplicates(plan, seen)  # first: a stale definition must go before a VM is defined on its host
    for ordinal in sorted(wanted):
        _converge_vm(plan, wanted[ordinal], seen, loads, policy, spec_hash, rollout)

    known = set(seen.domains) | set(seen.clones) | set(seen.recorded) | seen.stale_seeds
    for ordinal in sorted(known - set(wanted), reverse=True):
        _remove_vm(plan, ordinal, seen)
    return plan


def _where_unseen(o: int, seen: Observation) -> str | None:
    """Why VM `o` may run somewhere we cannot see, or None when every place it could be was observed."""
    if o in seen.domains:
        host = seen.domains[o].host
        view = seen.hosts.get(host)
        return None if view is None or view.reachable else f"host {host} is unreachable ({view.error})"
    if o in seen.elsewhere:
        return seen.elsewhere[o]
    recorded = seen.recorded.get(o)
    if recorded is not None:
        view = seen.hosts.get(recorded)
        if view is not None and not view.reachable:
            return f"host {recorded} is unreachable ({view.error})"
        return None
    if o in seen.clones:
        # A clone with no record of where it ran: any silent host may be running it.
        silent = seen.unobservable()
        if silent:
            return f"host {', '.join(silent)} is unreachable and may run it (no placement recorded)"
    return None


def _converge_vm(
    plan: Plan,
    want: VmWant,
    seen: Observation,
    loads: dict[str, HostLoad],
    policy: str,
    spec_hash: SpecHash,
    rollout: Rollout,
) -> None:
    o = want.ordinal
    if o in seen.conflicts:
        plan.problems.append(
            Problem(
                Severity.STALLED,
                reasons.NAME_CONFLICT,
                f"a domain of that name on {seen.conflicts[o]} is not this fleet's; rename or remove it",
                o,
                want.name,
            )
        )
        return
    domain = seen.domains.get(o)
    host = domain.host if domain else seen.recorded.get(o)
    if any(d.ordinal == o and d.active for d in seen.duplicates):
        plan.placement[o] = host or ""
        return  # another domain runs on its clone: nothing is done to this VM until a person resolves it
    unseen = _where_unseen(o, seen)
    if unseen is not None:
        plan.placement[o] = host or ""
        plan.problems.append(
            Problem(
                Severity.DEGRADED,
                reasons.HOST_UNREACHABLE,
                f"{unseen}; not moved elsewhere",
                o,
                want.name,
                vm_state="Unknown",
            )
        )
        return
    has_clone = o in seen.clones
    # A domain whose clone is missing while the record says it was being made: a reimage cut short. It is made.
    remade = domain is not None and rollout.remade(o)
    if not has_clone and not remade and (domain is not None or (o in seen.recorded and o not in seen.settling)):
        plan.placement[o] = host or ""
        plan.problems.append(
            Problem(
                Severity.DEGRADED,
                reasons.CLONE_LOST,
                "clone missing from the store; not recreated empty (restore the file, or scale in to drop the VM)",
                o,
                want.name,
                vm_state="Lost",
            )
        )
        return
    if domain is not None:
        if not _move(plan, want, domain, seen, loads, policy, rollout):
            plan.placement[o] = domain.host
            rollout.converge(plan, want, domain)
        return

    # Where it was recorded, unless that host is cordoned or drained: it was looked at (above) and has no domain of
    # it, so defining it there would be placing a new VM on it.
    if host is None or host not in loads or loads[host].view.cordoned:
        host = choose_host(want, loads, policy)
        if host is None:
            plan.problems.append(_no_host(want, seen.hosts))
            return
    loads[host].add(want)
    plan.placement[o] = host
    if not has_clone:
        plan.actions.append(CloneAction(Op.CREATE_CLONE, o, "new VM"))
    elif o in rollout.reimage:
        plan.actions.append(
            CloneAction(
                Op.REIMAGE, o, "reimage requested" if o in rollout.update.reimage else "the template's image changed"
            )
        )
    if o in seen.seed_missing:
        plan.actions.append(CloneAction(Op.WRITE_SEED, o, "cloud-init seed"))
    if o in seen.stale_seeds:
        plan.actions.append(CloneAction(Op.DELETE_SEEDS, o, "seed images of an earlier cloud-init"))
    plan.actions.append(DomainAction(Op.DEFINE, o, host, "no domain" if has_clone else "new VM"))
    if want.running and want.run != "Manual":
        plan.actions.append(DomainAction(Op.START, o, host, "should run"))


def _move(
    plan: Plan, want: VmWant, vm: VmSeen, seen: Observation, loads: dict[str, HostLoad], policy: str, rollout: Rollout
) -> bool:
    """A VM on a draining host moves to another host the fleet may use, cold: stopped, defined there (same UUID,
    MAC and clone), undefined here, started there. The record names the new host before the first of these runs
    (Snapshot.announced), so a pass cut short leaves the old domain alone, or the new one beside an inactive old
    one, which the next pass undefines as a stale duplicate: never two that run, never one nobody knows.
    A running VM is migrated live (MIGRATE); where libvirt refuses, the same operation moves it cold, so a ready one
    takes one of maxUnavailable either way. False: it stays where it is, for now."""
    view = seen.hosts.get(vm.host)
    if view is None or not view.draining or not view.reachable:
        return False
    o = want.ordinal
    if vm.saved:  # its saved memory is on this host; undefining it would drop it
        plan.stranded.add(o)
        return False
    if vm.active and not vm.running and rollout.run(want, vm) is not False:
        plan.stranded.add(o)  # paused: held (its memory is not lost in a cold move), or soon running, then moved
        return False
    costs = vm.active and o in rollout.ready and o not in rollout.granted
    if costs and rollout.room <= 0:
        plan.stranded.add(o)  # waits for a VM to be ready again
        return False
    elsewhere = {n: load for n, load in loads.items() if not (view.uri and load.view.uri == view.uri)}
    target = choose_host(want, elsewhere, policy)
    if target is None:
        plan.stranded.add(o)  # no other host: it stays, and the host says so (Drained False)
        return False
    if costs:
        rollout.room -= 1
    loads[target].add(want)
    plan.placement[o] = target
    plan.moving.add(o)
    why = f"drain of {vm.host}: moves to {target}"
    if o in seen.seed_missing:
        plan.actions.append(CloneAction(Op.WRITE_SEED, o, "cloud-init seed"))
    run = rollout.run(want, vm)
    if vm.active and run is not False:
        plan.actions.append(DomainAction(Op.MIGRATE, o, target, why))
        return True
    if vm.active:  # to be stopped anyway: stopped here and moved cold, not carried live to be stopped there
        plan.actions.append(DomainAction(Op.STOP, o, vm.host, f"is {vm.state}, should be stopped"))
    plan.actions.append(DomainAction(Op.DEFINE, o, target, why))
    plan.actions.append(DomainAction(Op.UNDEFINE, o, vm.host, f"drain of {vm.host}: defined on {target}"))
    if run is True:
        plan.actions.append(DomainAction(Op.START, o, target, f"moved from {vm.host} (drain)"))
    return True


def _no_host(want: VmWant, hosts: Mapping[str, HostView]) -> Problem:
    views = [v for v in hosts.values() if v.eligible]
    if not views:
        return Problem(
            Severity.STALLED, reasons.NO_HOSTS, "no KvmHost matches the fleet's hostSelector", want.ordinal, want.name
        )
    if not any(v.reachable for v in views):
        return Problem(
            Severity.STALLED,
            reasons.NO_REACHABLE_HOST,
            "none of the fleet's hosts is reachable",
            want.ordinal,
            want.name,
        )
    if all(v.cordoned for v in views if v.reachable):
        cordoned = ", ".join(sorted(v.name for v in views if v.reachable))
        return Problem(
            Severity.STALLED,
            reasons.HOSTS_CORDONED,
            f"every reachable host it may use is cordoned (spec.unschedulable): {cordoned}",
            want.ordinal,
            want.name,
        )
    return Problem(
        Severity.STALLED,
        reasons.INSUFFICIENT_CAPACITY,
        f"no host has {want.vcpus} vCPU and {want.memory_mib} MiB free",
        want.ordinal,
        want.name,
    )


def _remove_vm(plan: Plan, ordinal: int, seen: Observation) -> None:
    """Scale-in: the domain goes first, then its clone; never the clone while a domain may still use it."""
    if any(d.ordinal == ordinal and d.active for d in seen.duplicates):
        return  # reported by _duplicates
    unseen = _where_unseen(ordinal, seen)
    if unseen is not None:
        plan.problems.append(
            Problem(
                Severity.DEGRADED,
                reasons.HOST_UNREACHABLE,
                f"cannot remove it while {unseen}",
                ordinal,
                f"ordinal {ordinal}",
                vm_state="Unknown",
            )
        )
        return
    domain = seen.domains.get(ordinal)
    if domain is not None:
        if domain.active:
            plan.actions.append(DomainAction(Op.STOP, ordinal, domain.host, "scale-in"))
        plan.actions.append(DomainAction(Op.UNDEFINE, ordinal, domain.host, "scale-in"))
    if ordinal in seen.stale_seeds:
        plan.actions.append(CloneAction(Op.DELETE_SEEDS, ordinal, "scale-in"))
    if ordinal in seen.clones:
        plan.actions.append(CloneAction(Op.DELETE_CLONE, ordinal, "scale-in"))


def _duplicates(plan: Plan, seen: Observation) -> None:
    """A second domain of one VM exists only where a person declared its host lost and the host came back:
    an inactive one is undefined; an active one is reported, never touched (it may be the one with the data)."""
    for dup in seen.duplicates:
        primary: VmSeen | None = seen.domains.get(dup.ordinal)
        if dup.active:
            where = f"{primary.host} and {dup.host}" if primary else dup.host
            plan.problems.append(
                Problem(
                    Severity.DEGRADED,
                    reasons.DUPLICATE_DOMAIN,
                    f"has domains on {where} for one clone: stop and undefine the stale one by hand",
                    dup.ordinal,
                    f"ordinal {dup.ordinal}",
                )
            )
        else:
            plan.actions.append(DomainAction(Op.UNDEFINE, dup.ordinal, dup.host, "a stale second domain of this VM"))
