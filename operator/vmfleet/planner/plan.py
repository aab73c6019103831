"""The planner: from what the spec wants and what exists, the ordered actions that converge them. No I/O."""

from __future__ import annotations

from typing import Mapping, Sequence

from .model import Action, HostView, Observation, Op, Plan, Problem, Severity, SpecHash, VmWant
from .placement import HostLoad, choose_host


def plan_fleet(
    wants: Sequence[VmWant],
    seen: Observation,
    policy: str,
    spec_hash: SpecHash,
) -> Plan:
    """Scale out in ascending ordinals, scale in from the highest; existing clones and domains are adopted,
    a lost clone or an unreachable host is reported, never papered over."""
    plan = Plan()
    wanted = {w.ordinal: w for w in wants}
    loads = {name: HostLoad(view, view.used_vcpus, view.used_memory_mib) for name, view in seen.hosts.items()}
    for vm in seen.domains.values():
        if vm.host in loads and vm.ordinal in wanted:
            loads[vm.host].fleet_vms += 1

    needs_clone = [o for o in wanted if o not in seen.clones and o not in seen.recorded and o not in seen.domains]
    if needs_clone and not seen.parent_exists:
        plan.actions.append(Action(Op.PREPARE_PARENT, why="no clone parent for the template image yet"))

    for ordinal in sorted(wanted):
        _converge_vm(plan, wanted[ordinal], seen, loads, policy, spec_hash)

    for ordinal in sorted((set(seen.domains) | set(seen.clones)) - set(wanted), reverse=True):
        _remove_vm(plan, ordinal, seen)
    return plan


def _converge_vm(
    plan: Plan, want: VmWant, seen: Observation, loads: dict[str, HostLoad], policy: str, spec_hash: SpecHash
) -> None:
    o = want.ordinal
    if o in seen.conflicts:
        plan.problems.append(
            Problem(Severity.STALLED, "NameConflict",
                    f"a domain of that name on {seen.conflicts[o]} is not this fleet's; rename or remove it",
                    o, want.name)
        )
        return
    domain = seen.domains.get(o)
    host = domain.host if domain else seen.recorded.get(o)
    if host is not None and host in seen.hosts and not seen.hosts[host].reachable:
        plan.placement[o] = host
        plan.problems.append(
            Problem(Severity.DEGRADED, "HostUnreachable",
                    f"host {host} is unreachable ({seen.hosts[host].error}); not moved elsewhere", o, want.name)
        )
        return
    has_clone = o in seen.clones
    if not has_clone and (domain is not None or o in seen.recorded):
        plan.placement[o] = host or ""
        plan.problems.append(
            Problem(Severity.DEGRADED, "CloneLost",
                    "clone missing from the store; not recreated empty (restore the file, or scale in to drop the VM)",
                    o, want.name)
        )
        return
    if domain is not None:
        plan.placement[o] = domain.host
        if domain.spec_hash != spec_hash(o, domain.host):
            plan.actions.append(Action(Op.DEFINE, o, domain.host, "definition differs from the spec"))
        if want.running and not domain.active:
            plan.actions.append(Action(Op.START, o, domain.host, f"is {domain.state}, should run"))
        elif not want.running and domain.active:
            plan.actions.append(Action(Op.STOP, o, domain.host, f"is {domain.state}, should be stopped"))
        return

    if host is None or host not in loads:
        host = choose_host(want, loads, policy)
        if host is None:
            plan.problems.append(_no_host(want, seen.hosts))
            return
    loads[host].add(want)
    plan.placement[o] = host
    if not has_clone:
        plan.actions.append(Action(Op.CREATE_CLONE, o, host, "new VM"))
    plan.actions.append(Action(Op.DEFINE, o, host, "no domain" if has_clone else "new VM"))
    if want.running:
        plan.actions.append(Action(Op.START, o, host, "should run"))


def _no_host(want: VmWant, hosts: Mapping[str, HostView]) -> Problem:
    views = [v for v in hosts.values() if v.eligible]
    if not views:
        return Problem(Severity.STALLED, "NoHosts", "no KvmHost matches the fleet's hostSelector", want.ordinal,
                       want.name)
    if not any(v.reachable for v in views):
        return Problem(Severity.STALLED, "NoReachableHost", "none of the fleet's hosts is reachable", want.ordinal,
                       want.name)
    return Problem(
        Severity.STALLED, "InsufficientCapacity",
        f"no host has {want.vcpus} vCPU and {want.memory_mib} MiB free", want.ordinal, want.name,
    )


def _remove_vm(plan: Plan, ordinal: int, seen: Observation) -> None:
    """Scale-in: the domain goes first, then its clone; never the clone while a domain may still use it."""
    domain = seen.domains.get(ordinal)
    if domain is not None:
        if domain.host in seen.hosts and not seen.hosts[domain.host].reachable:
            plan.problems.append(
                Problem(Severity.DEGRADED, "HostUnreachable",
                        f"cannot remove it while host {domain.host} is unreachable", ordinal, f"ordinal {ordinal}")
            )
            return
        if domain.active:
            plan.actions.append(Action(Op.STOP, ordinal, domain.host, "scale-in"))
        plan.actions.append(Action(Op.UNDEFINE, ordinal, domain.host, "scale-in"))
    if ordinal in seen.clones:
        plan.actions.append(Action(Op.DELETE_CLONE, ordinal, None, "scale-in"))
