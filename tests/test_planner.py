"""The planner, with no I/O: scale out and in, adoption after a crash, hosts gone, capacity full."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from vmfleet.planner import DomainAction, HostView, Observation, Op, Severity, Update, VmSeen, VmWant, plan_fleet


def wants(n: int, running: bool = True, vcpus: int = 1, memory: int = 512) -> list[VmWant]:
    return [VmWant(o, f"web-{o}", vcpus, memory, running) for o in range(n)]


def host(name: str, vcpus: int = 64, memory: int = 65536, reachable: bool = True, **kw: object) -> HostView:
    return HostView(name, reachable, vcpus=vcpus, memory_mib=memory, error="" if reachable else "refused", **kw)


def hosts(*views: HostView) -> dict[str, HostView]:
    return {v.name: v for v in views}


def seen(**kw: object) -> Observation:
    base: dict[str, object] = {"parent_exists": True, "clones": frozenset(), "domains": {}, "hosts": hosts(host("a"))}
    base.update(kw)
    return Observation(**base)  # type: ignore[arg-type]


def same_hash(ordinal: int, host: str) -> str:
    return "h"


def running(ordinal: int, host_name: str = "a", state: str = "Running") -> VmSeen:
    return VmSeen(ordinal, host_name, state, state == "Running", "h")


def ops(plan) -> list[tuple[str, int | None]]:
    return [(a.op.value, getattr(a, "ordinal", None)) for a in plan.actions]


def test_scale_out_from_nothing_makes_the_parent_then_each_vm_in_order() -> None:
    plan = plan_fleet(wants(2), seen(parent_exists=False), "spread", same_hash)
    assert ops(plan) == [
        ("prepare-parent", None),
        ("create-clone", 0),
        ("define", 0),
        ("start", 0),
        ("create-clone", 1),
        ("define", 1),
        ("start", 1),
    ]
    assert plan.problems == []


def test_converged_fleet_needs_nothing() -> None:
    plan = plan_fleet(
        wants(3), seen(clones=frozenset({0, 1, 2}), domains={o: running(o) for o in range(3)}), "spread", same_hash
    )
    assert plan.actions == [] and plan.problems == []


def test_scale_in_removes_the_highest_ordinals_first_domain_before_clone() -> None:
    plan = plan_fleet(
        wants(2), seen(clones=frozenset(range(5)), domains={o: running(o) for o in range(5)}), "spread", same_hash
    )
    assert ops(plan) == [
        ("stop", 4),
        ("undefine", 4),
        ("delete-clone", 4),
        ("stop", 3),
        ("undefine", 3),
        ("delete-clone", 3),
        ("stop", 2),
        ("undefine", 2),
        ("delete-clone", 2),
    ]


def test_adoption_after_a_crash_between_clone_and_define_never_remakes_the_clone() -> None:
    # The operator died after cloning web-1 and before defining it; web-0 was finished.
    plan = plan_fleet(wants(2), seen(clones=frozenset({0, 1}), domains={0: running(0)}), "spread", same_hash)
    assert ops(plan) == [("define", 1), ("start", 1)]


def test_a_stopped_domain_is_started_and_running_false_stops_the_fleet() -> None:
    stopped = seen(clones=frozenset({0, 1}), domains={0: running(0, state="Stopped"), 1: running(1)})
    assert ops(plan_fleet(wants(2), stopped, "spread", same_hash)) == [("start", 0)]
    assert ops(plan_fleet(wants(2, running=False), stopped, "spread", same_hash)) == [("stop", 1)]


def test_a_changed_definition_is_redefined_in_place() -> None:
    plan = plan_fleet(wants(1), seen(clones=frozenset({0}), domains={0: running(0)}), "spread", lambda o, h: "new")
    assert ops(plan) == [("define", 0)]


def test_a_domain_undefined_by_hand_comes_back_on_its_host() -> None:
    views = hosts(host("a"), host("b"))
    plan = plan_fleet(
        wants(2),
        seen(clones=frozenset({0, 1}), domains={0: running(0, "a")}, hosts=views, recorded={0: "a", 1: "b"}),
        "spread",
        same_hash,
    )
    assert [(a.op.value, a.ordinal, a.host) for a in plan.actions] == [("define", 1, "b"), ("start", 1, "b")]


def test_a_lost_clone_is_reported_not_recreated_empty() -> None:
    plan = plan_fleet(
        wants(2), seen(clones=frozenset({0}), domains={0: running(0), 1: running(1)}), "spread", same_hash
    )
    assert plan.actions == []
    assert [(p.severity, p.reason, p.ordinal) for p in plan.problems] == [(Severity.DEGRADED, "CloneLost", 1)]
    recorded = plan_fleet(
        wants(2), seen(clones=frozenset({0}), domains={0: running(0)}, recorded={0: "a", 1: "a"}), "spread", same_hash
    )
    assert recorded.actions == [] and [p.reason for p in recorded.problems] == ["CloneLost"]


def test_vms_on_an_unreachable_host_are_reported_and_not_moved() -> None:
    views = hosts(host("a"), host("b", reachable=False))
    plan = plan_fleet(
        wants(3),
        seen(
            clones=frozenset({0, 1, 2}),
            hosts=views,
            domains={0: running(0, "a"), 1: running(1, "b")},
            recorded={2: "b"},
        ),
        "spread",
        same_hash,
    )
    assert plan.actions == []
    assert sorted((p.reason, p.ordinal) for p in plan.problems) == [("HostUnreachable", 1), ("HostUnreachable", 2)]
    assert plan.placement == {0: "a", 1: "b", 2: "b"}


def test_scale_in_waits_for_an_unreachable_host_and_keeps_the_clone() -> None:
    views = hosts(host("a", reachable=False))
    plan = plan_fleet(wants(0), seen(clones=frozenset({0}), hosts=views, domains={0: running(0)}), "spread", same_hash)
    assert plan.actions == [] and [p.reason for p in plan.problems] == ["HostUnreachable"]


def test_new_vms_go_only_where_they_fit() -> None:
    views = hosts(host("a", vcpus=4, memory=4096, used_vcpus=2, used_memory_mib=1024))
    plan = plan_fleet(wants(4, vcpus=1, memory=1024), seen(hosts=views), "spread", same_hash)
    assert [a.ordinal for a in plan.actions if a.op is Op.CREATE_CLONE] == [0, 1]
    assert [(p.severity, p.reason) for p in plan.problems] == [(Severity.STALLED, "InsufficientCapacity")] * 2


def test_stopped_vms_need_no_capacity() -> None:
    views = hosts(host("a", vcpus=1, memory=64))
    plan = plan_fleet(wants(3, running=False), seen(hosts=views), "spread", same_hash)
    assert [a.op for a in plan.actions].count(Op.DEFINE) == 3 and not plan.problems


def test_spread_balances_and_pack_fills_the_first_host() -> None:
    views = hosts(host("a", vcpus=4), host("b", vcpus=4), host("c", vcpus=4))
    spread = plan_fleet(wants(6), seen(hosts=views), "spread", same_hash)
    assert Counter(spread.placement.values()) == {"a": 2, "b": 2, "c": 2}
    pack = plan_fleet(wants(6), seen(hosts=views), "pack", same_hash)
    assert Counter(pack.placement.values()) == {"a": 4, "b": 2}


def test_hosts_outside_the_selector_are_never_chosen() -> None:
    views = hosts(host("a", eligible=False), host("b"))
    plan = plan_fleet(wants(2), seen(hosts=views), "spread", same_hash)
    assert set(plan.placement.values()) == {"b"}
    none = plan_fleet(wants(1), seen(hosts=hosts(host("a", eligible=False))), "spread", same_hash)
    assert [p.reason for p in none.problems] == ["NoHosts"]


def test_a_name_taken_by_someone_elses_domain_stalls_that_vm() -> None:
    plan = plan_fleet(
        wants(2), seen(clones=frozenset({0}), domains={0: running(0)}, conflicts={1: "a"}), "spread", same_hash
    )
    assert plan.actions == [] and [(p.reason, p.ordinal) for p in plan.problems] == [("NameConflict", 1)]


observations = st.builds(
    lambda n, clones, domains, reach, parent: (
        n,
        Observation(
            parent,
            frozenset(clones),
            {o: running(o, "a" if o % 2 else "b") for o in domains},
            hosts(host("a", reachable=reach[0]), host("b", reachable=reach[1])),
        ),
    ),
    st.integers(0, 12),
    st.sets(st.integers(0, 15)),
    st.sets(st.integers(0, 15)),
    st.tuples(st.booleans(), st.booleans()),
    st.booleans(),
)


@settings(max_examples=400, deadline=None)
@given(observations, st.sampled_from(["spread", "pack"]))
def test_no_plan_overwrites_or_loses_a_wanted_clone(case: tuple[int, Observation], policy: str) -> None:
    n, obs = case
    plan = plan_fleet(wants(n), obs, policy, same_hash)
    for a in plan.actions:
        if a.op is Op.CREATE_CLONE:
            assert a.ordinal not in obs.clones, "a clone was made over an existing one"
        if a.op is Op.DELETE_CLONE:
            assert a.ordinal >= n, "a wanted VM's clone was deleted"
            assert a.ordinal not in obs.domains or obs.hosts[obs.domains[a.ordinal].host].reachable
        if isinstance(a, DomainAction):
            assert obs.hosts[a.host].reachable, "an action was planned on an unreachable host"
    per_vm = plan.chains()
    for chain in per_vm.values():
        order = [a.op for a in chain]
        if Op.DELETE_CLONE in order and Op.UNDEFINE in order:
            assert order.index(Op.UNDEFINE) < order.index(Op.DELETE_CLONE)
        if Op.CREATE_CLONE in order:
            assert order.index(Op.CREATE_CLONE) < order.index(Op.DEFINE)


# ---------------------------------------------------------------- cordon (KvmHost spec.unschedulable)


def test_a_cordoned_host_gets_no_new_vm_and_keeps_the_ones_it_runs() -> None:
    views = hosts(host("a", cordoned=True), host("b"))
    plan = plan_fleet(
        wants(4), seen(clones=frozenset({0}), domains={0: running(0, "a")}, hosts=views), "spread", same_hash
    )
    placed = {a.ordinal: a.host for a in plan.actions if isinstance(a, DomainAction) and a.op is Op.DEFINE}
    assert placed == {1: "b", 2: "b", 3: "b"}  # spread would have put one on a, which has the fewest
    assert not [a for a in plan.actions if getattr(a, "ordinal", None) == 0]  # web-0 stays, running, on a
    assert plan.problems == []


def test_every_host_cordoned_stalls_new_vms_naming_the_hosts() -> None:
    views = hosts(host("a", cordoned=True), host("b", cordoned=True), host("c", reachable=False))
    plan = plan_fleet(wants(1), seen(hosts=views), "pack", same_hash)
    assert not [a for a in plan.actions if isinstance(a, DomainAction)]
    (problem,) = plan.problems
    assert (problem.severity, problem.reason) == (Severity.STALLED, "HostsCordoned")
    assert problem.message.endswith("cordoned (spec.unschedulable): a, b")


# ---------------------------------------------------------------- drain (KvmHost annotation vmfleet.io/drain)


def draining(name: str) -> HostView:
    return host(name, cordoned=True, draining=True)


def test_a_drain_migrates_a_running_vm_to_another_host() -> None:
    views = hosts(draining("a"), host("b"))
    plan = plan_fleet(
        wants(1), seen(clones=frozenset({0}), domains={0: running(0, "a")}, hosts=views), "spread", same_hash
    )
    assert [(a.op.value, a.host) for a in plan.actions if isinstance(a, DomainAction)] == [("migrate", "b")]
    assert plan.placement == {0: "b"} and plan.moving == {0} and plan.problems == []


def test_a_drain_takes_down_at_most_max_unavailable_ready_vms_at_once() -> None:
    views = hosts(draining("a"), host("b"))
    on_a = {o: running(o, "a") for o in range(4)}
    two = Update(budget=2)
    plan = plan_fleet(wants(4), seen(clones=frozenset(range(4)), domains=on_a, hosts=views), "spread", same_hash, two)
    assert plan.moving == {0, 1} and plan.stranded == {2, 3}
    assert not [a for a in plan.actions if a.ordinal in (2, 3)]
    # a VM down already (web-3 crashed) moves without taking from the budget, and does not count twice
    on_a[3] = running(3, "a", state="Crashed")
    plan = plan_fleet(wants(4), seen(clones=frozenset(range(4)), domains=on_a, hosts=views), "spread", same_hash, two)
    assert plan.moving == {0, 3} and plan.stranded == {1, 2}


def test_a_drain_leaves_a_paused_vm_where_it_is_and_says_why() -> None:
    # Moved cold, a VM a person paused (or QEMU, on an I/O error) would be destroyed: its memory lost.
    views = hosts(draining("a"), host("b"))
    paused = VmSeen(0, "a", "Paused", True, "h", "h", stop_reason="user")
    plan = plan_fleet(wants(1), seen(clones=frozenset({0}), domains={0: paused}, hosts=views), "spread", same_hash)
    assert plan.actions == [] and plan.stranded == {0} and plan.held == {0}
    assert [(p.reason, p.subject) for p in plan.problems] == [("VmPaused", "web-0")]


def test_a_stopped_vm_moves_and_stays_stopped() -> None:
    views = hosts(draining("a"), host("b"))
    off = {0: running(0, "a", state="Shutoff")}
    plan = plan_fleet(wants(1, running=False), seen(clones=frozenset({0}), domains=off, hosts=views), "pack", same_hash)
    assert ops(plan) == [("define", 0), ("undefine", 0)]
    assert [a.host for a in plan.actions if isinstance(a, DomainAction)] == ["b", "a"]


def test_a_running_vm_that_should_stop_is_stopped_and_moved_cold_not_migrated() -> None:
    # found by the safety machine: carried live to be stopped there, it ran on after the pass that moved it
    views = hosts(draining("a"), host("b"))
    on = {0: running(0, "a")}
    plan = plan_fleet(wants(1, running=False), seen(clones=frozenset({0}), domains=on, hosts=views), "pack", same_hash)
    assert [(a.op.value, a.host) for a in plan.actions if isinstance(a, DomainAction)] == [
        ("stop", "a"),
        ("define", "b"),
        ("undefine", "a"),
    ]
    assert plan.placement == {0: "b"} and plan.moving == {0}


def test_a_vm_with_no_other_host_stays_on_the_draining_host_untouched() -> None:
    views = hosts(draining("a"), host("b", cordoned=True), host("c", memory=256))
    plan = plan_fleet(
        wants(1), seen(clones=frozenset({0}), domains={0: running(0, "a")}, hosts=views), "spread", same_hash
    )
    assert plan.actions == [] and plan.stranded == {0} and plan.placement == {0: "a"}
    assert plan.problems == []  # it runs on: the host's status says it is still there


def test_a_draining_host_that_does_not_answer_moves_nothing() -> None:
    views = hosts(HostView("a", False, cordoned=True, draining=True, error="refused"), host("b"))
    plan = plan_fleet(
        wants(1), seen(clones=frozenset({0}), domains={0: running(0, "a")}, hosts=views), "spread", same_hash
    )
    assert plan.actions == [] and [p.reason for p in plan.problems] == ["HostUnreachable"]


def test_a_vm_recorded_on_a_drained_host_without_its_domain_is_defined_elsewhere() -> None:
    # its clone was made, the operator stopped before the define; then the host was drained
    views = hosts(draining("a"), host("b"))
    plan = plan_fleet(wants(1), seen(clones=frozenset({0}), recorded={0: "a"}, hosts=views), "spread", same_hash)
    assert [(a.op.value, a.host) for a in plan.actions if isinstance(a, DomainAction)] == [
        ("define", "b"),
        ("start", "b"),
    ]


def test_a_drain_moves_nothing_to_another_kvmhost_of_the_same_libvirt() -> None:
    # kvm-b is kvm-a under another name: a define there and an undefine here would remove the VM
    views = hosts(host("a", cordoned=True, draining=True, uri="qemu:///system"))
    views["b"] = host("b", uri="qemu:///system")
    plan = plan_fleet(
        wants(1), seen(clones=frozenset({0}), domains={0: running(0, "a")}, hosts=views), "spread", same_hash
    )
    assert plan.actions == [] and plan.stranded == {0}
